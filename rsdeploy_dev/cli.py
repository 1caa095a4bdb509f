"""The dev tooling's commands on the ``rsdeploy`` command line.

    rsdeploy demo      [--name PREFIX] [--version TAG] [--layout docker|systemd]
    rsdeploy sandbox   up [--hosts N] | down | status [--name PREFIX]
    rsdeploy images    build | bundle --out DIR | push [--prefix PREFIX]

The product CLI (:mod:`rsdeploy.cli`) does not import this package: it finds :func:`add_commands`
through the entry-point group ``rsdeploy.commands`` (pyproject.toml) and calls it with its
subparsers.
"""

from __future__ import annotations

import os
import subprocess

from rsdeploy_dev import REPO_ROOT
from rsdeploy.cli import build_parser
from rsdeploy_dev import images, registry, sandbox
from rsdeploy_dev.engine import ensure_engine


def cmd_demo(args) -> int:
    """The main job on one machine: a fresh sandbox host (docker layout: the offline images in
    its private registry; systemd: the host installs from Debian, PyPI and npm and builds the
    release), then bootstrap, deploy and verify exactly as against production; prints the URL.
    """
    box = sandbox.up(args.name, 1)
    if args.layout == "docker":
        images.build(images.SANDBOX_STACK, [args.version])
        sandbox.push_images(box.prefix, images.SANDBOX_STACK, [args.version])
    os.environ[sandbox.PREFIX_ENV] = box.prefix  # read by inventories/sandbox.py
    os.environ[sandbox.LAYOUT_ENV] = args.layout
    # Each step parsed by rsdeploy's own parser: the same defaults as typed at a prompt.
    common = ["-i", str(REPO_ROOT / "inventories" / "sandbox.py"), "--secrets",
              str(box.paths.secrets)]
    for command in (["bootstrap"], ["deploy", "--version", args.version], ["verify"]):
        print(f"==> rsdeploy {' '.join(command)} -i inventories/sandbox.py", flush=True)
        step = build_parser().parse_args([*command, *common])
        if step.func(step) != 0:
            return 1
    host, domain = box.hosts[0], f"{box.prefix}.test"
    url = f"https://{domain}:{host.port(443)}/"
    health = subprocess.run(["curl", "-sk", "--resolve", f"{domain}:{host.port(443)}:127.0.0.1",
                             url + "health"], capture_output=True, text=True).stdout
    print(f"\nThe Residency Scheduler (reference app {args.version}, {args.layout} layout) is up:\n  {url}\n"
          f"  (self-signed; resolve {domain} to 127.0.0.1, e.g. curl -k --resolve "
          f"{domain}:{host.port(443)}:127.0.0.1 {url}health)\n  /health -> {health}\n"
          f"Remove it with: rsdeploy sandbox down --name {box.prefix}")
    return 0


def cmd_push(args) -> int:
    if args.prefix:
        pushed = sandbox.push_images(args.prefix, args.names, args.versions)
    else:
        pushed = registry.push(ensure_engine(), args.names, args.versions)
    for ref in pushed:
        print(ref)
    return 0


def add_commands(sub) -> None:
    """Register ``rsdeploy demo``, ``sandbox up|down|status`` and ``images build|bundle|push``
    on the CLI's subparsers (the entry point ``rsdeploy.commands: dev``).
    """
    demo = sub.add_parser("demo", help="deploy the reference app into a local sandbox host")
    demo.add_argument("--name", default="rs-demo", help="sandbox name prefix (default rs-demo)")
    demo.add_argument("--version", default="v1.0.0", help="reference app release (default v1.0.0)")
    demo.add_argument("--layout", choices=("docker", "systemd"), default="docker",
                      help="docker (Compose) or systemd (native services and PM2); default docker")
    demo.set_defaults(func=cmd_demo)

    sandbox.add_commands(sub)
    image_actions = images.add_commands(sub)
    # images push lives here, not in rsdeploy_dev.images: it needs the sandbox's registry, and
    # the images module does not import the sandbox (imports run sandbox -> images only).
    push = image_actions.add_parser("push", help="push images to the machine's registry")
    images.names_args(push)
    push.add_argument("--prefix", help="and put the registry on this sandbox's network")
    push.set_defaults(func=cmd_push)
