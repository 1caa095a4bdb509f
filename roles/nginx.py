"""Nginx reverse proxy with TLS (role ``web``): HTTPS termination, /api and /health* to the
backend, everything else to the frontend; certificates from certbot, the operator, or self-signed.
"""

from __future__ import annotations

import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import model_validator
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import server

from rsdeploy import apply
from rsdeploy.escape import nginx_representable
from rsdeploy.types import Email, HttpsUrl, Image, Port, Resources, Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

#: Where certbot puts HTTP-01 challenge files and nginx serves them from (both layouts; a
#: shared named volume ``acme-webroot`` in the docker layout).
ACME_WEBROOT = "/var/www/certbot"
#: The first nginx whose ``http2`` directive replaces ``listen ... http2`` (deprecated there).
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)
#: Debian 12's nginx, which the systemd layout runs.
DEBIAN_NGINX = (1, 22, 1)
#: The docker CLI on docker-layout hosts (docker.io and docker-ce both install it here).
DOCKER_CLI = "/usr/bin/docker"
#: The host's own nginx configuration, wrapped around the systemd layout's site when validating.
DEBIAN_NGINX_CONF = Path("/etc/nginx/nginx.conf")


class TlsSettings(Section):
    # certbot: Let's Encrypt over the ACME webroot; provided: certificate files already on the
    # host; self-signed: made on the host (sandboxes and tests only).
    mode: Literal["certbot", "provided", "self-signed"] = "certbot"
    email: Email | None = None  # certbot: account e-mail for expiry notices (required for certbot)
    cert_path: str | None = None  # provided: full-chain certificate path on the host
    key_path: str | None = None  # provided: private key path on the host
    staging: bool = False  # certbot: use the Let's Encrypt staging CA
    # certbot: ACME directory URL of another CA (step-ca, a sandbox's pebble); None: Let's
    # Encrypt. Its TLS certificate must chain to the host's trust store (trusted_ca_certs).
    acme_server: HttpsUrl | None = None

    @model_validator(mode="after")
    def _mode_needs(self):
        if self.mode == "certbot" and not self.email:
            raise ValueError("tls.mode certbot needs tls.email")
        if self.staging and self.acme_server:
            raise ValueError("tls.staging (Let's Encrypt's staging CA) and tls.acme_server "
                             "exclude each other: set one")
        if self.mode == "provided" and not (self.cert_path and self.key_path):
            raise ValueError("tls.mode provided needs tls.cert_path and tls.key_path")
        for field in ("cert_path", "key_path"):
            path = getattr(self, field)
            if path is not None and not path.startswith("/"):
                raise ValueError(f"tls.{field} must be an absolute path on the host")
            if path is not None and not nginx_representable(path):
                raise ValueError(f"tls.{field} must not contain '$' or control characters "
                                 "(nginx would read '$' as a variable)")
        return self




class Settings(Section):
    image: Image = "nginx:1.27-alpine"  # docker layout: Nginx image
    http_port: Port = 80  # public HTTP port (redirects to HTTPS, serves ACME challenges)
    https_port: Port = 443  # public HTTPS port
    client_max_body_size: Size = "10m"  # largest accepted request body (schedule imports)
    proxy_read_timeout: int = 60  # seconds nginx waits for the backend/frontend to answer
    hsts: bool = True  # send Strict-Transport-Security (two years, includeSubDomains)
    # "http2 on;" (nginx >= 1.25.1) instead of "listen ... http2"; None: from the image tag
    # (docker layout) or Debian 12's nginx 1.22 (systemd layout)
    http2_directive: bool | None = None
    listen_ipv6: bool = True  # systemd layout: also listen on [::] (docker: Docker publishes IPv6)
    ocsp_stapling: bool = False  # staple OCSP answers; off: Let's Encrypt ended OCSP in 2025
    resolver: str | None = None  # systemd layout: DNS server for OCSP lookups (docker: 127.0.0.11)
    resources: Resources = Resources(memory="128m", cpus=0.5)  # limits for the nginx service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("web")


