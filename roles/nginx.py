"""Nginx reverse proxy (role ``web``): HTTPS termination, /api and /health* to the backend,
everything else to the frontend. The certificate it serves comes from the tls role
(:mod:`roles.tls`), which also owns the ACME webroot it serves challenges from.

Maintenance mode (``rsdeploy maintenance on|off``, :func:`switch_maintenance`): while the page
file is in the maintenance directory, nginx answers every request of the site with 503, a
``Retry-After`` header and that page; it looks for the file per request, so switching needs
no reload.
"""

from __future__ import annotations

import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pydantic import Field
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from rsdeploy.roles import flower
from rsdeploy.roles.tls import ACME_WEBROOT, certificate_paths
from rsdeploy import apply
from rsdeploy.escape import nginx_str
from rsdeploy.layout import Reload
from rsdeploy.render import RenderedFile, static, template
from rsdeploy.types import HostAddress, Image, Port, Resources, Section, Size
from rsdeploy.validate import Verdict

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings

#: The first nginx whose ``http2`` directive replaces ``listen ... http2`` (deprecated there).
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)
#: Where the nginx container sees the host's maintenance directory (:func:`maintenance_dir`).
CONTAINER_MAINTENANCE_DIR = "/var/www/maintenance"
#: The maintenance page's file name: nginx answers 503 with it while it exists.
MAINTENANCE_PAGE = "maintenance.html"
#: Where nginx reads the release's traffic pins in its container (docker layout).
CONTAINER_TRAFFIC_DIR = "/etc/nginx/traffic"
#: The file of pins in the traffic directory (see :func:`traffic_pins`).
TRAFFIC_FILE = "release.conf"
#: The page's text when ``rsdeploy maintenance on`` is given no ``--message``.
MAINTENANCE_MESSAGE = "The site is down for maintenance and will be back shortly."
#: Debian 12's nginx, which the systemd layout runs.
DEBIAN_NGINX = (1, 22, 1)
#: The host's own nginx configuration, wrapped around the systemd layout's site when validating.
DEBIAN_NGINX_CONF = Path("/etc/nginx/nginx.conf")


class Settings(Section):
    image: Image = "nginx:1.27-alpine"  # docker layout: Nginx image
    http_port: Port = 80  # public HTTP port (redirects to HTTPS, serves ACME challenges)
    https_port: Port = 443  # public HTTPS port
    client_max_body_size: Size = "10m"  # largest accepted request body (schedule imports)
    # seconds nginx waits for the backend/frontend to answer
    proxy_read_timeout: int = Field(default=60, ge=1, le=86400)
    hsts: bool = True  # send Strict-Transport-Security (two years, includeSubDomains)
    # "http2 on;" (nginx >= 1.25.1) instead of "listen ... http2"; None: from the image tag
    # (docker layout) or Debian 12's nginx 1.22 (systemd layout)
    http2_directive: bool | None = None
    listen_ipv6: bool = True  # systemd layout: also listen on [::] (docker: Docker publishes IPv6)
    ocsp_stapling: bool = False  # staple OCSP answers; off: Let's Encrypt ended OCSP in 2025
    # systemd layout: DNS server for OCSP lookups (docker: 127.0.0.11)
    resolver: HostAddress | None = None
    resources: Resources = Resources(memory="128m", cpus=0.5)  # limits for the nginx service
    # maintenance mode: seconds clients are told to wait before retrying (Retry-After)
    maintenance_retry_after: int = Field(default=300, ge=1, le=86400)


def applies(hs: HostSettings) -> bool:
    return hs.has_role("web")


def ports(hs: HostSettings) -> dict[str, int]:
    """The public ports nginx takes, by settings key.

    Example: ``ports(hs)`` -> ``{"nginx.http_port": 80, "nginx.https_port": 443}``
    """
    return {"nginx.http_port": hs.stack.nginx.http_port,
            "nginx.https_port": hs.stack.nginx.https_port}


# --- paths ------------------------------------------------------------------------------------


