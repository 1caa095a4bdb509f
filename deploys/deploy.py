"""Roll out the Residency Scheduler stack.

    rsdeploy deploy -i inventories/prod.py --version v1.1.0        # validates everything first
    pyinfra -y inventories/prod.py deploys/deploy.py --data version=v1.1.0

The story of a rollout, top to bottom: install what the roles need from the distribution
(natively; nothing in containers), render every file the host needs, upload them (secrets mode
0600, never shown) and remove what the roles no longer render, note on the host what the changes
ask for (a run cut off before carrying it out leaves it to the next), carry out the host's own
reactions to what changed, make the directories read at run time (nginx: maintenance page,
traffic pins; node-exporter: the release's metrics), deliver the release, put the certificate in
place, let the layout bring the stack's services up health-gated and reload or restart only what
reads a changed file, switch the app to the release (new instances beside the old, health-gated,
then the traffic; refused and undone when it fails), enable timers, record the release, and
clear the notes. A second run with nothing changed changes nothing.
"""

from rsdeploy.roles import backend, base, exporters, nginx, tls
from rsdeploy import apply, lock, progress, release, stack
from rsdeploy.layout import EnableTimer, Reload
from rsdeploy.stack import release as releases

progress.show_steps()
hs = stack.current()
lock.refuse_if_held_by_another(hs)  # rsdeploy holds it for this run; plain pyinfra holds none

stack.install(hs)
rendered = stack.render_host(hs)
metas = apply.upload(hs, rendered)
reactions = apply.reactions(rendered, metas)
for reaction, gates in apply.prune(stack.owned_dirs(hs), rendered).items():
    reactions.setdefault(reaction, []).extend(gates)
reactions = apply.remember_due(hs, reactions)  # before any is carried out
apply.react_on_host(reactions)
base.ensure_firewall(hs)
if nginx.applies(hs):
    nginx.create_maintenance_dir(hs)
    nginx.create_traffic_dir(hs)
    if nginx.balances_app_hosts(hs):
        nginx.create_upstream_pins(hs)
if exporters.exporter_applies(hs, "node_exporter"):
    exporters.create_textfile_dir(hs)  # where the release is exported for monitoring
if backend.applies(hs):
    backend.create_cache_dir(hs)  # XDG_CACHE_HOME of the app's processes
# The release first: the first certificate is obtained with the certbot image.
arrived = {releases.DELIVERY: hs.layout.deliver(hs, rendered)}
if tls.applies(hs):
    arrived[Reload("nginx")] = tls.ensure_certificate(hs, site_served=nginx.serves_site(hs))
arrived = apply.remember_due(hs, arrived)
delivered = arrived.pop(releases.DELIVERY)
for reaction, gates in arrived.items():
    reactions.setdefault(reaction, []).extend(gates)
released = releases.released_services(hs)
hs.layout.roll_out(hs, reactions, delivered, released)
apply.forget_due(hs, {reaction: gates for reaction, gates in reactions.items()
                      if reaction.target not in released and not isinstance(reaction, EnableTimer)},
                 done_by="the rollout")  # the switch clears its own, even when refused
releases.switch(hs, reactions, delivered, kind=hs.stack.release_kind)
apply.enable_timers(reactions)
release.record_version(hs)
apply.forget_due(hs, reactions, {releases.DELIVERY: delivered})