# --- paths ------------------------------------------------------------------------------------


def config_dir(hs: HostSettings) -> str:
    """The host directory that nginx sees as /etc/nginx (docker: mounted piecewise).

    Example: ``config_dir(hs)`` -> ``"/opt/residency-scheduler/config/nginx"``
    """
    if hs.stack.layout == "docker":
        return f"{hs.stack.paths.base_dir}/config/nginx"
    return "/etc/nginx"


def snippets_dir(hs: HostSettings) -> str:
    """Where the site's include files live, as nginx sees them.

    Docker: inside the mounted conf.d/ (a subdirectory, so ``conf.d/*.conf`` skips them);
    systemd: Debian's /etc/nginx/snippets/, in a directory of our own.
    """
    if hs.stack.layout == "docker":
        return "/etc/nginx/conf.d/snippets"
    return "/etc/nginx/snippets/residency-scheduler"


def site_path(hs: HostSettings) -> str:
    """The site's file on the host.

    Systemd layout: /etc/nginx/conf.d/, which Debian's nginx.conf includes, so no
    sites-enabled symlink has to be managed (the deploy removes Debian's default site, whose
    default_server would clash with ours).
    """
    return f"{config_dir(hs)}/conf.d/residency-scheduler.conf"


def _host_path(hs: HostSettings, nginx_path: str) -> str:
    """Where a file nginx reads at ``nginx_path`` (under /etc/nginx) lives on the host."""
    return config_dir(hs) + nginx_path.removeprefix("/etc/nginx")


def _tls_dir(hs: HostSettings) -> tuple[str, str]:
    """(as nginx sees it, on the host): the directory of self-signed or copied certificates."""
    if hs.stack.layout == "docker":
        return "/etc/nginx/tls", f"{hs.stack.paths.base_dir}/tls"
    return "/etc/ssl/residency-scheduler", "/etc/ssl/residency-scheduler"


def certificate_paths(hs: HostSettings) -> tuple[str, str]:
    """(full chain, private key) as nginx reads them.

    Example: ``certificate_paths(hs)`` ->
    ``("/etc/letsencrypt/live/scheduler.example.org/fullchain.pem", ".../privkey.pem")``
    """
    tls = hs.stack.tls
    if tls.mode == "certbot":
        live = f"/etc/letsencrypt/live/{hs.stack.domain}"
        return f"{live}/fullchain.pem", f"{live}/privkey.pem"
    if tls.mode == "provided" and hs.stack.layout == "systemd":
        return tls.cert_path, tls.key_path
    directory = _tls_dir(hs)[0]
    return f"{directory}/fullchain.pem", f"{directory}/privkey.pem"


def host_certificate_paths(hs: HostSettings) -> tuple[str, str]:
    """(full chain, private key) where the deploy must put them on the host.

    certbot: where certbot writes them; provided: tls.cert_path/key_path (systemd) or the
    copies under base/tls/ (docker); self-signed: where the deploy generates them.
    Example: ``host_certificate_paths(hs)`` ->
    ``("/opt/residency-scheduler/tls/fullchain.pem", "/opt/residency-scheduler/tls/privkey.pem")``
    """
    tls = hs.stack.tls
    if tls.mode == "certbot" or (tls.mode == "provided" and hs.stack.layout == "systemd"):
        return certificate_paths(hs)
    directory = _tls_dir(hs)[1]
    return f"{directory}/fullchain.pem", f"{directory}/privkey.pem"