def _host_path(hs: HostSettings, nginx_path: str) -> str:
    """Where a file nginx reads at ``nginx_path`` (under /etc/nginx) lives on the host.

    Example: ``_host_path(hs, "/etc/nginx/nginx.conf")`` ->
    ``"/opt/residency-scheduler/config/nginx/nginx.conf"``
    """
    return hs.layout.config_path(hs, "nginx", nginx_path.removeprefix("/etc/nginx/"), nginx_path)


def config_dir(hs: HostSettings) -> str:
    """The host directory that nginx sees as /etc/nginx (docker: mounted piecewise).

    Example: ``config_dir(hs)`` -> ``"/opt/residency-scheduler/config/nginx"``
    """
    return str(PurePosixPath(_host_path(hs, "/etc/nginx/nginx.conf")).parent)


def snippets_dir(hs: HostSettings) -> str:
    """Where the site's include files live, as nginx sees them.

    Docker: inside the mounted conf.d/ (a subdirectory, so ``conf.d/*.conf`` skips them), as
    only nginx.conf and conf.d/ of the image's /etc/nginx are ours; systemd: Debian's
    /etc/nginx/snippets/, in a directory of our own.
    """
    if hs.layout.runs_in_containers:
        return "/etc/nginx/conf.d/snippets"
    return "/etc/nginx/snippets/residency-scheduler"


def site_path(hs: HostSettings) -> str:
    """The site's file on the host.

    Systemd layout: /etc/nginx/conf.d/, which Debian's nginx.conf includes, so no
    sites-enabled symlink has to be managed (the deploy removes Debian's default site, whose
    default_server would clash with ours).
    """
    return _host_path(hs, "/etc/nginx/conf.d/residency-scheduler.conf")


def host_maintenance_dir(hs: HostSettings) -> str:
    """The host directory of the maintenance page: the deploy creates it empty and never renders
    nor prunes it; only ``rsdeploy maintenance`` puts the page there or takes it away.

    Example: ``host_maintenance_dir(hs)`` -> ``"/var/lib/residency-scheduler/maintenance"``
    """
    return f"{hs.stack.paths.data_dir}/maintenance"


def host_traffic_dir(hs: HostSettings) -> str:
    """The host directory of the release's traffic pins: the release procedure writes
    :data:`TRAFFIC_FILE` there when it switches a release; the deploy creates it and never
    renders nor prunes it. Example: ``"/var/lib/residency-scheduler/traffic"``
    """
    return f"{hs.stack.paths.data_dir}/traffic"


def traffic_dir(hs: HostSettings) -> str:
    """The traffic directory as nginx sees it (docker: the host's, mounted read-only)."""
    return hs.layout.data_dir(CONTAINER_TRAFFIC_DIR, host_traffic_dir(hs))


def traffic_pins(targets: dict[str, str]) -> str:
    """The traffic file: each proxy target pinned to one instance, which nginx reads at its
    next reload. ``targets``: ``{"backend": "residency-scheduler-backend-2:8000", ...}``.

    Example: ``traffic_pins({"backend": "rs-backend-2:8000"})`` ->
    ``'set $rs_backend "rs-backend-2:8000";\n'`` (after a header comment)
    """
    lines = ["# The instances serving the current release (written by rsdeploy when it switches",
             "# a release; nginx reads it at its next reload). Do not edit."]
    lines += [f"set $rs_{name} {nginx_str(address)};" for name, address in sorted(targets.items())]
    return "\n".join(lines) + "\n"


#: The proxy targets a release moves: each names the app service nginx sends it to.
TRAFFIC = ("backend", "frontend")


def balances_app_hosts(hs: HostSettings) -> bool:
    """Whether this web host reaches the app on other hosts (by their private addresses): one
    upstream per proxy target, one pin file per app host in it, instead of variables."""
    return applies(hs) and not hs.has_role("app")


def upstream_pin_file(hs: HostSettings, app_host: str, traffic: str) -> str:
    """The host file naming where ``app_host``'s ``traffic`` (backend, frontend) is served now:
    the release procedure on that app host rewrites it when it switches; the deploy creates it
    (see :func:`create_upstream_pins`) and never renders nor prunes it.

    Example: ``upstream_pin_file(web, "app1", "backend")`` ->
    ``"/var/lib/residency-scheduler/traffic/app1.backend.upstream"``
    """
    return f"{host_traffic_dir(hs)}/{app_host}.{traffic}.upstream"


