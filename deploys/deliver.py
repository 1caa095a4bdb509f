"""Bring a release to the hosts ahead of its deploy, without switching to it.

    rsdeploy deliver -i inventories/prod.py --version v1.2.0    # validates everything first
    pyinfra -y inventories/prod.py deploys/deliver.py --data version=v1.2.0

Docker layout: the release's images pulled, loaded from a bundle or built on the host; systemd
layout: the release built on each app host (virtualenv, frontend build) beside the serving one.
Nothing serving, and nothing the next deploy reads, is touched: the deploy of that tag then only
switches, which keeps a long build out of the release window. Hosts already holding it change
nothing.
"""

from rsdeploy import lock, progress, stack

progress.show_steps()
hs = stack.current()
lock.refuse_if_held_by_another(hs)  # rsdeploy holds it for this run; plain pyinfra holds none
hs.layout.deliver(hs, stack.render_host(hs), ahead=True)
