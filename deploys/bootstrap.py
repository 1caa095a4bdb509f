"""Bootstrap bare Debian/Ubuntu hosts for the stack.

    rsdeploy bootstrap -i inventories/prod.py            # validates everything first
    pyinfra -y inventories/prod.py deploys/bootstrap.py  # the same, straight through pyinfra

Base packages, extra CA certificates, time sync, the deploy user, unattended upgrades, the
firewall and the stack's directories; on docker-layout hosts also Docker Engine and Compose v2;
on hosts that run the app natively (systemd layout) Python with venv and build tools, the app
user, Node.js and PM2.
"""

from rsdeploy.roles import backend, base, docker_engine, frontend
from rsdeploy import progress, stack

progress.show_steps()
hs = stack.current()
base.bootstrap(hs)
if docker_engine.applies(hs):
    docker_engine.install(hs)
if backend.runtime_applies(hs):
    backend.install_runtime(hs)
    frontend.install_runtime(hs)
