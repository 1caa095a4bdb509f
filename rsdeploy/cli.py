"""The ``rsdeploy`` command line.

    rsdeploy render    -i INVENTORY [--host NAME] --out DIR
    rsdeploy check     -i INVENTORY [--host NAME]
    rsdeploy bootstrap -i INVENTORY [--host NAME] [--dry]
    rsdeploy deploy    -i INVENTORY [--host NAME] [--version TAG] [--dry]
    rsdeploy verify    -i INVENTORY [--host NAME] [--version TAG]
    rsdeploy maintenance on|off -i INVENTORY [--host NAME] [--message TEXT] [--dry]
    rsdeploy demo      [--name PREFIX] [--version TAG]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from rsdeploy import DEPLOYS_DIR, REPO_ROOT
from rsdeploy.errors import UserError
from rsdeploy.render import write_tree
from rsdeploy.secrets import FILE_ENV
from rsdeploy.stack import INVENTORY_ENV, check_host, load_inventory, preflight, render_host
from rsdeploy.types import Line


def _summary_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary-json", metavar="FILE",
                        help="also write the run's summary (result, hosts, duration) as JSON")


def _inventory_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--inventory", required=True, help="pyinfra inventory file")
    parser.add_argument("--secrets", help="YAML secrets file (default: $RS_SECRETS_FILE, RS_* vars)")
    parser.add_argument("--host", action="append", help="only this inventory host (repeatable)")


def _selected(args, override_data: dict | None = None) -> dict:
    hosts = load_inventory(args.inventory, args.secrets, override_data)
    if args.host:
        unknown = [h for h in args.host if h not in hosts]
        if unknown:
            raise UserError(f"{args.inventory}: no host {unknown[0]} (hosts: {', '.join(hosts)})")
        hosts = {name: hs for name, hs in hosts.items() if name in args.host}
    return hosts


def cmd_render(args) -> int:
    """Render every file for every selected host into OUT/<host>/<absolute path>."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    for name, hs in _selected(args).items():
        written = _write_out(render_host(hs), out / name, out)
        print(f"{name}: {len(written)} files under {out / name}")
    return 0


def _write_out(files: list, root: Path, out: Path) -> list[Path]:
    """``write_tree`` below ``root``; a file or directory that cannot be written is a UserError
    naming it. Example: ``_write_out(render_host(hs), Path("/tmp/out/rs1"), Path("/tmp/out"))``
    """
    try:
        return write_tree(files, root)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write {exc.filename}: {exc.strerror}") from None


