"""The site's TLS certificate (role ``web``): how it is obtained (certbot over the ACME webroot,
provided by the operator, or self-signed), where nginx reads it, and how certbot renews it.

The nginx role reads the certificate from :func:`certificate_paths`; this role puts it there
(:func:`ensure_certificate`, before the stack comes up) and keeps it renewed.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import model_validator
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import server

from rsdeploy import apply
from rsdeploy.escape import nginx_representable
from rsdeploy.layout import EnableTimer
from rsdeploy.render import RenderedFile, static, template
from rsdeploy.types import AbsolutePath, Email, HttpsUrl, Image, Section
from rsdeploy.validate import run_tool, systemd_verify

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings
    from rsdeploy.validate import Verdict

#: Where certbot puts HTTP-01 challenge files and nginx serves them from (both layouts; a
#: shared named volume ``acme-webroot`` in the docker layout).
ACME_WEBROOT = "/var/www/certbot"
#: The docker CLI on docker-layout hosts (docker.io and docker-ce both install it here); the
#: renewal unit names it by its absolute path.
DOCKER_CLI = "/usr/bin/docker"
#: The host timer that renews certificates when certbot runs from its image.
RENEW_TIMER = "rs-certbot-renew.timer"


class Settings(Section):
    # certbot: Let's Encrypt over the ACME webroot; provided: certificate files already on the
    # host; self-signed: made on the host (sandboxes and tests only).
    mode: Literal["certbot", "provided", "self-signed"] = "certbot"
    email: Email | None = None  # certbot: account e-mail for expiry notices (required for certbot)
    cert_path: AbsolutePath | None = None  # provided: full-chain certificate path on the host
    key_path: AbsolutePath | None = None  # provided: private key path on the host
    staging: bool = False  # certbot: use the Let's Encrypt staging CA
    # certbot: ACME directory URL of another CA (step-ca, a sandbox's pebble); None: Let's
    # Encrypt. Its TLS certificate must chain to the host's trust store (trusted_ca_certs).
    acme_server: HttpsUrl | None = None
    certbot_image: Image = "certbot/certbot:v4.1.1"  # tls.mode certbot: renews the certificate

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
            if path is not None and not nginx_representable(path):
                raise ValueError(f"tls.{field} must not contain '$' or control characters "
                                 "(nginx would read '$' as a variable)")
        return self


def applies(hs: HostSettings) -> bool:
    return hs.has_role("web")


# --- paths ------------------------------------------------------------------------------------


def _tls_dir(hs: HostSettings) -> tuple[str, str]:
    """(as nginx sees it, on the host): the directory of self-signed or copied certificates.

    In a container nginx sees the host's ``base/tls`` mounted at /etc/nginx/tls; natively it
    reads the host's directory itself.
    """
    if hs.layout.runs_in_containers:
        return "/etc/nginx/tls", f"{hs.stack.paths.base_dir}/tls"
    return "/etc/ssl/residency-scheduler", "/etc/ssl/residency-scheduler"


def _provided_in_place(hs: HostSettings) -> bool:
    """Whether nginx reads the operator's certificate files where they are: natively yes; in a
    container only what is mounted, so the deploy copies them into the mounted directory."""
    return hs.stack.tls.mode == "provided" and not hs.layout.runs_in_containers


def certificate_paths(hs: HostSettings) -> tuple[str, str]:
    """(full chain, private key) as nginx reads them.

    Example: ``certificate_paths(hs)`` ->
    ``("/etc/letsencrypt/live/scheduler.example.org/fullchain.pem", ".../privkey.pem")``
    """
    tls = hs.stack.tls
    if tls.mode == "certbot":
        live = f"/etc/letsencrypt/live/{hs.stack.domain}"
        return f"{live}/fullchain.pem", f"{live}/privkey.pem"
    if _provided_in_place(hs):
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
    if hs.stack.tls.mode == "certbot" or _provided_in_place(hs):
        return certificate_paths(hs)
    directory = _tls_dir(hs)[1]
    return f"{directory}/fullchain.pem", f"{directory}/privkey.pem"


# --- certbot arguments ------------------------------------------------------------------------


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


def first_certificate_args(hs: HostSettings) -> list[str]:
    """certbot arguments for the first certificate: :func:`certbot_certonly_args`, but answering
    the challenge itself (``--standalone``), as nginx cannot start without a certificate.

    Example: ``["certonly", "--standalone", "--cert-name", "a.org", ...]``
    """
    args = certbot_certonly_args(hs)
    return ["certonly", "--standalone"] + args[args.index("--cert-name"):]


# --- render -----------------------------------------------------------------------------------


def renewal_timer(hs: HostSettings) -> str:
    """The timer that renews the certificate: ours running certbot's image, or the
    distribution certbot package's own."""
    return RENEW_TIMER if hs.layout.runs_in_containers else "certbot.timer"


