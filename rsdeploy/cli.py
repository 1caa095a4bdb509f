"""The ``rsdeploy`` command line.

    rsdeploy render    -i INVENTORY [--host NAME] --out DIR
    rsdeploy check     -i INVENTORY [--host NAME]
    rsdeploy bootstrap -i INVENTORY [--host NAME] [--dry]
    rsdeploy deploy    -i INVENTORY [--host NAME] [--version TAG] [--dry] [--wave N] [--lock-wait S]
    rsdeploy deliver   -i INVENTORY [--host NAME] [--version TAG] [--lock-wait S]
    rsdeploy rollback  -i INVENTORY [--host NAME] [--to TAG] [--wave N] [--lock-wait S]
    rsdeploy status    -i INVENTORY [--host NAME] [--role ROLE] [--json]
    rsdeploy diagnose  -i INVENTORY [--host NAME] [--role ROLE] [--json]
    rsdeploy logs      -i INVENTORY [--host NAME] [--role ROLE] [SERVICE...] [--since 1h]
                       [--tail N] [--grep TEXT] [--follow]
    rsdeploy stop|start|restart -i INVENTORY [--host NAME] [--role ROLE] [SERVICE...] [--lock-wait S]
    rsdeploy celery inspect active|scheduled|reserved|stats|ping|registered -i INVENTORY [--json]
    rsdeploy celery call TASK -i INVENTORY [--args JSON] [--kwargs JSON] [--wait SECONDS]
    rsdeploy releases  -i INVENTORY [--host NAME] [--json]
    rsdeploy db backup|backups|restore|fetch -i INVENTORY [--from NAME] [--to DIR]
    rsdeploy verify    -i INVENTORY [--host NAME] [--version TAG]
    rsdeploy maintenance on|off -i INVENTORY [--host NAME] [--message TEXT] [--dry]
    rsdeploy demo      [--name PREFIX] [--version TAG]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import subprocess
import signal
import sys
import re
import tempfile
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path


from rsdeploy import (
    DEPLOYS_DIR, VERIFY_DIR, __version__, diagnose, first_contact, logs, release, remote, scaffold,
    services, site, status,
)
from rsdeploy.roles import backup, internal_tls
from rsdeploy.roles import status as host_status
from rsdeploy.errors import CommandFailed, UserError
from rsdeploy.lock import LOCK_HELD, TOKEN_ENV, HostLock
from rsdeploy.render import write_tree
from rsdeploy.secrets import FILE_ENV, read_file as secrets_file, update_file
from rsdeploy.stack import INVENTORY_ENV, check_host, load_inventory, preflight, render_host
from rsdeploy.settings import ROLES, argument
from rsdeploy.types import Line, Name


def _summary_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary-json", metavar="FILE",
                        help="also write the run's summary (result, hosts, duration) as JSON")


def _inventory_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--inventory",
                        help="pyinfra inventory file (default: the site repository's, rsdeploy.yml)")
    parser.add_argument("--env", help="the site repository's environment (default: $RSDEPLOY_ENV, "
                                      "else rsdeploy.yml's default_env)")
    parser.add_argument("--secrets", help="YAML secrets file (default: $RS_SECRETS_FILE, else the "
                                          "environment's in rsdeploy.yml; RS_* vars win)")
    parser.add_argument("--host", action="append", help="only this inventory host (repeatable)")
    parser.set_defaults(needs_target=True)


def _resolve_target(args) -> None:
    """Fill in ``args.inventory`` and ``args.secrets`` from -i/--secrets or the site repository
    (:mod:`rsdeploy.site`), before anything else reads them."""
    target = site.resolve(args.inventory, args.secrets, args.env)
    args.inventory, args.secrets, args.env = target.inventory, target.secrets, target.environment


#: Commands that read the inventory without contacting any host.
OFFLINE = ("render", "check")


def _selected(args, override_data: dict | None = None) -> dict:
    hosts = load_inventory(args.inventory, args.secrets, override_data)
    if args.host:
        unknown = [h for h in args.host if h not in hosts]
        if unknown:
            raise UserError(f"{args.inventory}: no host {unknown[0]} (hosts: {', '.join(hosts)})")
        hosts = {name: hs for name, hs in hosts.items() if name in args.host}
    placeholder = next((name for name in hosts if scaffold.is_placeholder(name)), None)
    if placeholder and args.command not in OFFLINE:
        raise UserError(f"{args.inventory}: host {placeholder} is a placeholder (rsdeploy init): "
                        "put the environment's own host in its place")
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
    failed, skipped = 0, []
    with tempfile.TemporaryDirectory(prefix="rsdeploy-check-") as tmp:
        for name, hs in _selected(args).items():
            files = render_host(hs)
            write_tree(files, Path(tmp) / name)
            for v in check_host(hs, files, Path(tmp) / name):
                verdict = "SKIP" if v.skipped else "PASS" if v.ok else "FAIL"
                print(f"{verdict}  {name}  {v.path}  [{v.tool}]")
                if not v.ok or v.skipped:
                    failed += not v.ok
                    skipped += [f"{v.tool} on {name}"] if v.skipped else []
                    for line in v.detail.splitlines()[:20]:
                        print(f"      {line}")
    print(f"{'all files pass' if not failed else f'{failed} check(s) failed'}"
          + (f"; skipped here: {', '.join(skipped)}" if skipped else ""))
    return 1 if failed else 0


def run_pyinfra(args, deploy_file: str, data: dict[str, str], check=None,
                locked: str | None = None) -> int:
    """Validate every host's settings, then run a deploy file with the pyinfra CLI.

    Nothing contacts a host before the whole inventory has passed validation (and ``check``,
    called with each host's settings, if given). ``locked`` (what the run does, e.g.
    "deploying"): each host's deploy lock is held for the whole run (:mod:`rsdeploy.lock`).
    Secrets reach the pyinfra process through the environment (RS_SECRETS_FILE), never its
    command line.
    Example: ``run_pyinfra(args, "deploy.py", {"version": "v1.1.0"}, locked="deploying")``
    """
    hosts = _selected(args, data)
    args.selected_hosts = list(hosts)  # for the summary line
    for hs in hosts.values() if check else ():
        check(hs)
    with contextlib.ExitStack() as held:
        os.environ.setdefault(TOKEN_ENV, secrets.token_hex(16))  # passed on to pyinfra
        if locked and not args.dry:
            _hold_locks(held, args, hosts, locked,
                        data.get("version") or next(iter(hosts.values())).stack.version)
        return _pyinfra(args, deploy_file, data, hosts)


def _hold_locks(held: contextlib.ExitStack, args, hosts: dict, action: str, what: str) -> None:
    """Take each host's deploy lock until ``held`` closes (``--lock-wait``, ``--break-lock``,
    ``--message``); the holder record says ``action what`` ("deploying v1.1.0")."""
    holder = {"who": release.who(), "action": action, "version": what,
              "message": getattr(args, "message", None) or ""}
    for hs in hosts.values():
        lock = held.enter_context(HostLock(hs, holder, getattr(args, "lock_wait", 0),
                                           getattr(args, "break_lock", False)))
        for note in lock.notes:
            print(f"rsdeploy: {note}", file=sys.stderr)


def _pyinfra(args, deploy_file: str, data: dict[str, str], hosts: dict) -> int:
    """The pyinfra CLI on a deploy file; a release refused on some host makes exit code 3."""
    env = dict(os.environ, **{INVENTORY_ENV: str(Path(args.inventory).resolve())})
    if args.secrets:
        env[FILE_ENV] = str(Path(args.secrets).resolve())
    # --dry shows pyinfra's detected changes and stops; -y (no prompt) would skip detecting them.
    # --fail-percent 0: a host failing an operation stops every host after that operation, so
    # the stages after it (the app after its database, the web host after the app) never run.
    command = [sys.executable, "-m", "pyinfra", *([] if args.dry else ["-y"]),
               str(Path(args.inventory).resolve()), str(DEPLOYS_DIR / deploy_file),
               "--fail-percent", "0"]
    for key, value in data.items():  # JSON: pyinfra reads 1.0, true or [..] as such, not text
        command += ["--data", f"{key}={json.dumps(value)}"]
    if args.host:
        command += ["--limit", ",".join(hosts)]
    if args.dry:
        command.append("--dry")
    with tempfile.NamedTemporaryFile("r", prefix="rsdeploy-outcome-", suffix=".jsonl") as outcome:
        env[release.OUTCOME_ENV] = outcome.name
        code = subprocess.run(command, env=env).returncode
        refused = [json.loads(line) for line in outcome if line.strip()]
    refused = [o for o in refused if o["result"] == release.FAILED]
    if code and refused:
        args.reason, args.result = refusal(refused)
        return RELEASE_REFUSED
    return code


def refusal(refused: list[dict]) -> tuple[str, str]:
    """The summary's reason and result for releases refused on hosts (their outcomes, see
    :func:`rsdeploy.release.report_outcome`): each host's reason and what serves there now;
    "nothing serves" when no host had a release before.

    Example: ``refusal([{"host": "rs1", "reason": "...", "serving": None}])[1]`` -> ``NOTHING_SERVES``
    """
    reason = "; ".join(f"{o['reason']} ({release.what_serves(o['host'], o['serving'])})"
                       for o in refused)
    nothing = all(o["serving"] is None for o in refused)
    return reason, NOTHING_SERVES if nothing else RESULTS[RELEASE_REFUSED]


def cmd_bootstrap(args) -> int:
    """Prepare bare hosts: packages, CA trust, firewall, deploy user, Docker engine.

    First contact (:mod:`rsdeploy.first_contact`): each host's SSH key is pinned when unknown;
    hosts the inventory's login cannot reach yet get a first pass as the initial user, which
    makes the deploy user; once that login is proven, every host gets the pass as the inventory
    logs in, which also switches root's and password logins off (logged in as the deploy user).
    """
    if args.initial_user is not None:
        argument(Name, args.initial_user, "--initial-user")
    if args.dry:
        return run_pyinfra(args, "bootstrap.py", {})
    hosts = _selected(args)
    for hs in hosts.values():
        if (pinned := first_contact.pin_host_key(hs)) is not None:
            print(f"rsdeploy: {pinned}", flush=True)
    bare = {name: hs for name, hs in hosts.items() if not first_contact.logs_in(hs)}
    if bare:
        user = args.initial_user or next(iter(bare.values())).stack.base.initial_user
        for hs in bare.values():
            first_contact.check_initial_user(hs, user)
        print(f"rsdeploy: first contact with {', '.join(bare)} as {user}", flush=True)
        first = argparse.Namespace(**{**vars(args), "host": list(bare)})
        code = run_pyinfra(first, "bootstrap.py", {"ssh_user": user})
        if code:
            return code
        for hs in bare.values():
            first_contact.prove_login(hs)
    return run_pyinfra(args, "bootstrap.py", {})


def cmd_deploy(args) -> int:
    """Roll out the stack (a given version, or the inventory's) and record it on the hosts."""
    data = _release_data(args, {"version": args.version} if args.version is not None else {})
    # A tag missing from the app's repository, a bundle manifest missing: stopped here.
    return run_pyinfra(args, "deploy.py", data, check=preflight, locked="deploying")


def cmd_deliver(args) -> int:
    """Bring a release to the hosts ahead of its deploy (images; natively the built release),
    switching nothing: its deploy then only switches."""
    data = {"version": args.version} if args.version is not None else {}
    return run_pyinfra(args, "deliver.py", data, check=preflight, locked="delivering")


def host_history(hosts: dict) -> dict[str, list[dict]]:
    """Each host's release history, read over SSH (empty for a host that has none)."""
    found = {}
    for name, hs in hosts.items():
        proc = remote.run(hs, f"cat {shlex.quote(release.history_file(hs))} 2>/dev/null || true")
        if proc.returncode:
            raise UserError(f"{name}: cannot read the release history over SSH: "
                            f"{(proc.stderr.strip().splitlines() or ['no answer'])[-1]}")
        found[name] = release.parse_history(proc.stdout)
    return found


def cmd_rollback(args) -> int:
    """Switch back to an earlier release (``--to TAG``, default the previous successful one),
    zero-downtime and recorded, downgrading the database with the newer release's scripts."""
    hosts = _selected(args)
    target = args.to
    if target is None:
        app_hosts = {name: hs for name, hs in hosts.items() if hs.has_role("app")}  # the released
        found = {name: release.previous_good(attempts)
                 for name, attempts in host_history(app_hosts).items()}
        targets = set(found.values())
        if None in targets:
            missing = [name for name, tag in found.items() if tag is None]
            raise UserError(f"{missing[0]}: no earlier successful release in its history to roll "
                            "back to; name one with --to TAG")
        if len(targets) > 1:
            raise UserError("the hosts' previous releases differ ("
                            + ", ".join(f"{n}: {t}" for n, t in sorted(found.items()))
                            + "); name one with --to TAG")
        target = targets.pop()
    args.version = target
    data = _release_data(args, {"version": target, "release_kind": "rollback"})
    if args.restore_backup:
        data["restore_backup"] = True
    return run_pyinfra(args, "deploy.py", data, check=preflight, locked="rolling back to")


def _with_roles(args) -> dict:
    """The selected hosts (``--host``) that have one of the ``--role`` roles (all without)."""
    hosts = {name: hs for name, hs in _selected(args).items()
             if not args.role or any(hs.has_role(role) for role in args.role)}
    if not hosts:
        raise UserError(f"{args.inventory}: no selected host has the role {' or '.join(args.role)}")
    return hosts


def cmd_status(args) -> int:
    """Every selected host at a glance (each host's rs-status, read at once); exit 1 when a
    check is down."""
    hosts = _with_roles(args)
    checks = status.collect(hosts, host_status.STATUS_PATH)
    print(json.dumps(status.as_json(checks), indent=2) if args.json else status.table(checks))
    return 0 if status.healthy(checks) else 1


def cmd_diagnose(args) -> int:
    """The guide's troubleshooting checks on every selected host at once, each finding with
    its remedy; exit 1 when one is a problem (warnings do not count)."""
    hosts = _with_roles(args)
    findings = diagnose.collect(hosts, args.inventory, host_status.STATUS_PATH,
                                host_status.DIAGNOSE_PATH)
    print(json.dumps(diagnose.as_json(findings), indent=2) if args.json else diagnose.table(findings))
    return 1 if diagnose.problems(findings) else 0


def cmd_logs(args) -> int:
    """The services' logs of every selected host, merged by time (``--follow``: as they come);
    exit 1 when a host could not be read."""
    if args.since:
        logs.since_seconds(args.since)  # a wrong --since is refused before any host is contacted
    if args.tail is not None and args.tail < 0:
        raise UserError(f"--tail {args.tail}: expected 0 or more lines")
    query = logs.Query(tuple(args.service), args.since, args.tail, args.grep, args.follow)
    hosts = _with_roles(args)  # read and follow refuse an unknown service before any host too
    if args.follow:
        return 1 if logs.follow(hosts, query, host_status.LOGS_PATH) else 0
    lines, failed = logs.read(hosts, query, host_status.LOGS_PATH)
    for line in logs.render(lines):
        print(line)
    for name, why in failed.items():
        print(f"rsdeploy logs: {name}: {why}", file=sys.stderr)
    return 1 if failed else 0


def cmd_service(args) -> int:
    """Stop, start or restart services on the selected hosts, gracefully and in order: stopping
    the web hosts first and the data stores last, starting the other way (a restart stops
    everything asked for, then starts it); each host's deploy lock is held meanwhile. Exit 1
    when a service did not stop or start (the host's rs-service names it)."""
    hosts = _with_roles(args)
    wanted = services.by_host(hosts, args.service, lambda hs: hs.layout.controls(hs))
    order = [name for name in services.start_order(hosts) if name in wanted]
    steps = {"stop": [("stop", order[::-1])], "start": [("start", order)],
             "restart": [("stop", order[::-1]), ("start", order)]}[args.action]
    with contextlib.ExitStack() as held:
        _hold_locks(held, args, {name: hosts[name] for name in order},
                    {"stop": "stopping", "start": "starting", "restart": "restarting"}[args.action],
                    ", ".join(args.service) or "every service")
        for action, names in steps:
            for name in names:
                named = wanted[name] if args.service else []  # none: every one of the host
                command = shlex.join([host_status.SERVICE_PATH, action, *named])
                result = remote.run(hosts[name], command, timeout=3600)
                for line in (result.stdout + result.stderr).splitlines():
                    print(f"{name}: {line}", flush=True)
                if result.returncode != 0:
                    print(f"rsdeploy: {args.action} stopped at {name} (exit {result.returncode}); "
                          "the hosts after it were not touched", file=sys.stderr)
                    return 1
    return 0


#: What ``rsdeploy celery call`` accepts as a task's name (rs-celery checks it again).
TASK_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"


def _celery_argv(args) -> list[str]:
    """rs-celery's arguments for ``rsdeploy celery ...``; wrong ones refused here, before any
    host (``--args`` a JSON list, ``--kwargs`` a JSON object)."""
    if args.celery_command == "inspect":
        return ["inspect", args.question, *(["--json"] if args.json else [])]
    if not re.fullmatch(TASK_NAME, args.task):
        raise UserError(f"{args.task!r} is not a Celery task name (letters, digits, _ and .)")
    for option, value, kind in (("--args", args.args, list), ("--kwargs", args.kwargs, dict)):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise UserError(f"{option} {value!r}: not JSON ({exc})") from None
        if not isinstance(parsed, kind):
            raise UserError(f"{option} {value!r}: expected a JSON {'list' if kind is list else 'object'}")
    if args.wait is not None and args.wait < 0:
        raise UserError(f"--wait {args.wait}: expected 0 or more seconds")
    wait = ["--wait", str(args.wait)] if args.wait is not None else []
    return ["call", args.task, "--args", args.args, "--kwargs", args.kwargs, *wait]


def cmd_celery(args) -> int:
    """The guide's Celery inspect questions and manual task triggers, run by an app host's
    rs-celery in the worker's context (every worker of the stack answers through the broker).
    Exit 1 when no worker answered, the task failed, or the host could not be reached."""
    argv = _celery_argv(args)
    app_hosts = [hs for hs in _selected(args).values() if hs.has_role("app")]
    if not app_hosts:
        raise UserError(f"{args.inventory}: no selected host has the role app (Celery runs there)")
    hs = app_hosts[0]
    timeout = INSPECT_SECONDS + (args.wait or 0) if args.celery_command == "call" else INSPECT_SECONDS
    result = remote.run(hs, shlex.join([host_status.CELERY_PATH, *argv]), timeout=timeout)
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    if result.returncode in (remote.SSH_FAILED, remote.NOT_FOUND):
        print(f"rsdeploy celery: {hs.name}: "
              + ("cannot connect over SSH" if result.returncode == remote.SSH_FAILED
                 else f"{host_status.CELERY_PATH} not found: deploy first"), file=sys.stderr)
        return 1
    return result.returncode


def cmd_releases(args) -> int:
    """Print every release attempt on each host (newest first), or ``--json``."""
    history = host_history(_selected(args))
    if args.json:
        print(json.dumps(history, indent=2))
        return 0
    for name, attempts in history.items():
        print(release.table(attempts, name) if attempts else f"{name}: no release recorded yet")
    return 0


#: Seconds ``rsdeploy celery`` allows one rs-celery run (the workers answer within 10 s; a
#: first call natively starts a Python that imports the app), plus any ``--wait``.
INSPECT_SECONDS = 120

def ssh_config(hosts: dict) -> str:
    """An OpenSSH client config reaching each inventory host as pyinfra does (for testinfra)."""
    lines = []
    for name, hs in hosts.items():
        lines += [f"Host {name}", f"  HostName {hs.connection.get('ssh_hostname', name)}"]
        lines += [f"  {option} {value}" for option, value in remote.connection_options(hs.connection)]
        lines.append("")
    return "\n".join(lines)


def cmd_verify(args) -> int:
    """Check deployed hosts with the testinfra suite (rsdeploy/verify), from the same settings."""
    hosts = _selected(args, {"version": args.version} if args.version is not None else None)
    args.selected_hosts = list(hosts)  # for the summary line
    sudo = any(hs.login_user != "root" for hs in hosts.values())
    with tempfile.NamedTemporaryFile("w", prefix="rsdeploy-ssh-", suffix=".conf") as config:
        config.write(ssh_config(hosts))
        config.flush()
        # The suite's own pytest settings and root: whatever the caller's directory holds.
        command = [sys.executable, "-m", "pytest", str(VERIFY_DIR), "-c", str(VERIFY_DIR / "pytest.ini"),
                   f"--rootdir={VERIFY_DIR}", "-p", "no:cacheprovider", "-q",
                   f"--rs-inventory={Path(args.inventory).resolve()}",
                   f"--ssh-config={config.name}", *(["--sudo"] if sudo else []),
                   *([f"--rs-version={args.version}"] if args.version is not None else [])]
        env = dict(os.environ)
        if args.secrets:
            env["RS_SECRETS_FILE"] = str(Path(args.secrets).resolve())
        if len(hosts) == 1:
            return subprocess.run([*command, f"--hosts=ssh://{next(iter(hosts))}"],
                                  env=env).returncode
        # Every host at once, one suite run each; their reports one after the other.
        runs = {name: subprocess.Popen([*command, f"--hosts=ssh://{name}"], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for name in hosts}
        codes = {}
        for name, proc in runs.items():
            output, _ = proc.communicate()
            codes[name] = proc.returncode
            print(f"--- {name} ---\n{output.rstrip()}", flush=True)
        failed = [name for name, code in codes.items() if code]
        if failed:
            print(f"rsdeploy: verify failed on {', '.join(failed)}", file=sys.stderr)
        return max(codes.values())


def cmd_maintenance(args) -> int:
    """Switch maintenance mode on the web hosts: ``on``, nginx answers every request of the site
    with 503, Retry-After and a plain page (``--message`` or a default text); ``off``, it serves
    the site again. No reload, no restart: nginx looks for the page per request.
    """
    data = {"maintenance": args.state}
    if args.message is not None:  # one line of text, refused before any host otherwise
        data["maintenance_message"] = argument(Line, args.message, "--message")
    return run_pyinfra(args, "maintenance.py", data)


def cmd_ca(args) -> int:
    """The stack CA (TLS between hosts) in the secrets file: ``init`` makes it; ``rotate``
    makes the next one (deploy: clients trust both), then, run again, makes it current
    (deploy: the servers get certificates of it). No host is contacted."""
    path = Path(args.secrets or os.environ.get(FILE_ENV) or "")
    if not str(path) or path.is_dir():
        raise UserError("ca: give the secrets file (--secrets FILE or RS_SECRETS_FILE)")
    held = _secrets_in(path)
    name = internal_tls.CA_NAME
    if args.action == "init":
        if internal_tls.KEY_SECRET in held:
            raise UserError(f"{path}: {internal_tls.KEY_SECRET}: the stack CA is there already "
                            "(rsdeploy ca rotate replaces it without a failed connection)")
        key, cert = internal_tls.new_ca(name)
        update_file(path, {internal_tls.KEY_SECRET: key, internal_tls.CERT_SECRET: cert})
        print(f"{path}: stack CA made (valid {internal_tls.CA_DAYS} days); deploy to use it")
    elif internal_tls.KEY_SECRET not in held:
        raise UserError(f"{path}: {internal_tls.KEY_SECRET}: no stack CA to rotate "
                        "(rsdeploy ca init makes one)")
    elif internal_tls.NEXT_KEY_SECRET not in held:
        key, cert = internal_tls.new_ca(name)
        update_file(path, {internal_tls.NEXT_KEY_SECRET: key, internal_tls.NEXT_CERT_SECRET: cert})
        print(f"{path}: next stack CA made. 1) deploy: every client trusts it beside the current "
              "one; 2) rsdeploy ca rotate again; 3) deploy: the servers switch to it")
    else:
        update_file(path, {internal_tls.KEY_SECRET: held[internal_tls.NEXT_KEY_SECRET],
                           internal_tls.CERT_SECRET: held[internal_tls.NEXT_CERT_SECRET],
                           internal_tls.NEXT_KEY_SECRET: None, internal_tls.NEXT_CERT_SECRET: None})
        print(f"{path}: the next stack CA is now the current one; deploy: the servers get "
              "certificates of it and clients stop trusting the old one")
    return 0


def cmd_init(args) -> int:
    """Make a site repository (:mod:`rsdeploy.scaffold`); every argument is checked first and
    nothing is written when one is wrong."""
    req = scaffold.request(args.directory, args.layout, args.domain, args.hosts, args.env,
                           args.email, args.initial_user, args.runner_image)
    written = scaffold.write(req)
    other = next(name for name in scaffold.ENVIRONMENTS if name != req.environment)
    print(f"{req.directory}: {len(written)} files, a site repository for rsdeploy {__version__} "
          f"({req.layout} layout; {req.environment}: {', '.join(req.hosts)}; {other}: "
          f"placeholders to fill in)")
    print(f"secrets: {req.directory / 'secrets'} (mode 0600 files, kept out of git)")
    if not req.deploy_user_keys:
        print("no SSH public key found (ssh-agent, ~/.ssh/id_*.pub): add the deploy user's keys "
              "to base.deploy_user_keys before bootstrap")
    print(f"next: cd {req.directory} && rsdeploy check (README.md lists the steps after)")
    return 0


def _secrets_in(path: Path) -> dict[str, str]:
    """The secrets a file holds now (nothing when it is not there yet)."""
    return secrets_file(path) if path.exists() else {}


def _backup_hosts(args) -> dict:
    """The selected hosts that keep database backups (role db, backup.enabled)."""
    hosts = {name: hs for name, hs in _selected(args).items() if backup.applies(hs)}
    if not hosts:
        raise UserError(f"{args.inventory}: no selected host keeps database backups "
                        "(role db with backup.enabled)")
    return hosts


def _on_host(hs, command: str, timeout: float = 7200) -> str:
    """Run a host command for a ``db`` action; its output, or a failure naming the host."""
    proc = remote.run(hs, command, timeout=timeout)
    if proc.returncode:
        lines = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        print("\n".join(f"  | {line}" for line in lines), file=sys.stderr)
        raise CommandFailed(f"{hs.name}: {command.split()[0]} failed (exit {proc.returncode})")
    return proc.stdout


def _streamed(hs, command: str) -> None:
    """Run a long host command, each line of its output shown as it comes, led by the host's
    name (rs-backup says how far along it is); a failure names the host."""
    with subprocess.Popen(remote.ssh_argv(hs, command), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(f"{hs.name}: {line.rstrip()}", flush=True)
    if proc.returncode:
        raise CommandFailed(f"{hs.name}: {command.split()[0]} failed (exit {proc.returncode})")


def _dumps(hs) -> list[dict]:
    """The host's dumps, oldest first: name, bytes, modified (UTC)."""
    directory = shlex.quote(hs.stack.backup.directory)
    out = _on_host(hs, f"cd {directory} 2>/dev/null && find . -maxdepth 1 -name '*.dump' "
                       "-printf '%f %s %TY-%Tm-%TdT%TH:%TM:%TSZ\\n' | sort -k3 || true", 60)
    rows = [line.split() for line in out.splitlines() if len(line.split()) == 3]
    return [{"name": n, "bytes": int(b), "modified": m.split(".")[0] + "Z"} for n, b, m in rows]


def cmd_db(args) -> int:
    """Database backups on the db hosts: take one, list them, restore one, copy one here."""
    hosts = _backup_hosts(args)
    for name, hs in hosts.items():
        if args.action == "backup":
            _streamed(hs, backup.SCRIPT)
        elif args.action == "backups":
            dumps = _dumps(hs)
            if args.json:
                print(json.dumps({name: dumps}, indent=2))
            for dump in dumps if not args.json else ():
                print(f"{name}  {dump['modified']}  {dump['bytes']:>12}  {dump['name']}")
        elif args.action == "fetch":
            print(f"{name}: {_fetch(hs, _dump_name(hs, args.name), Path(args.to))}")
        else:
            _restore(args, hs, _dump_name(hs, args.name))
    return 0


def _dump_name(hs, name: str | None) -> str:
    """``name`` when the host has that dump; the newest one when None."""
    dumps = [dump["name"] for dump in _dumps(hs)]
    if name is None and dumps:
        return dumps[-1]
    if name not in dumps:
        raise UserError(f"{hs.name}: no dump {name or '(none at all)'} in "
                        f"{hs.stack.backup.directory} (rsdeploy db backups lists them)")
    return name


def _fetch(hs, name: str, directory: Path) -> Path:
    """Copy a dump off the host into ``directory`` (mode 0600), checked by its size."""
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / name
    source = shlex.quote(f"{hs.stack.backup.directory}/{name}")
    with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        proc = subprocess.run(remote.ssh_argv(hs, f"cat {source}"), stdout=out,
                              stderr=subprocess.PIPE, timeout=7200)
    size = int(_on_host(hs, f"stat -c %s {source}", 60))
    if proc.returncode or dest.stat().st_size != size:
        dest.unlink(missing_ok=True)
        raise CommandFailed(f"{hs.name}: copying {name} failed: "
                            f"{proc.stderr.decode(errors='replace').strip() or 'size differs'}")
    return dest


def _restore(args, hs, name: str) -> None:
    """Restore a dump on a host that runs the app beside its database: deploy lock held,
    maintenance mode on around it (nginx answers 503 and the page), a safety dump first."""
    if not hs.has_role("app"):
        raise UserError(f"{hs.name}: restores need the app on the database's host (it stops "
                        "the app's writers); this one has no role app")
    holder = {"who": release.who(), "action": "restoring", "version": name,
              "message": getattr(args, "message", None) or ""}
    with HostLock(hs, holder, args.lock_wait, args.break_lock):
        maintenance = argparse.Namespace(**{**vars(args), "host": [hs.name], "dry": False})
        message = {"maintenance_message": "The database is being restored; back shortly."}
        if run_pyinfra(maintenance, "maintenance.py", {"maintenance": "on", **message}):
            raise CommandFailed(f"{hs.name}: could not switch maintenance mode on")
        try:
            print(_on_host(hs, f"{backup.RESTORE_SCRIPT} {shlex.quote(name)}").rstrip())
        finally:
            run_pyinfra(maintenance, "maintenance.py", {"maintenance": "off"})


def _wave_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wave", type=int, metavar="N",
                        help="app hosts switched at once (default: the inventory's release_wave, 1)")


def _release_data(args, data: dict) -> dict:
    """``data`` with ``--wave``, when given (validated with the inventory's settings)."""
    return {**data, "release_wave": args.wave} if args.wave is not None else data


def _role_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", action="append", choices=ROLES,
                        help="only hosts with this role (repeatable)")


def _service_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", nargs="*",
                        help="only these services (their Compose names in either layout: "
                             "backend, celery-worker, db, nginx, ...; default: every one)")
    _role_args(parser)