def cmd_check(args) -> int:
    """Validate settings, render, and run the real validators; exit 0 only if all pass."""
    failed = 0
    with tempfile.TemporaryDirectory(prefix="rsdeploy-check-") as tmp:
        for name, hs in _selected(args).items():
            files = render_host(hs)
            write_tree(files, Path(tmp) / name)
            for v in check_host(hs, files, Path(tmp) / name):
                print(f"{'PASS' if v.ok else 'FAIL'}  {name}  {v.path}  [{v.tool}]")
                if not v.ok:
                    failed += 1
                    for line in v.detail.splitlines()[:20]:
                        print(f"      {line}")
    print(f"{'all files pass' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def run_pyinfra(args, deploy_file: str, data: dict[str, str], check=None) -> int:
    """Validate every host's settings, then run a deploy file with the pyinfra CLI.

    Nothing contacts a host before the whole inventory has passed validation (and ``check``,
    called with each host's settings, if given). Secrets reach the
    pyinfra process through the environment (RS_SECRETS_FILE), never its command line.
    Example: ``run_pyinfra(args, "deploy.py", {"version": "v1.1.0"})``
    """
    hosts = _selected(args, data)
    args.selected_hosts = list(hosts)  # for the summary line
    for hs in hosts.values() if check else ():
        check(hs)
    env = dict(os.environ, **{INVENTORY_ENV: str(Path(args.inventory).resolve())})
    if args.secrets:
        env[FILE_ENV] = str(Path(args.secrets).resolve())
    # --dry shows pyinfra's detected changes and stops; -y (no prompt) would skip detecting them.
    command = [sys.executable, "-m", "pyinfra", *([] if args.dry else ["-y"]),
               str(Path(args.inventory).resolve()), str(DEPLOYS_DIR / deploy_file)]
    for key, value in data.items():  # JSON: pyinfra reads 1.0, true or [..] as such, not text
        command += ["--data", f"{key}={json.dumps(value)}"]
    if args.host:
        command += ["--limit", ",".join(hosts)]
    if args.dry:
        command.append("--dry")
    return subprocess.run(command, cwd=REPO_ROOT, env=env).returncode


def cmd_bootstrap(args) -> int:
    """Prepare bare hosts: packages, CA trust, firewall, deploy user, Docker engine."""
    return run_pyinfra(args, "bootstrap.py", {})


def cmd_deploy(args) -> int:
    """Roll out the stack (a given version, or the inventory's) and record it on the hosts."""
    data = {"version": args.version} if args.version is not None else {}
    # A tag missing from the app's repository, a bundle manifest missing: stopped here.
    return run_pyinfra(args, "deploy.py", data, check=preflight)


def ssh_config(hosts: dict) -> str:
    """An OpenSSH client config reaching each inventory host as pyinfra does (for testinfra)."""
    lines = []
    for name, hs in hosts.items():
        c = hs.connection
        lines += [f"Host {name}", f"  HostName {c.get('ssh_hostname', name)}"]
        for key, option in (("ssh_port", "Port"), ("ssh_user", "User"), ("ssh_key", "IdentityFile"),
                            ("ssh_known_hosts_file", "UserKnownHostsFile")):
            if c.get(key):
                lines.append(f"  {option} {c[key]}")
        strict = c.get("ssh_strict_host_key_checking", "yes")
        lines += [f"  StrictHostKeyChecking {strict}", "  BatchMode yes", ""]
    return "\n".join(lines)


def cmd_verify(args) -> int:
    """Check deployed hosts with the testinfra suite (tests/verify), from the same settings."""
    hosts = _selected(args, {"version": args.version} if args.version is not None else None)
    args.selected_hosts = list(hosts)  # for the summary line
    sudo = any(hs.connection.get("ssh_user", "root") != "root" for hs in hosts.values())
    with tempfile.NamedTemporaryFile("w", prefix="rsdeploy-ssh-", suffix=".conf") as config:
        config.write(ssh_config(hosts))
        config.flush()
        command = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "verify"),
                   "-p", "no:cacheprovider", "-q", f"--rs-inventory={Path(args.inventory).resolve()}",
                   "--hosts=" + ",".join(f"ssh://{name}" for name in hosts),
                   f"--ssh-config={config.name}", *(["--sudo"] if sudo else []),
                   *([f"--rs-version={args.version}"] if args.version is not None else [])]
        env = dict(os.environ)
        if args.secrets:
            env["RS_SECRETS_FILE"] = str(Path(args.secrets).resolve())
        return subprocess.run(command, cwd=REPO_ROOT, env=env).returncode