def certbot_certonly_args(hs: HostSettings) -> list[str]:
    """certbot arguments (after ``certbot``) that obtain the first certificate over the webroot.

    The lineage is named after the primary domain, which :func:`certificate_paths` relies on.
    The CA (``--server`` or ``--staging``) is recorded in the lineage's renewal
    configuration, so ``certbot renew`` goes back to it.
    Example: ``["certonly", "--webroot", "-w", "/var/www/certbot", "--cert-name", "a.org", ...]``
    """
    tls = hs.stack.tls
    args = ["certonly", "--webroot", "-w", ACME_WEBROOT, "--cert-name", hs.stack.domain,
            "--email", tls.email, "--agree-tos", "--non-interactive", "--keep-until-expiring"]
    for domain in hs.stack.domains:
        args += ["-d", domain]
    if tls.acme_server:
        args += ["--server", tls.acme_server]
    return args + (["--staging"] if tls.staging else [])


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
    if hs.stack.layout == "systemd":
        return DEBIAN_NGINX >= HTTP2_DIRECTIVE_SINCE
    version = _version(_image_tag(nginx.image))
    return version is None or version >= HTTP2_DIRECTIVE_SINCE


def _proxy_targets(hs: HostSettings) -> dict:
    """How the site reaches backend and frontend (template variables).

    Docker: per-request lookups through Docker's DNS (variables + resolver), so a recreated
    container (new address) is found without a reload; systemd: fixed upstreams with keepalive.
    """
    stack = hs.stack
    addresses = {
        "rs_backend": f"{hs.endpoint('backend')}:{stack.backend.port}",
        "rs_frontend": f"{hs.endpoint('frontend')}:{stack.frontend.port}",
    }
    if stack.layout == "docker":
        return {"upstreams": {}, "upstream_variables": addresses, "resolver": "127.0.0.11",
                "backend": "$rs_backend", "frontend": "$rs_frontend"}
    return {"upstreams": addresses, "upstream_variables": {}, "resolver": stack.nginx.resolver,
            "backend": "rs_backend", "frontend": "rs_frontend"}


def _listen_variables(hs: HostSettings) -> dict:
    nginx = hs.stack.nginx
    http2_directive = uses_http2_directive(hs)
    ipv6 = hs.stack.layout == "systemd" and nginx.listen_ipv6
    return {
        "listen_prefixes": ["", "[::]:"] if ipv6 else [""],
        "http2_directive": http2_directive,
        "https_listen_params": "ssl" if http2_directive else "ssl http2",
        "https_port_suffix": "" if nginx.https_port == 443 else f":{nginx.https_port}",
    }


# --- render -----------------------------------------------------------------------------------

#: The site's include files under snippets_dir(hs); ``*.j2`` are templates, the rest verbatim.
SNIPPETS = ("tls.conf", "security-headers.conf.j2", "api-headers.conf.j2", "proxy.conf.j2")


def _nginx_files(hs: HostSettings) -> list[RenderedFile]:
    from rsdeploy.render import RenderedFile, static, template

    variables = {"snippets_dir": snippets_dir(hs), "acme_webroot": ACME_WEBROOT,
                 **_proxy_targets(hs), **_listen_variables(hs)}
    certificate, certificate_key = certificate_paths(hs)
    files = {site_path(hs): template("nginx/site.conf.j2", hs, certificate=certificate,
                                     certificate_key=certificate_key, **variables)}
    if hs.stack.layout == "docker":
        files[f"{config_dir(hs)}/nginx.conf"] = template("nginx/nginx.conf.j2", hs)
    for name in SNIPPETS:
        text = template(f"nginx/{name}", hs, **variables) if name.endswith(".j2") else static(
            f"nginx/{name}")
        files[_host_path(hs, f"{snippets_dir(hs)}/{name.removesuffix('.j2')}")] = text
    return [RenderedFile(path, text, "nginx", restarts=("nginx",))
            for path, text in sorted(files.items())]


