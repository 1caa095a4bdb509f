"""The README's walkthrough, "Use it on your own hosts", as an operator follows it: the commands
of each step read from the README itself, run by bash in a home and a virtualenv of their own,
with the wheel of this commit, against a sandbox host that starts bare. Used by
tests/e2e/test_walkthrough.py and bench/walkthrough.py.

    steps = readme_steps()                        # [["python3 -m venv ...", ...], ...]
    operator = Operator.at(tmp / "ana", key, wheel)  # HOME with the key root's login accepts
    operator.run(as_here(steps[1][0], address, domain))
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rsdeploy.escape import py_literal
from rsdeploy.secrets import update_file
from rsdeploy_dev import REPO_ROOT

SECTION = "## Use it on your own hosts"
#: What the README's commands name, and what stands for it here (``Operator.as_here``).
README_HOST, README_DOMAIN = "203.0.113.10", "staging.example.org"
README_SITE = "residency-ops"


def readme_steps(readme: Path = REPO_ROOT / "README.md") -> list[list[str]]:
    """Each numbered step's shell commands (its ```sh block, a command a line), in order.

    Example: ``readme_steps()[4]`` -> ``["rsdeploy deploy --version v1.0.0"]``
    """
    text = readme.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    steps: list[list[str]] = []
    for item in re.split(r"\n(?=\d+\. \*\*)", text[start:end])[1:]:
        blocks = re.findall(r"```sh\n(.*?)\n\s*```", item, re.DOTALL)
        steps.append([line.strip() for block in blocks for line in block.splitlines()
                      if line.strip()])
    return steps


@dataclass
class Operator:
    """Someone following the walkthrough: a home of their own (their SSH key and git identity
    there, no agent), in a shell whose directory is ``cwd``."""

    home: Path
    cwd: Path

    @classmethod
    def at(cls, root: Path, private_key: Path, wheel: Path) -> Operator:
        """An operator whose SSH key is ``private_key`` (the one the bare host's root accepts),
        with ``wheel`` downloaded into the home."""
        ssh = root / "home" / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        shutil.copyfile(private_key, ssh / "id_ed25519")
        shutil.copyfile(private_key.with_suffix(".pub"), ssh / "id_ed25519.pub")
        (ssh / "id_ed25519").chmod(0o600)
        shutil.copyfile(wheel, root / "home" / wheel.name)
        (root / "home" / ".gitconfig").write_text(
            "[user]\n\tname = Ana Operator\n\temail = ana@example.org\n")
        return cls(root / "home", root / "home")

    @property
    def env(self) -> dict[str, str]:
        """A login's environment: HOME, a plain PATH (the virtualenv comes from step 1's
        ``activate``), no agent, nothing of this checkout or its test run; this machine's pip
        settings (its index and CA bundle) stay, as they would in a login on it."""
        machine = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
        return {**machine, "HOME": str(self.home), "LANG": "C.UTF-8", "EDITOR": "true",
                "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}

    def run(self, script: str, timeout: float = 1800, **env: str) -> subprocess.CompletedProcess:
        """``script`` in bash from the shell's directory, after the virtualenv's ``activate``
        once step 1 made it (the operator's shell keeps it activated); a leading ``cd DIR &&``
        moves the shell there for the next commands too."""
        activate = self.home / "rsdeploy" / "bin" / "activate"
        prefix = f". {activate} && " if activate.exists() else ""
        result = subprocess.run(["bash", "-e", "-c", prefix + script], cwd=self.cwd,
                                env={**self.env, **env}, capture_output=True, text=True,
                                timeout=timeout)
        moved = re.match(r"cd (\S+) &&", script)
        if moved and result.returncode == 0:
            self.cwd = self.cwd / moved.group(1)
        return result

    @property
    def site(self) -> Path:
        return self.home / README_SITE


def as_here(command: str, host: str, domain: str) -> str:
    """A README command with this run's host and domain for the README's examples.

    Example: ``as_here("rsdeploy init ... --host 203.0.113.10", "10.213.4.11", "rs.test")``
    """
    return command.replace(README_HOST, host).replace(README_DOMAIN, domain)


def fill_in(site: Path, settings: dict, secrets: dict[str, str], files: dict[str, Path]) -> None:
    """Step 3 for a sandbox: ``settings`` merged into staging's stack (where the images come
    from, the CA its registry's certificate chains to), ``files`` copied into the repository
    (``certs/<name>``, referred to relative to the inventory), ``secrets`` added to
    secrets/staging.yml, as an operator's editor would.

    Example: ``fill_in(site, {"app": {...}}, {"registry_password": pw}, {"registry-ca.pem": ca})``
    """
    for name, path in files.items():
        (site / "certs").mkdir(exist_ok=True)
        shutil.copyfile(path, site / "certs" / name)
    inventory = site / "inventories" / "staging.py"
    inventory.write_text(inventory.read_text() + (
        "\n# Filled in for this site: its registry, the CA of the registry's certificate, the\n"
        "# images mirrored there, and the components that have no image there.\n"
        f"stack.update({py_literal(settings)})\n"))
    update_file(site / "secrets" / "staging.yml", secrets)
