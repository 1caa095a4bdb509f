"""rsdeploy as a user installs it: the wheel (and sdist) built from this commit, installed into
a clean virtualenv outside the checkout. Tests and benches that claim a user's path (the
distribution, the walkthrough, the CI runner image) use this, never the checkout's .venv.

    wheel, sdist = build_distributions(tmp / "dist")
    bin_dir = install(tmp / "venv", str(wheel))
    subprocess.run([bin_dir / "rsdeploy", "--version"])
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from rsdeploy_dev import REPO_ROOT

#: The version pyproject.toml gives the distribution being built.
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def build_distributions(out: Path) -> tuple[Path, Path]:
    """The wheel and the sdist of the checkout (``python -m build``: the sdist first, the wheel
    built from it, as a package index would get them); returns (wheel, sdist)."""
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return (out / f"rsdeploy-{VERSION}-py3-none-any.whl", out / f"rsdeploy-{VERSION}.tar.gz")


def install(venv: Path, requirement: str, dependencies: bool = True) -> Path:
    """A fresh virtualenv at ``venv`` with ``requirement`` (a wheel, an sdist, a git URL)
    installed by pip as a user would; returns its bin directory. Dependencies come from the
    package index (pip's cache keeps a second install quick); ``dependencies=False`` installs
    the package alone (to compare what two sources install)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    options = [] if dependencies else ["--no-deps"]
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *options, requirement],
                          capture_output=True, text=True, timeout=900, cwd=venv.parent)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return venv / "bin"


def user_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a user who activated that virtualenv: its bin first on PATH, and
    nothing of this checkout (no PYTHONPATH, not this test run's interpreter)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    path = [p for p in env.get("PATH", "").split(os.pathsep)
            if not p.startswith(str(REPO_ROOT))]
    return {**env, "PATH": os.pathsep.join([str(bin_dir), *path]),
            "VIRTUAL_ENV": str(bin_dir.parent), **extra}