def _renewal_files(hs: HostSettings) -> list[RenderedFile]:
    """Certbot renewal: the distro timer + a reload hook (systemd), a host timer (docker)."""
    from rsdeploy.render import RenderedFile, static, template

    if hs.stack.tls.mode != "certbot":
        return []
    if hs.stack.layout == "systemd":
        return [RenderedFile("/etc/letsencrypt/renewal-hooks/deploy/reload-nginx",
                             static("certbot/reload-nginx"), "nginx", mode="755")]
    from roles.compose import compose_args  # the whole project: compose.web.yml alone is not

    compose = [DOCKER_CLI, "compose", *compose_args(hs)]
    service = template(
        "certbot/rs-certbot-renew.service.j2", hs,
        # The timer spreads the runs already (as Debian's certbot.timer, whose service also
        # turns off certbot's own random sleep of up to 8 minutes before renewing).
        renew_command=[*compose, "run", "--rm", "--no-deps", "certbot", "renew",
                       "--webroot", "-w", ACME_WEBROOT, "--no-random-sleep-on-renew"],
        reload_command=[*compose, "exec", "-T", "nginx", "nginx", "-s", "reload"],
    )
    timer = "rs-certbot-renew.timer"
    return [
        RenderedFile("/etc/systemd/system/rs-certbot-renew.service", service, "nginx",
                     restarts=(timer,)),
        RenderedFile(f"/etc/systemd/system/{timer}", static(f"certbot/{timer}"), "nginx",
                     restarts=(timer,)),
    ]


def render(hs: HostSettings) -> list[RenderedFile]:
    return _nginx_files(hs) + _renewal_files(hs)


# --- validate ---------------------------------------------------------------------------------

#: Directives whose absolute path arguments are moved under the validation root.
_PATH_DIRECTIVES = re.compile(
    r'^(\s*(?:include|ssl_certificate|ssl_certificate_key|ssl_trusted_certificate|error_log|'
    r'access_log|pid)\s+"?)/', re.MULTILINE)
_USER = re.compile(r"^\s*user\s+([^\s;]+)[^;]*;", re.MULTILINE)
_HTTP2_ON = re.compile(r"^\s*http2 on;\n", re.MULTILINE)
_SSL_LISTEN = re.compile(r"^(\s*listen\s+[^;]*\bssl\b)", re.MULTILINE)


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """``nginx -t`` on the rendered site (one verdict per nginx file), ``systemd-analyze
    verify`` on the renewal units, ``sh -n`` on the renewal hook.

    Example: ``validate(Path("/tmp/out/rs1"), hs)``
    """
    from rsdeploy.validate import run_tool

    verdicts = _nginx_verdicts(tree, hs)
    for f in _renewal_files(hs):
        local = str(tree / f.path.lstrip("/"))
        if f.path.endswith((".service", ".timer")):
            verdicts.append(run_tool(["systemd-analyze", "verify", "--man=no", local], f.path,
                                     "systemd-analyze verify"))
        else:
            verdicts.append(run_tool(["sh", "-n", local], f.path, "sh -n"))
    return verdicts


def _nginx_verdicts(tree: Path, hs: HostSettings) -> list[Verdict]:
    """Run the real ``nginx -t`` on a copy of the rendered files laid out under a temporary root.

    The copy is the production config with exactly these changes: absolute paths of includes,
    certificates and logs point into the root; dummy certificates for the site's names stand in
    for the real ones; a ``user`` this machine lacks (the image's ``nginx``) is left to nginx's
    default; and for an nginx older than 1.25.1 ``http2 on;`` becomes ``listen ... http2``.
    Proxy targets are not looked up by ``nginx -t`` in the docker layout (variables, resolved
    per request), so Compose service names need no /etc/hosts entries.
    """
    from rsdeploy.validate import Verdict

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
    if hs.stack.layout == "systemd":  # the site runs inside Debian's own nginx.conf
        shutil.copyfile(DEBIAN_NGINX_CONF, etc / "nginx.conf")
    shutil.copyfile(DEBIAN_NGINX_CONF.parent / "mime.types", etc / "mime.types")
    for directory in ("var/log/nginx", "run"):
        (root / directory).mkdir(parents=True)
    _dummy_certificate(root, hs)
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


