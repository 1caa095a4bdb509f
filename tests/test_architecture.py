"""The layering contract (pyproject.toml, [tool.importlinter]) holds: imports run downward only,
the core imports no role, product code never imports the dev tooling; roles ask their layout
instead of branching on its name."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from rsdeploy_dev import REPO_ROOT


def _lint_imports() -> str:
    # Beside this interpreter (the project's virtualenv), else on PATH.
    found = Path(sys.executable).with_name("lint-imports")
    return str(found) if found.exists() else shutil.which("lint-imports") or "lint-imports"


def test_every_import_contract_is_kept():
    run = subprocess.run([_lint_imports(), "--no-cache"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 3 kept, 0 broken" in run.stdout


def test_roles_never_branch_on_the_layout_name():
    branches = [f"{path.name}:{number}: {line.strip()}"
                for path in sorted((REPO_ROOT / "roles").glob("*.py"))
                for number, line in enumerate(path.read_text().splitlines(), start=1)
                if re.search(r"layout\s*[!=]=|\.layout\]", line)]
    assert branches == []