def _unit_argv(argv: list[str]) -> list[str]:
    """``argv`` as a unit's Exec line names it: the docker CLI by its absolute path."""
    return [DOCKER_CLI, *argv[1:]] if argv[0] == "docker" else argv


def _renewal_files(hs: HostSettings) -> list[RenderedFile]:
    """Certbot renewal: the distro timer + a reload hook (distribution's certbot), a host timer
    running certbot's image (containers)."""
    if hs.stack.tls.mode != "certbot":
        return []
    if not hs.layout.runs_in_containers:  # the package's certbot.timer renews; nginx reloads
        return [RenderedFile("/etc/letsencrypt/renewal-hooks/deploy/reload-nginx",
                             static("certbot/reload-nginx"), "tls", mode="755")]
    service = template(
        "certbot/rs-certbot-renew.service.j2", hs,
        # The timer spreads the runs already (as Debian's certbot.timer, whose service also
        # turns off certbot's own random sleep of up to 8 minutes before renewing).
        renew_command=_unit_argv(hs.layout.run_argv(
            hs, "certbot", ["renew", "--webroot", "-w", ACME_WEBROOT,
                            "--no-random-sleep-on-renew"])),
        reload_command=_unit_argv(hs.layout.exec_argv(hs, "nginx", ["nginx", "-s", "reload"])),
    )
    reactions = (EnableTimer(RENEW_TIMER),)
    return [
        RenderedFile("/etc/systemd/system/rs-certbot-renew.service", service, "tls",
                     reactions=reactions),
        RenderedFile(f"/etc/systemd/system/{RENEW_TIMER}", static(f"certbot/{RENEW_TIMER}"),
                     "tls", reactions=reactions),
    ]


def render(hs: HostSettings) -> list[RenderedFile]:
    return _renewal_files(hs)


# --- validate ---------------------------------------------------------------------------------


def validate(tree: Path, hs: HostSettings) -> list[Verdict]:
    """``systemd-analyze verify`` on the renewal units, ``sh -n`` on the renewal hook.

    Example: ``validate(Path("/tmp/out/rs1"), hs)``
    """
    verdicts = []
    for f in _renewal_files(hs):
        local = str(tree / f.path.lstrip("/"))
        if f.path.endswith((".service", ".timer")):
            verdicts.append(systemd_verify(Path(local), f.path, "--man=no"))
        else:
            verdicts.append(run_tool(["sh", "-n", local], f.path, "sh -n"))
    return verdicts


# --- deploy ------------------------------------------------------------------------------------


@deploy("Install the TLS tools")
def install(hs: HostSettings) -> None:
    """Natively: openssl (self-signed) or certbot, which the deploy runs on the host.

    Example: ``tls.install(hs)``
    """
    if hs.layout.runs_in_containers:
        return
    tools = ["certbot"] if hs.stack.tls.mode == "certbot" else ["openssl"]
    apply.install_packages(f"Install {' and '.join(tools)}", tools)


