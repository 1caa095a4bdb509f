"""Nginx reverse proxy with TLS (role ``web``): HTTPS termination, /api and /health* to the
backend, everything else to the frontend; certificates from certbot, the operator, or self-signed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import model_validator

from rsdeploy.types import Email, Image, Port, Resources, Section, Size

if TYPE_CHECKING:
    from rsdeploy.render import RenderedFile
    from rsdeploy.settings import HostSettings


class TlsSettings(Section):
    # certbot: Let's Encrypt over the ACME webroot; provided: certificate files already on the
    # host; self-signed: made on the host (sandboxes and tests only).
    mode: Literal["certbot", "provided", "self-signed"] = "certbot"
    email: Email | None = None  # certbot: account e-mail for expiry notices (required for certbot)
    cert_path: str | None = None  # provided: full-chain certificate path on the host
    key_path: str | None = None  # provided: private key path on the host
    staging: bool = False  # certbot: use the Let's Encrypt staging CA

    @model_validator(mode="after")
    def _mode_needs(self):
        if self.mode == "certbot" and not self.email:
            raise ValueError("tls.mode certbot needs tls.email")
        if self.mode == "provided" and not (self.cert_path and self.key_path):
            raise ValueError("tls.mode provided needs tls.cert_path and tls.key_path")
        for field in ("cert_path", "key_path"):
            path = getattr(self, field)
            if path is not None and not path.startswith("/"):
                raise ValueError(f"tls.{field} must be an absolute path on the host")
        return self


class Settings(Section):
    image: Image = "nginx:1.27-alpine"  # docker layout: Nginx image
    http_port: Port = 80  # public HTTP port (redirects to HTTPS, serves ACME challenges)
    https_port: Port = 443  # public HTTPS port
    client_max_body_size: Size = "10m"  # largest accepted request body (schedule imports)
    proxy_read_timeout: int = 60  # seconds nginx waits for the backend/frontend to answer
    hsts: bool = True  # send Strict-Transport-Security (two years, includeSubDomains)
    resources: Resources = Resources(memory="128m", cpus=0.5)  # limits for the nginx service


def applies(hs: HostSettings) -> bool:
    return hs.has_role("web")


def render(hs: HostSettings) -> list[RenderedFile]:
    return []