def _upstream_pin_seen_by_nginx(hs: HostSettings, app_host: str, traffic: str) -> str:
    """:func:`upstream_pin_file` as nginx sees it (docker: the host's directory, mounted)."""
    return hs.layout.data_dir(f"{CONTAINER_TRAFFIC_DIR}/{app_host}.{traffic}.upstream",
                              upstream_pin_file(hs, app_host, traffic))


def upstream_pin(target: str) -> str:
    """An upstream pin file's text: one ``server`` line. Example: ``upstream_pin("10.0.0.22:8001")``"""
    return ("# Where this app host serves the current release (written by rsdeploy when it "
            "switches a\n# release; nginx reads it at its next reload). Do not edit.\n"
            f"server {target} max_fails=1 fail_timeout=5s;\n")


#: Seconds a graceful reload may take to replace every worker before it counts as failed.
RELOAD_SECONDS = 30

#: The master's worker processes that serve the configuration it loaded last (an old worker
#: renames itself "worker process is shutting down" once told to go, and has then closed its
#: listening sockets). Reads /proc only: any image's shell has what it needs.
_SERVING_WORKERS = r"""serving_workers() {
  for proc in /proc/[0-9]*; do
    { read -r _ _ _ parent _ < "$proc/stat"; } 2>/dev/null || continue
    [ "$parent" = "$master" ] || continue
    [ "$(tr -d '\000' < "$proc/cmdline" 2>/dev/null)" = "nginx: worker process" ] \
      && echo "${proc#/proc/}"
  done
}"""


def reload_and_wait(send_reload: str, pid_file: str = "/run/nginx.pid",
                    seconds: int = RELOAD_SECONDS) -> str:
    """A shell command: reload nginx gracefully with ``send_reload`` and end only once every
    worker serving runs the new configuration. The reload's signal returns at once, while the
    master reads its files and starts new workers: a release that drained its old instances
    meanwhile lost the requests old workers still sent there. Exits 1 with one line if the
    workers are not replaced within ``seconds`` (a reload nginx did not take).

    Example: ``reload_and_wait("kill -HUP 1")`` (the container's master is its process 1)
    """
    return "\n".join([
        f"master=$(cat {shlex.quote(pid_file)}) || exit 1",
        _SERVING_WORKERS,
        'old=" $(serving_workers | tr \'\\n\' \' \') "',
        send_reload,
        "tries=0",
        "while :; do",
        "  now=$(serving_workers); stale=no",
        '  for pid in $now; do case "$old" in *" $pid "*) stale=yes;; esac; done',
        '  [ -n "$now" ] && [ "$stale" = no ] && exit 0',
        "  tries=$((tries + 1))",
        f"  if [ \"$tries\" -gt {seconds * 10} ]; then",
        f'    echo "nginx did not replace its workers within {seconds} s of the reload" >&2',
        "    exit 1",
        "  fi",
        "  sleep 0.1",
        "done",
    ])


def pinned_targets(text: str) -> set[str]:
    """The targets named by traffic pins or upstream pin files (``text``: their contents)."""
    return set(re.findall(r'^set \$rs_\w+ "([^"]+)";', text, re.MULTILINE)
               + re.findall(r"^server (\S+)", text, re.MULTILINE))


def default_upstream_targets(hs: HostSettings) -> dict[tuple[str, str], str]:
    """Each app host's targets before its first release switch: the configured ports.

    Example: ``{("app1", "backend"): "10.0.0.22:8000", ("app1", "frontend"): "10.0.0.22:3000"}``
    """
    return {(app.name, traffic): f"{app.address}:{getattr(app.stack, traffic).port}"
            for app in hs.peers("app") for traffic in TRAFFIC}