@deploy("Put the site's TLS certificate in place")
def ensure_certificate(hs: HostSettings, site_served: bool = False) -> list:
    """Self-signed: made once on the host. Provided: copied where nginx reads it (docker).
    Certbot: the first certificate over HTTP (through the running site when ``site_served``,
    else standalone); renewals run from the timer. Returns the operations that changed the
    certificate, to reload nginx.

    Example: ``changed = tls.ensure_certificate(hs, site_served=nginx.serves_site(hs))``
    """
    tls = hs.stack.tls
    cert, key = host_certificate_paths(hs)
    if tls.mode == "self-signed":
        return [_self_signed(hs, cert, key)] if host.get_fact(File, path=cert) is None else []
    if tls.mode == "provided" and (cert, key) != (tls.cert_path, tls.key_path):
        copies = [_copy_provided(tls.cert_path, cert, "644"),
                  _copy_provided(tls.key_path, key, "600")]
        return [op for op in copies if op is not None]
    if tls.mode == "certbot" and host.get_fact(File, path=cert) is None:
        return [_first_certbot_certificate(hs, site_served)]
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


def _first_certbot_certificate(hs: HostSettings, site_served: bool):
    """certbot's first run (its image is there already: the deploy delivers images first).

    A site switching to certbot from another TLS mode keeps serving: its running nginx answers
    the challenge from the shared webroot (served in every mode). On a new site certbot answers
    it itself on the HTTP port, which nothing holds yet. Natively the package's nginx runs from
    its installation on, so the host asks it first (a probe file in the webroot): when it
    serves the site, through it; else it is stopped for certbot (the rollout starts it again
    with the site), and the lineage is switched to the webroot, so the distribution's renewal
    timer renews through the running nginx.
    """
    ca = hs.stack.tls.acme_server or "Let's Encrypt"
    through = shlex.join(hs.layout.run_argv(hs, "certbot", certbot_certonly_args(hs)))
    standalone = shlex.join(hs.layout.run_argv(hs, "certbot", first_certificate_args(hs),
                                               publish=f"{hs.stack.nginx.http_port}:80"))
    if hs.layout.runs_in_containers:
        how, command = ("through the running nginx", through) if site_served else ("standalone", standalone)
    else:
        how = "through nginx if it serves the site, else standalone"
        probe = f"{ACME_WEBROOT}/.well-known/acme-challenge/rsdeploy-probe"
        url = f"http://127.0.0.1:{hs.stack.nginx.http_port}/.well-known/acme-challenge/rsdeploy-probe"
        command = (
            f"mkdir -p {shlex.quote(str(Path(probe).parent))} && echo $$ > {probe} && "
            f"if curl -s --max-time 5 -H {shlex.quote('Host: ' + hs.stack.domain)} {url} "
            f"| grep -qx $$; then rm -f {probe} && {through}; "
            f"else rm -f {probe} && systemctl stop {hs.layout.unit_after('nginx')} && "
            f"{standalone} && {_renew_through_webroot(hs)}; fi")
    return server.shell(
        name=f"Obtain the first certificate for {hs.stack.domain} from {ca} ({how})",
        commands=[command], _chdir=hs.layout.command_dir(hs),
    )


def _renew_through_webroot(hs: HostSettings) -> str:
    """A shell line switching the lineage's renewal from standalone to the webroot (what
    certbot itself writes for ``--webroot``), so renewals never need port 80 to themselves."""
    conf = shlex.quote(f"/etc/letsencrypt/renewal/{hs.stack.domain}.conf")
    webroot_map = "".join(f"{domain} = {ACME_WEBROOT}\\n" for domain in hs.stack.domains)
    return (f"sed -i 's|^authenticator = standalone$|authenticator = webroot\\n"
            f"webroot_path = {ACME_WEBROOT},|' {conf} && "
            f"printf '[[webroot_map]]\\n{webroot_map}' >> {conf}")
