"""TLS between the stack's hosts: PostgreSQL and Redis serve their clients on other hosts over
TLS with certificates of the stack's own CA, and those clients verify them (PostgreSQL
``sslmode=verify-full``, Redis ``rediss://`` with ``ssl_cert_reqs=required``). Clients on the
same host keep loopback or the Compose network, where there is no wire to protect.

The CA is two secrets, ``stack_ca_key`` and ``stack_ca_cert``: made by ``rsdeploy ca init`` or
provided (a CA of your own PKI; ECDSA, Ed25519 or RSA). A server's key and certificate are
derived from the CA key and the server's names (an ECDSA P-256 key from HKDF, signed
deterministically), so rendering stays a pure function of the settings: the same CA and names
give the same bytes, and a second run uploads and restarts nothing. A server's certificate is
valid as long as its CA.

Rotation without a failed connection (``rsdeploy ca rotate``, twice, a deploy after each): the
first makes the next CA (``stack_ca_next_key``/``stack_ca_next_cert``), which clients trust
beside the current one; the second makes it current, and the servers get certificates of it.

This role renders no file of its own: each reader renders its copy (the server its key and
certificate, the app its CA bundle), so a change restarts exactly its readers.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rsdeploy.types import Section

if TYPE_CHECKING:
    from rsdeploy.settings import HostSettings, SecretRules

#: What each data store is called in its certificate's subject.
SERVICES = {"db": "PostgreSQL", "redis": "Redis"}
#: How long a CA made by ``rsdeploy ca init``/``rotate`` lasts, and what it is called.
CA_DAYS, CA_NAME = 3650, "residency-scheduler"
KEY_SECRET, CERT_SECRET = "stack_ca_key", "stack_ca_cert"
NEXT_KEY_SECRET, NEXT_CERT_SECRET = "stack_ca_next_key", "stack_ca_next_cert"


class Settings(Section):
    # encrypt PostgreSQL and Redis traffic between hosts (TLS verified against the stack CA);
    # off only where the network between the hosts is already encrypted (WireGuard, IPsec)
    enabled: bool = True


def remote_clients(hs: HostSettings, role: str) -> list[HostSettings]:
    """The app hosts other than ``hs`` that reach ``role`` (db or redis) on ``hs``."""
    if not hs.has_role(role):
        return []
    return [app for app in hs.peers("app") if app.name != hs.name]


def serves(hs: HostSettings, role: str) -> bool:
    """Whether ``role``'s server on this host speaks TLS to clients on other hosts.

    Example: ``serves(hs, "db")`` -> ``True`` on a db host whose app hosts are elsewhere
    """
    return hs.stack.internal_tls.enabled and bool(remote_clients(hs, role))


def reaches(hs: HostSettings, role: str) -> bool:
    """Whether this host's processes reach ``role`` on another host, over TLS.

    Example: ``reaches(hs, "redis")`` -> ``True`` on an app host without Redis
    """
    carrier = hs.peer(role)
    return carrier is not None and hs.has_role("app") and not hs.has_role(role) \
        and serves(carrier, role)


def applies(hs: HostSettings) -> bool:
    return any(serves(hs, role) or reaches(hs, role) for role in SERVICES)


def check(hs: HostSettings, rules: SecretRules) -> None:
    """The CA's key and certificate: present, readable, a CA, the key its own, in date; the
    next CA (rotation) the same when given."""
    pairs = [(KEY_SECRET, CERT_SECRET)]
    if rules.secrets.stack_ca_next_key or rules.secrets.stack_ca_next_cert:
        pairs.append((NEXT_KEY_SECRET, NEXT_CERT_SECRET))
    for key_name, cert_name in pairs:
        why = "TLS between the stack's hosts (make one with: rsdeploy ca init --secrets FILE)"
        key_pem, cert_pem = rules.require(key_name, why), rules.require(cert_name, why)
        try:
            key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise rules.fail(key_name, f"not an unencrypted PEM private key ({exc})") from None
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError as exc:
            raise rules.fail(cert_name, f"not a PEM certificate ({exc})") from None
        problem = ca_problem(key, cert)
        if problem:
            raise rules.fail(cert_name, problem)


def ca_problem(key, cert: x509.Certificate) -> str | None:
    """Why ``cert`` with ``key`` cannot sign the servers' certificates (None when it can)."""
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey, rsa.RSAPrivateKey)):
        return "the CA key must be ECDSA, Ed25519, Ed448 or RSA"
    if cert.public_key().public_bytes(*_PUBLIC) != key.public_key().public_bytes(*_PUBLIC):
        return "does not belong to the key in stack_ca_key (a key and certificate of two CAs?)"
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return "is not a CA certificate (basicConstraints CA:TRUE)"
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return (f"is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d}, not now (rsdeploy ca rotate)")
    return None