def maintenance_dir(hs: HostSettings) -> str:
    """The maintenance directory as nginx sees it (docker: the host's, mounted read-only).

    Example: ``maintenance_dir(hs)`` -> ``"/var/www/maintenance"`` (docker layout)
    """
    return hs.layout.data_dir(CONTAINER_MAINTENANCE_DIR, host_maintenance_dir(hs))


# --- nginx syntax -----------------------------------------------------------------------------


def _version(text: str) -> tuple[int, ...] | None:
    """The leading x.y[.z] of an image tag or ``nginx -v`` output, as a tuple."""
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part) for part in found.groups(default="0")) if found else None


def _image_tag(image: str) -> str:
    """The tag of an image reference ("" without one).

    Example: ``_image_tag("nginx:1.27-alpine")`` -> ``"1.27-alpine"``
    """
    name = image.split("@")[0].rpartition("/")[2]
    return name.partition(":")[2]


def uses_http2_directive(hs: HostSettings) -> bool:
    """Whether the nginx that runs the site wants ``http2 on;`` (>= 1.25.1).

    Docker: from the image tag (no version in it, e.g. ``nginx:alpine``: a current image, so
    yes); systemd: Debian 12's nginx 1.22, so no. ``nginx.http2_directive`` overrides both.
    """
    nginx = hs.stack.nginx
    if nginx.http2_directive is not None:
        return nginx.http2_directive
    if not hs.layout.runs_in_containers:  # the distribution's package, not nginx.image
        return DEBIAN_NGINX >= HTTP2_DIRECTIVE_SINCE
    version = _version(_image_tag(nginx.image))
    return version is None or version >= HTTP2_DIRECTIVE_SINCE


def _proxy_targets(hs: HostSettings) -> dict:
    """How the site reaches backend and frontend (template variables): ``$rs_backend`` and
    ``$rs_frontend``, set to the default instances and overridden by the release's traffic
    pins (:func:`traffic_pins`).

    Docker: the services' names, looked up per request through Docker's DNS, so a recreated
    container (new address) is found without a reload. Systemd: the first release slot's
    address and port (an IP needs no resolver; a host name needs ``nginx.resolver``).
    """
    stack = hs.stack
    if balances_app_hosts(hs):
        upstreams = {f"rs_{traffic}": [_upstream_pin_seen_by_nginx(hs, app.name, traffic)
                                       for app in hs.peers("app")] for traffic in TRAFFIC}
        return {"upstreams": upstreams, "upstream_variables": {}, "resolver": None,
                "backend": "rs_backend", "frontend": "rs_frontend"}
    addresses = {
        "rs_backend": f"{hs.endpoint('app', 'backend')}:{stack.backend.port}",
        "rs_frontend": f"{hs.endpoint('app', 'frontend')}:{stack.frontend.port}",
    }
    resolver = ("127.0.0.11" if hs.layout.runs_in_containers  # Docker's embedded DNS
                else _resolver_address(stack.nginx.resolver))
    return {"upstreams": {}, "upstream_variables": addresses, "resolver": resolver,
            "backend": "$rs_backend", "frontend": "$rs_frontend"}


def _resolver_address(address: str | None) -> str | None:
    """``nginx.resolver`` as nginx's ``resolver`` takes it: an IPv6 address in brackets.

    Example: ``_resolver_address("2001:db8::53")`` -> ``"[2001:db8::53]"``
    """
    return f"[{address}]" if address and ":" in address else address


def _listen_variables(hs: HostSettings) -> dict:
    nginx = hs.stack.nginx
    http2_directive = uses_http2_directive(hs)
    # In a container nginx listens on the container's interfaces; Docker publishes IPv6.
    ipv6 = not hs.layout.runs_in_containers and nginx.listen_ipv6
    return {
        "listen_prefixes": ["", "[::]:"] if ipv6 else [""],
        "http2_directive": http2_directive,
        "https_listen_params": "ssl" if http2_directive else "ssl http2",
        "https_port_suffix": "" if nginx.https_port == 443 else f":{nginx.https_port}",
    }


# --- render -----------------------------------------------------------------------------------