def cmd_maintenance(args) -> int:
    """Switch maintenance mode on the web hosts: ``on``, nginx answers every request of the site
    with 503, Retry-After and a plain page (``--message`` or a default text); ``off``, it serves
    the site again. No reload, no restart: nginx looks for the page per request.
    """
    data = {"maintenance": args.state}
    if args.message is not None:  # one line of text, refused before any host otherwise
        try:
            data["maintenance_message"] = TypeAdapter(Line).validate_python(args.message)
        except ValidationError as exc:
            why = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise UserError(f"--message: {why}") from None
    return run_pyinfra(args, "maintenance.py", data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsdeploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="render every config file, touching no host")
    _inventory_args(render)
    render.add_argument("--out", required=True, help="output directory")
    render.set_defaults(func=cmd_render)

    check = sub.add_parser("check", help="validate settings and rendered files with real tools")
    _inventory_args(check)
    check.set_defaults(func=cmd_check)

    bootstrap = sub.add_parser("bootstrap", help="prepare bare hosts for the stack")
    _inventory_args(bootstrap)
    _summary_args(bootstrap)
    bootstrap.add_argument("--dry", action="store_true", help="show what would change, change nothing")
    bootstrap.set_defaults(func=cmd_bootstrap)

    deploy = sub.add_parser("deploy", help="roll out the stack (pyinfra over SSH)")
    _inventory_args(deploy)
    _summary_args(deploy)
    deploy.add_argument("--version", help="release tag to deploy (default: the inventory's)")
    deploy.add_argument("--dry", action="store_true", help="show what would change, change nothing")
    deploy.set_defaults(func=cmd_deploy)

    verify = sub.add_parser("verify", help="check deployed hosts (testinfra suite tests/verify)")
    _inventory_args(verify)
    _summary_args(verify)
    verify.add_argument("--version", help="release tag the hosts must run (default: the inventory's)")
    verify.set_defaults(func=cmd_verify)

    maintenance = sub.add_parser(
        "maintenance", help="switch maintenance mode: nginx answers 503 with a plain page")
    maintenance.add_argument("state", choices=["on", "off"], help="on: every request gets 503, "
                             "Retry-After and the page; off: the site is served again")
    _inventory_args(maintenance)
    _summary_args(maintenance)
    maintenance.add_argument("--message", metavar="TEXT",
                             help="the page's text, one line (default: a standard text)")
    maintenance.add_argument("--dry", action="store_true",
                             help="show what would change, change nothing")
    maintenance.set_defaults(func=cmd_maintenance)

    # Further command groups (the dev tooling's demo, sandbox and images: rsdeploy_dev.cli)
    # register themselves through the entry-point group rsdeploy.commands (pyproject.toml):
    # each entry is a function add_commands(subparsers). This package never imports them.
    for entry in sorted(entry_points(group="rsdeploy.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return parser


#: Commands that act on hosts: they end with one summary line (and ``--summary-json FILE``).
SUMMARIZED = ("bootstrap", "deploy", "verify", "maintenance")
#: Exit codes of those commands (README, "Commands").
RESULTS = {0: "ok", 1: "failed", 2: "refused", 130: "interrupted"}


def summary(args, code: int, seconds: float, reason: str | None = None) -> dict:
    """What one command did, for people (:func:`summary_line`) and scripts (``--summary-json``).

    Example: ``summary(args, 0, 84.2)["result"]`` -> ``"ok"``
    """
    return {
        "command": args.command, "inventory": args.inventory,
        "state": getattr(args, "state", None),  # maintenance: on or off
        "version": getattr(args, "version", None),
        "hosts": getattr(args, "selected_hosts", args.host or []),
        "result": RESULTS.get(code, "failed"), "exit_code": code,
        "duration_seconds": round(seconds, 1), "reason": reason,
    }


def summary_line(report: dict) -> str:
    """Example: ``"rsdeploy: deploy v1.1.0 on rs1, rs2: ok in 84 s"``"""
    version = "".join(f" {report[key]}" for key in ("state", "version") if report[key])
    hosts = ", ".join(report["hosts"]) or "no host"
    result = report["result"] if not report["exit_code"] or report["result"] != "failed" \
        else f"failed (exit {report['exit_code']})"
    return (f"rsdeploy: {report['command']}{version} on {hosts}: {result} "
            f"in {report['duration_seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started, reason = time.monotonic(), None
    try:
        code = args.func(args)
    except UserError as exc:
        reason = str(exc)
        print(f"rsdeploy: error: {reason}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    if args.command in SUMMARIZED:
        report = summary(args, code, time.monotonic() - started, reason)
        if reason is None:  # a refusal is its one error line
            print(summary_line(report), flush=True)
        if getattr(args, "summary_json", None):
            Path(args.summary_json).write_text(json.dumps(report, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