@deploy("Put the site's TLS certificate in place")
def ensure_certificate(hs: HostSettings) -> list:
    """Self-signed: made once on the host. Provided: copied where nginx reads it (docker).
    Certbot: the first certificate over HTTP (standalone, before nginx holds port 80); renewals
    run from the timer. Returns the operations that changed the certificate, to reload nginx.

    Example: ``changed = nginx.ensure_certificate(hs)``
    """
    tls = hs.stack.tls
    cert, key = host_certificate_paths(hs)
    if tls.mode == "self-signed":
        return [_self_signed(hs, cert, key)] if host.get_fact(File, path=cert) is None else []
    if tls.mode == "provided" and (cert, key) != (tls.cert_path, tls.key_path):
        copies = [_copy_provided(tls.cert_path, cert, "644"), _copy_provided(tls.key_path, key, "600")]
        return [op for op in copies if op is not None]
    if tls.mode == "certbot" and host.get_fact(File, path=cert) is None:
        return [_first_certbot_certificate(hs)]
    return []


def _self_signed(hs: HostSettings, cert: str, key: str):
    names = ",".join(f"DNS:{domain}" for domain in hs.stack.domains)
    return server.shell(
        name=f"Make a self-signed certificate for {', '.join(hs.stack.domains)}",
        commands=[
            f"mkdir -p {shlex.quote(str(Path(cert).parent))}",
            "umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            f"-days 825 -subj {shlex.quote('/CN=' + hs.stack.domain)} "
            f"-addext {shlex.quote('subjectAltName=' + names)} "
            f"-keyout {shlex.quote(key)} -out {shlex.quote(cert)} 2>/dev/null",
            f"chmod 644 {shlex.quote(cert)}",
        ],
    )


def _copy_provided(src: str, dest: str, mode: str):
    if host.get_fact(Sha256File, path=src) is None:
        apply.fail(f"tls: provided certificate file {src} does not exist on the host")
    if host.get_fact(Sha256File, path=src) == host.get_fact(Sha256File, path=dest):
        host.noop(f"{dest} is up to date")
        return None
    return server.shell(
        name=f"Copy the provided {Path(src).name} to {dest}",
        commands=[f"mkdir -p {shlex.quote(str(Path(dest).parent))} && umask 077 && "
                  f"install -m {mode} {shlex.quote(src)} {shlex.quote(dest)}"],
    )


def first_certificate_args(hs: HostSettings) -> list[str]:
    """certbot arguments for the first certificate: :func:`certbot_certonly_args`, but answering
    the challenge itself (``--standalone``), as nginx cannot start without a certificate.

    Example: ``["certonly", "--standalone", "--cert-name", "a.org", ...]``
    """
    args = certbot_certonly_args(hs)
    return ["certonly", "--standalone"] + args[args.index("--cert-name"):]


def _first_certbot_certificate(hs: HostSettings):
    """certbot's first run (its image is there already: the deploy delivers images first).

    On a new site nothing holds port 80 yet, so certbot answers the challenge itself. A site
    switching to certbot from another TLS mode keeps serving: its running nginx answers the
    challenge from the shared webroot (mounted in every mode) and is recreated afterwards.
    """
    from roles.compose import compose_command
    from rsdeploy.facts import ComposeContainers

    running = host.get_fact(ComposeContainers, project=hs.stack.compose.project).get("nginx")
    if running and running["state"] == "running":
        run, how = ["certbot", *certbot_certonly_args(hs)], "through the running nginx"
    else:
        port = f"{hs.stack.nginx.http_port}:80"
        run, how = ["--publish", port, "certbot", *first_certificate_args(hs)], "standalone"
    ca = hs.stack.tls.acme_server or "Let's Encrypt"
    return server.shell(
        name=f"Obtain the first certificate for {hs.stack.domain} from {ca} ({how})",
        commands=[compose_command(hs, "run", "--rm", "--no-deps", *run)],
        _chdir=hs.stack.paths.base_dir,
    )