#: nginx's logs: Debian's nginx.conf writes them (natively), the image links them to the
#: container's output (our nginx.conf names them too).
ACCESS_LOG, ERROR_LOG = "/var/log/nginx/access.log", "/var/log/nginx/error.log"

#: The site's include files under snippets_dir(hs); ``*.j2`` are templates, the rest verbatim.
SNIPPETS = ("tls.conf", "security-headers.conf.j2", "api-headers.conf.j2", "proxy.conf.j2")


def _nginx_files(hs: HostSettings) -> list[RenderedFile]:
    variables = {"snippets_dir": snippets_dir(hs), "acme_webroot": ACME_WEBROOT,
                 "maintenance_dir": maintenance_dir(hs), "maintenance_page": MAINTENANCE_PAGE,
                 "traffic_dir": traffic_dir(hs),
                 # Flower (optional): where its one instance answers, by address or service name.
                 "flower_target": flower.endpoint(hs) if flower.served(hs) else None,
                 "flower_prefix": flower.URL_PREFIX,
                 **_proxy_targets(hs), **_listen_variables(hs)}
    certificate, certificate_key = certificate_paths(hs)
    files = {site_path(hs): template("nginx/site.conf.j2", hs, certificate=certificate,
                                     certificate_key=certificate_key, **variables)}
    if hs.layout.runs_in_containers:  # natively the site runs inside Debian's own nginx.conf
        files[_host_path(hs, "/etc/nginx/nginx.conf")] = template("nginx/nginx.conf.j2", hs,
                                                                    access_log=ACCESS_LOG,
                                                                    error_log=ERROR_LOG)
    for name in SNIPPETS:
        text = template(f"nginx/{name}", hs, **variables) if name.endswith(".j2") else static(
            f"nginx/{name}")
        files[_host_path(hs, f"{snippets_dir(hs)}/{name.removesuffix('.j2')}")] = text
    return [RenderedFile(path, text, "nginx", reactions=(Reload("nginx"),))
            for path, text in sorted(files.items())]


def render(hs: HostSettings) -> list[RenderedFile]:
    return _nginx_files(hs)


def maintenance_page(hs: HostSettings, message: str | None = None) -> str:
    """The maintenance page: ``message`` (HTML-escaped), else :data:`MAINTENANCE_MESSAGE`.
    Not among the rendered files: :func:`switch_maintenance` puts it in place.

    Example: ``maintenance_page(hs, "Back at 03:00")``
    """
    return template("nginx/maintenance.html.j2", hs,
                    message=MAINTENANCE_MESSAGE if message is None else message)


# --- validate ---------------------------------------------------------------------------------

#: Directives whose absolute path arguments are moved under the validation root.
_PATH_DIRECTIVES = re.compile(
    r'^(\s*(?:include|ssl_certificate|ssl_certificate_key|ssl_trusted_certificate|error_log|'
    r'access_log|pid)\s+"?)/', re.MULTILINE)
_USER = re.compile(r"^\s*user\s+([^\s;]+)[^;]*;", re.MULTILINE)
_HTTP2_ON = re.compile(r"^\s*http2 on;\n", re.MULTILINE)
_SSL_LISTEN = re.compile(r"^(\s*listen\s+[^;]*\bssl\b)", re.MULTILINE)


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """``nginx -t`` on the rendered site (one verdict per nginx file).

    Example: ``validate(Path("/tmp/out/rs1"), hs)``
    """
    return _nginx_verdicts(tree, hs)


def _nginx_verdicts(tree: Path, hs: HostSettings) -> list[Verdict]:
    """Run the real ``nginx -t`` on a copy of the rendered files laid out under a temporary root.

    The copy is the production config with exactly these changes: absolute paths of includes,
    certificates and logs point into the root; dummy certificates for the site's names stand in
    for the real ones; a ``user`` this machine lacks (the image's ``nginx``) is left to nginx's
    default; and for an nginx older than 1.25.1 ``http2 on;`` becomes ``listen ... http2``.
    Proxy targets are not looked up by ``nginx -t`` in the docker layout (variables, resolved
    per request), so Compose service names need no /etc/hosts entries.
    """
    paths = [f.path for f in _nginx_files(hs)]
    with tempfile.TemporaryDirectory(prefix="rsdeploy-nginx-") as tmp:
        root = Path(tmp)
        try:
            notes = build_validation_root(tree, hs, root)
        except (OSError, subprocess.CalledProcessError) as exc:
            return [Verdict(path, "nginx -t", False, f"cannot prepare the check: {exc}")
                    for path in paths]
        ok, detail = _nginx_test(root)
        detail = detail.replace(f"{root}/etc/nginx", config_dir(hs)).replace(str(root), "")
    tool = "nginx -t" + (f" ({'; '.join(notes)})" if notes else "")
    return [Verdict(path, tool, ok, detail) for path in paths]


