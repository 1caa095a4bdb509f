"""Switch maintenance mode on or off on the stack's web hosts.

    rsdeploy maintenance on -i inventories/prod.py --message "Back at 03:00"   # validates first
    rsdeploy maintenance off -i inventories/prod.py
    pyinfra -y inventories/prod.py deploys/maintenance.py --data maintenance=on

On: the maintenance page (the message HTML-escaped, or a default text) is put in place in one
step, and nginx answers every request of the site with 503, ``Retry-After`` and the page; ACME
challenges on the HTTP port are still answered. Off: the page is taken away and the site is
served again. nginx looks for the page per request, so nothing is reloaded or restarted, and a
second run with the same message changes nothing. Hosts without the web role are left alone.
"""

from rsdeploy.roles import nginx
from rsdeploy import progress, stack

progress.show_steps()
hs = stack.current()
if nginx.applies(hs):
    nginx.switch_maintenance(hs, hs.stack.maintenance, hs.stack.maintenance_message)
