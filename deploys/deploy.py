"""Roll out the Residency Scheduler stack.

    rsdeploy deploy -i inventories/prod.py --version v1.1.0        # validates everything first
    pyinfra -y inventories/prod.py deploys/deploy.py --data version=v1.1.0

Uploads every rendered file (secrets mode 0600, never shown), delivers the images, brings the
stack up health-gated, reloads or restarts only the services whose files changed, and records
the deployed version. A second run with nothing changed changes nothing.
"""

from roles import base, compose, docker_engine, nginx
from rsdeploy import apply
from rsdeploy.render import render_host

hs = apply.current()
if hs.stack.layout != "docker":
    apply.fail("the systemd layout's rollout is not available yet: deploy it with layout docker")

rendered = render_host(hs)
metas = apply.upload(hs, rendered)
changed = apply.readers(rendered, metas)
base.react(hs, changed)
docker_engine.react(hs, changed)
# Images first: the first certificate is obtained with the certbot image (`compose run`).
delivered = compose.deliver_images(hs, compose.project_images(rendered))
certificate = nginx.ensure_certificate(hs) if nginx.applies(hs) else []
compose.roll_out(hs, rendered, metas, delivered, extra_changes={"nginx": certificate})
apply.enable_timers(changed)
apply.record_version(hs)