def build_validation_root(tree: Path, hs: HostSettings, root: Path) -> list[str]:
    """Lay out ``root`` as nginx's filesystem, from the rendered ``tree``, for ``nginx -t -p root``
    (or a real nginx run in tests); returns notes on what differs from production.

    Example: ``build_validation_root(Path("/tmp/out/rs1"), hs, Path(tmp))``
    """
    etc = root / "etc/nginx"
    for path in (f.path for f in _nginx_files(hs)):
        target = etc / path.removeprefix(config_dir(hs) + "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / path.lstrip("/"), target)
    if not (etc / "nginx.conf").exists():  # no nginx.conf of ours: the site runs inside Debian's
        shutil.copyfile(DEBIAN_NGINX_CONF, etc / "nginx.conf")
    shutil.copyfile(DEBIAN_NGINX_CONF.parent / "mime.types", etc / "mime.types")
    for directory in ("var/log/nginx", "run"):
        (root / directory).mkdir(parents=True)
    _dummy_certificate(root, hs)
    for (app_host, traffic), target in (default_upstream_targets(hs).items()
                                        if balances_app_hosts(hs) else ()):  # the deploy makes them
        pin = root / _upstream_pin_seen_by_nginx(hs, app_host, traffic).lstrip("/")
        pin.parent.mkdir(parents=True, exist_ok=True)
        pin.write_text(upstream_pin(target))
    return _adapt_to_local_nginx(root)


def _dummy_certificate(root: Path, hs: HostSettings) -> None:
    """A throwaway self-signed certificate for the site's names, where nginx reads the real one."""
    certificate, key = (root / path.lstrip("/") for path in certificate_paths(hs))
    for path in (certificate, key):
        path.parent.mkdir(parents=True, exist_ok=True)
    names = ",".join(f"DNS:{domain}" for domain in hs.stack.domains)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", f"/CN={hs.stack.domain}", "-addext", f"subjectAltName={names}",
                    "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True)


def _adapt_to_local_nginx(root: Path) -> list[str]:
    """Rewrite the copies under ``root`` for this machine's nginx (see :func:`_nginx_verdicts`)."""
    notes: set[str] = set()
    old_nginx = (_local_nginx_version() or DEBIAN_NGINX) < HTTP2_DIRECTIVE_SINCE
    for conf in (root / "etc/nginx").rglob("*.conf"):
        text = _PATH_DIRECTIVES.sub(lambda m: f"{m.group(1)}{root}/", conf.read_text())
        user = _USER.search(text)
        if user and not _user_exists(user.group(1)):
            text = text.replace(user.group(0), f"# {user.group(0).strip()}")
            notes.add(f"user {user.group(1)} absent here: nginx's default user")
        if old_nginx and _HTTP2_ON.search(text):
            text = _SSL_LISTEN.sub(r"\1 http2", _HTTP2_ON.sub("", text))
            notes.add("'http2 on' checked as 'listen ... http2' (nginx < 1.25.1 here)")
        conf.write_text(text)
    return sorted(notes)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _local_nginx_version() -> tuple[int, ...] | None:
    if shutil.which("nginx") is None:
        return None
    proc = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    return _version(proc.stderr)


def _nginx_test(root: Path) -> tuple[bool, str]:
    """``nginx -t`` with ``root`` as prefix; warnings count as failures."""
    if shutil.which("nginx") is None:
        return False, "nginx is not installed (package: nginx-light)"
    proc = subprocess.run(["nginx", "-t", "-p", f"{root}/", "-c", f"{root}/etc/nginx/nginx.conf"],
                          capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    ok = proc.returncode == 0 and "[warn]" not in output
    return ok, "" if ok else output


# --- deploy ------------------------------------------------------------------------------------


def serves_site(hs: HostSettings) -> bool:
    """Whether nginx runs with the site already (rendered by an earlier deploy), so it can
    answer ACME challenges for a new certificate. Read before this run uploads anything.

    Example: ``tls.ensure_certificate(hs, site_served=nginx.serves_site(hs))``
    """
    return (hs.layout.service_running(hs, "nginx")
            and host.get_fact(File, path=site_path(hs)) is not None)


@deploy("Install nginx")
def install(hs: HostSettings) -> None:
    """Natively: the distribution's nginx, without Debian's default site (its default_server
    would clash with ours; our site lives in conf.d/).

    Example: ``nginx.install(hs)``
    """
    if hs.layout.runs_in_containers:
        return
    apply.install_packages("Install nginx", ["nginx"],
                           extra_install_args="-o Dpkg::Options::=--force-confold")
    files.link(name="Remove Debian's default nginx site", path="/etc/nginx/sites-enabled/default",
               present=False)


@deploy("Create the maintenance page's directory")
def create_maintenance_dir(hs: HostSettings) -> None:
    """The directory nginx looks in for the maintenance page (mounted into its container, so it
    must exist before the stack comes up); empty unless maintenance mode is on.

    Example: ``nginx.create_maintenance_dir(hs)``
    """
    files.directory(name=f"Create {host_maintenance_dir(hs)} (the maintenance page's)",
                    path=host_maintenance_dir(hs), mode="755", user="root", group="root")


@deploy("Create the traffic pins' directory")
def create_traffic_dir(hs: HostSettings) -> None:
    """The directory nginx reads the release's traffic pins from (mounted into its container,
    so it must exist before the stack comes up); the release procedure writes the pins.

    Example: ``nginx.create_traffic_dir(hs)``
    """
    files.directory(name=f"Create {host_traffic_dir(hs)} (the release's traffic pins)",
                    path=host_traffic_dir(hs), mode="755", user="root", group="root")


@deploy("Create the app hosts' upstream pins")
def create_upstream_pins(hs: HostSettings) -> None:
    """The pin file of each app host and proxy target (see :func:`upstream_pin_file`), naming
    the configured port until the host's first release switch rewrites it; an existing one is
    left as the last switch wrote it.

    Example: ``nginx.create_upstream_pins(hs)``
    """
    for (app_host, traffic), target in default_upstream_targets(hs).items():
        path = upstream_pin_file(hs, app_host, traffic)
        if host.get_fact(File, path=path):
            continue
        server.shell(name=f"Create {path} ({app_host}'s {traffic}, until its first release)",
                     commands=[f"test -e {shlex.quote(path)} || printf '%s' "
                               f"{shlex.quote(upstream_pin(target))} > {shlex.quote(path)}"])


@deploy("Switch maintenance mode")
def switch_maintenance(hs: HostSettings, state: str | None, message: str | None = None) -> None:
    """``on``: put the maintenance page in place in one step, and nginx answers every request of
    the site with 503 and the page; ``off``: take it away, and nginx serves the site again.
    nginx looks for the page per request: nothing is reloaded. A second ``on`` with the same
    message changes nothing.

    Example: ``nginx.switch_maintenance(hs, "on", "Back at 03:00")``
    """
    if state not in ("on", "off"):
        apply.fail("maintenance mode: say on or off (--data maintenance=on or maintenance=off)")
    create_maintenance_dir(hs)
    page = f"{host_maintenance_dir(hs)}/{MAINTENANCE_PAGE}"
    if state == "on":
        apply.file_in_one_step(name=f"Switch maintenance mode on: nginx answers 503 with {page}",
                               content=maintenance_page(hs, message), dest=page)
    else:
        files.file(name=f"Switch maintenance mode off: remove {page}", path=page,
                   present=False)
