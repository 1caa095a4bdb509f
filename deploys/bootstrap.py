"""Bootstrap bare Debian/Ubuntu hosts for the stack.

    rsdeploy bootstrap -i inventories/prod.py            # validates everything first
    pyinfra -y inventories/prod.py deploys/bootstrap.py  # the same, straight through pyinfra

Base packages, extra CA certificates, time sync, the deploy user, unattended upgrades, the
firewall and the stack's directories; on docker-layout hosts also Docker Engine and Compose v2.
"""

from roles import base, docker_engine
from rsdeploy import stack

hs = stack.current()
base.bootstrap(hs)
if docker_engine.applies(hs):
    docker_engine.install(hs)