def _lock_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lock-wait", type=float, default=0, metavar="SECONDS",
                        help="wait this long for another run's deploy lock (default: refuse at once)")
    parser.add_argument("--break-lock", action="store_true",
                        help="stop a hung run holding the deploy lock, then take it")
    parser.add_argument("--message", metavar="TEXT", help="why: shown to whoever finds the lock held")


class Parser(argparse.ArgumentParser):
    """argparse with its errors as rsdeploy's own: one line naming what is wrong, exit code 2
    (``rsdeploy deploy: error: argument --wave: invalid int value: 'x'``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rsdeploy", description="Deploy and operate the Residency Scheduler "
                    "(pyinfra over SSH): bootstrap, deploy, roll back, verify, operate.")
    parser.add_argument("--version", action="version", version=f"rsdeploy {__version__}")
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
    bootstrap.add_argument("--initial-user", metavar="USER",
                           help="a bare host's first login: root, or a user with passwordless "
                                "sudo (default: base.initial_user)")
    bootstrap.set_defaults(func=cmd_bootstrap)

    deploy = sub.add_parser("deploy", help="roll out the stack (pyinfra over SSH)")
    _inventory_args(deploy)
    _summary_args(deploy)
    deploy.add_argument("--version", help="release tag to deploy (default: the inventory's)")
    deploy.add_argument("--dry", action="store_true", help="show what would change, change nothing")
    _wave_args(deploy)
    _lock_args(deploy)
    deploy.set_defaults(func=cmd_deploy)

    deliver = sub.add_parser("deliver", help="bring a release to the hosts ahead of its deploy "
                             "(pull, load or build), switching nothing")
    _inventory_args(deliver)
    _summary_args(deliver)
    deliver.add_argument("--version", help="release tag to deliver (default: the inventory's)")
    _lock_args(deliver)
    deliver.set_defaults(func=cmd_deliver, dry=False)

    rollback = sub.add_parser("rollback", help="switch back to an earlier release, zero-downtime")
    _inventory_args(rollback)
    _summary_args(rollback)
    rollback.add_argument("--to", metavar="TAG",
                          help="release to go back to (default: the previous successful one)")
    rollback.add_argument("--restore-backup", action="store_true",
                          help="when the database cannot be downgraded, restore the dump taken "
                               "while TAG served (rows written since are lost)")
    _wave_args(rollback)
    _lock_args(rollback)
    rollback.set_defaults(func=cmd_rollback, dry=False)

    db = sub.add_parser("db", help="database backups: take, list, restore, copy here")
    db.add_argument("action", choices=["backup", "backups", "restore", "fetch"],
                    help="backup: dump now; backups: list dumps; restore: put a dump back "
                         "(safety dump first); fetch: copy a dump here")
    _inventory_args(db)
    db.add_argument("--from", dest="name", metavar="NAME",
                    help="restore/fetch: the dump's file name (default: the newest)")
    db.add_argument("--to", default=".", metavar="DIR", help="fetch: where to put it (default .)")
    db.add_argument("--json", action="store_true", help="backups: as JSON")
    _lock_args(db)
    db.set_defaults(func=cmd_db, dry=False)

    state = sub.add_parser("status", help="every host and service at a glance; exit 1 if one is down")
    _inventory_args(state)
    _role_args(state)
    state.add_argument("--json", action="store_true", help="as JSON, for scripts")
    state.set_defaults(func=cmd_status)

    diagnosis = sub.add_parser("diagnose", help="the guide's troubleshooting checks, each finding "
                               "with what to do; exit 1 on a problem")
    _inventory_args(diagnosis)
    _role_args(diagnosis)
    diagnosis.add_argument("--json", action="store_true", help="as JSON, for scripts")
    diagnosis.set_defaults(func=cmd_diagnose)

    logs_parser = sub.add_parser("logs", help="the services' logs of every host, merged by time")
    _inventory_args(logs_parser)
    _service_args(logs_parser)
    logs_parser.add_argument("--since", metavar="DURATION",
                             help="only lines of the last DURATION: a number and s, m, h or d")
    logs_parser.add_argument("--tail", type=int, metavar="N",
                             help="the last N lines of each source (default 100, or all since "
                                  "--since)")
    logs_parser.add_argument("--grep", metavar="TEXT", help="only lines containing TEXT (any case)")
    logs_parser.add_argument("--follow", "-f", action="store_true",
                             help="then print new lines as they come, until Ctrl-C")
    logs_parser.set_defaults(func=cmd_logs)

    for action, meaning in (("stop", "stop services gracefully, web first (no data removed)"),
                            ("start", "start services, data stores first, and wait until they run"),
                            ("restart", "stop, then start services")):
        control = sub.add_parser(action, help=meaning)
        _inventory_args(control)
        _service_args(control)
        _lock_args(control)
        control.set_defaults(func=cmd_service, action=action)

    celery = sub.add_parser("celery", help="ask the Celery workers, or send them a task")
    celery_sub = celery.add_subparsers(dest="celery_command", required=True)
    inspect = celery_sub.add_parser("inspect", help="the workers' tasks, schedule, statistics")
    inspect.add_argument("question", choices=["active", "scheduled", "reserved", "stats", "ping",
                                              "registered"])
    _inventory_args(inspect)
    inspect.add_argument("--json", action="store_true", help="Celery's JSON, for scripts")
    call = celery_sub.add_parser("call", help="send a task now (the guide's manual triggers)")
    call.add_argument("task", help="the task's name, or its last part (periodic_health_check)")
    _inventory_args(call)
    call.add_argument("--args", default="[]", metavar="JSON", help="positional arguments, a JSON list")
    call.add_argument("--kwargs", default="{}", metavar="JSON", help="keyword arguments, a JSON object")
    call.add_argument("--wait", type=int, metavar="SECONDS",
                      help="wait this long for the task's result and print it")
    celery.set_defaults(func=cmd_celery)

    releases = sub.add_parser("releases", help="every release attempt on each host")
    _inventory_args(releases)
    releases.add_argument("--json", action="store_true", help="as JSON, for scripts")
    releases.set_defaults(func=cmd_releases)

    verify = sub.add_parser("verify", help="check deployed hosts (the testinfra suite rsdeploy/verify)")
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

    ca = sub.add_parser("ca", help="the stack CA for TLS between hosts, in the secrets file")
    ca.add_argument("action", choices=["init", "rotate"],
                    help="init: make it; rotate: make the next one, or (run again) switch to it")
    ca.add_argument("--secrets", metavar="FILE", help="the secrets file (default: $RS_SECRETS_FILE)")
    ca.set_defaults(func=cmd_ca)

    init = sub.add_parser("init", help="make a site repository: inventories, secrets, CI pipelines")
    init.add_argument("directory", help="where (a new or empty directory)")
    init.add_argument("--layout", required=True, help="docker (Compose) or systemd (native + PM2)")
    init.add_argument("--domain", required=True, help="the site's public name in that environment")
    init.add_argument("--host", dest="hosts", action="append", required=True, metavar="ADDR",
                      help="a host of that environment, its address or DNS name (repeatable: "
                           "1 host carries everything; more split the roles)")
    init.add_argument("--env", default="staging",
                      help="the environment --host and --domain describe (default staging; the "
                           "other gets placeholders to fill in)")
    init.add_argument("--email", help="certbot's account e-mail: Let's Encrypt instead of a "
                                      "self-signed certificate")
    init.add_argument("--initial-user", default="root", metavar="USER",
                      help="who bootstrap first logs in as (root, or a user with passwordless sudo)")
    init.add_argument("--runner-image", metavar="IMAGE",
                      help="the CI runner image the pipelines name (default: a placeholder to "
                           "replace with your registry's)")
    init.set_defaults(func=cmd_init)

    # Further command groups (the dev tooling's demo, sandbox and images: rsdeploy_dev.cli)
    # register themselves through the entry-point group rsdeploy.commands (pyproject.toml):
    # each entry is a function add_commands(subparsers). This package never imports them.
    for entry in sorted(entry_points(group="rsdeploy.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return parser


#: Commands that act on hosts: they end with one summary line (and ``--summary-json FILE``).
SUMMARIZED = ("bootstrap", "deploy", "deliver", "rollback", "verify", "maintenance")
#: A release failed its checks or migration on a host and was undone: the old one serves (or,
#: on a host's first release, nothing does: :data:`NOTHING_SERVES`).
RELEASE_REFUSED = 3
#: Exit codes of those commands (README, "Commands").
RESULTS = {0: "ok", 1: "failed", 2: "refused", RELEASE_REFUSED: "release refused, rolled back",
           LOCK_HELD: "lock held", 130: "interrupted"}
#: The result of exit code 3 when the refused release was the first on every host it reached.
NOTHING_SERVES = "release refused, nothing serves"


def summary(args, code: int, seconds: float, reason: str | None = None) -> dict:
    """What one command did, for people (:func:`summary_line`) and scripts (``--summary-json``).

    Example: ``summary(args, 0, 84.2)["result"]`` -> ``"ok"``
    """
    return {
        "command": args.command, "inventory": args.inventory,
        "environment": getattr(args, "env", None),  # the site repository's, when it chose
        "rsdeploy_version": __version__,
        "state": getattr(args, "state", None),  # maintenance: on or off
        "version": getattr(args, "version", None),
        "hosts": getattr(args, "selected_hosts", args.host or []),
        "result": getattr(args, "result", None) or RESULTS.get(code, "failed"), "exit_code": code,
        "duration_seconds": round(seconds, 1), "reason": reason,
    }


def summary_line(report: dict) -> str:
    """Example: ``"rsdeploy: deploy v1.1.0 on rs1, rs2: ok in 84 s"``"""
    version = "".join(f" {report[key]}" for key in ("state", "version") if report[key])
    hosts = ", ".join(report["hosts"]) or "no host"
    result = report["result"] if not report["exit_code"] or report["result"] != "failed" \
        else f"failed (exit {report['exit_code']})"
    why = f": {report['reason']}" if report["exit_code"] == RELEASE_REFUSED else ""
    return (f"rsdeploy: {report['command']}{version} on {hosts}: {result} "
            f"in {report['duration_seconds']:.0f} s{why}")


def interruptible() -> None:
    """Ctrl-C (SIGINT) stops rsdeploy even when it started with SIGINT ignored (a job a script
    put in the background): pyinfra, its child, installs its own handler and stops on it with
    exit code 0, and a run it stopped would read as finished. (Only the main thread can.)"""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    interruptible()
    args = build_parser().parse_args(argv)
    started, reason = time.monotonic(), None
    try:
        if getattr(args, "needs_target", False):
            _resolve_target(args)
        code = args.func(args)
    except UserError as exc:
        reason = str(exc)
        print(f"rsdeploy: error: {reason}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    if args.command in SUMMARIZED:
        report = summary(args, code, time.monotonic() - started,
                         reason or getattr(args, "reason", None))
        if reason is None:  # a refusal is its one error line
            print(summary_line(report), flush=True)
        if getattr(args, "summary_json", None):
            Path(args.summary_json).write_text(json.dumps(report, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