_PUBLIC = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- the CA -------------------------------------------------------------------------------------


def new_ca(name: str, days: int = CA_DAYS) -> tuple[str, str]:
    """A new CA: (key PEM, certificate PEM), ECDSA P-256, valid ``days`` from now.

    Example: ``key, cert = new_ca("residency-scheduler")``
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    common_name = f"{name[:40]} stack CA {now:%Y-%m-%d}"  # X.509 allows 64 characters
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem.strip(), cert.public_bytes(serialization.Encoding.PEM).decode().strip()


def trusted_cas(hs: HostSettings) -> str:
    """The CA bundle clients verify the servers with: the current CA, and the next one while
    a rotation is under way."""
    certs = [hs.secrets.stack_ca_cert, hs.secrets.stack_ca_next_cert]
    return "\n".join(cert for cert in certs if cert) + "\n"


def server_names(hs: HostSettings) -> list[str]:
    """The names a server's clients reach it by: the host's (private) address and its name."""
    return list(dict.fromkeys([hs.address, hs.name]))


def server_credentials(hs: HostSettings, role: str) -> tuple[str, str]:
    """(key PEM, certificate PEM) of ``role``'s server on this host, issued by the stack CA for
    :func:`server_names`; the same every time for the same CA and names.

    Example: ``key, cert = server_credentials(hs, "db")``
    """
    return issue(hs.secrets.stack_ca_key, hs.secrets.stack_ca_cert,
                 f"{SERVICES[role]} on {hs.name}", server_names(hs))


def issue(ca_key_pem: str, ca_cert_pem: str, common_name: str,
          names: list[str]) -> tuple[str, str]:
    """A server key and certificate for ``names`` (DNS names or IP addresses), derived from the
    CA key and the names: the same inputs give the same bytes. Valid as long as the CA.

    Example: ``issue(ca_key, ca_cert, "PostgreSQL on db1", ["10.0.0.21", "db1"])``
    """
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    label = "\0".join([common_name, *names]).encode()
    key = _derived_key(ca_key, label)
    serial = int.from_bytes(hashlib.sha256(ca_cert.fingerprint(hashes.SHA256()) + label)
                            .digest()[:16], "big") >> 1
    alt_names = [_alt_name(name) for name in names]
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(serial)
               .not_valid_before(ca_cert.not_valid_before_utc)
               .not_valid_after(ca_cert.not_valid_after_utc)
               .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    cert = _signed(builder, ca_key)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def _derived_key(ca_key, label: bytes) -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key from HKDF over the CA key's secret bytes and ``label``."""
    secret = ca_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's n
    material = HKDF(hashes.SHA256(), 48, b"rsdeploy server key", label).derive(secret)
    return ec.derive_private_key(int.from_bytes(material, "big") % (order - 1) + 1, ec.SECP256R1())


def _signed(builder: x509.CertificateBuilder, ca_key) -> x509.Certificate:
    """Signed deterministically: ECDSA per RFC 6979; Ed25519, Ed448 and RSA PKCS#1 v1.5 are."""
    if isinstance(ca_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return builder.sign(ca_key, None)
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        return builder.sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
    return builder.sign(ca_key, hashes.SHA256())


def _alt_name(name: str) -> x509.GeneralName:
    """A subjectAltName entry: an IP address as one (clients dial the private address)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def render(hs: HostSettings) -> list:
    """No file of its own: the servers and the app render their copies (see the module)."""
    return []
