"""TLS contexts for the relay's listeners.

What must stay true (DESIGN §6, the MSSanté operator rules):

- TLS 1.3, or TLS 1.2 with exactly the four MSSanté suites
  (ECDHE-RSA-AES256-GCM-SHA384, ECDHE-RSA-AES128-GCM-SHA256,
  ECDHE-RSA-AES256-SHA384, ECDHE-RSA-AES128-SHA256); nothing older, no
  compression, no renegotiation.
- The MX listener asks for a client certificate and verifies any it gets
  against the configured trust anchors (``CERT_OPTIONAL``: a client without
  one completes the handshake and is refused at ``MAIL FROM`` with a reply it
  can read; a client with an untrusted one fails the handshake).
- Submission listeners ask for client certificates only when an account
  kind may log in with SASL EXTERNAL.
- The outbound client (delivery to other operators) verifies the peer's
  chain against the trust anchors and its name against the MX host name,
  presents the operator certificate, and speaks the same versions and
  suites: there is no context without verification.
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

if TYPE_CHECKING:
    from pathlib import Path

    from relay.config import TlsSettings

# The four TLS 1.2 suites the MSSanté trust space allows (0xC030, 0xC02F,
# 0xC028, 0xC027), in OpenSSL names; TLS 1.3 suites are OpenSSL's defaults.
MSSANTE_TLS12_CIPHERS: Final = ":".join(
    [
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA256",
    ]
)


class TlsConfigError(Exception):
    """A certificate, key or anchor file cannot be used; names the file."""


def server_context(
    settings: TlsSettings, *, ask_client_certificate: bool
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MSSANTE_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"tls.cert_file/tls.key_file: cannot load {settings.cert_file}: {exc}"
        ) from exc
    if ask_client_certificate:
        anchors = settings.trust_anchors_file
        if anchors is None:
            raise TlsConfigError(
                "tls.trust_anchors_file: required when the MX listener is enabled"
            )
        try:
            ctx.load_verify_locations(cafile=anchors)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"tls.trust_anchors_file: cannot load {anchors}: {exc}"
            ) from exc
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(
    *,
    cert_file: Path,
    key_file: Path,
    trust_anchors_file: Path,
    crl_files: tuple[Path, ...] = (),
) -> ssl.SSLContext:
    """The context of outbound SMTP: mutual TLS with another operator's MX.

    With ``crl_files`` (PEM or DER), a peer certificate its issuer's CRL
    lists is refused; the CRL of the peer's issuer must then be among them
    (OpenSSL's ``X509_V_FLAG_CRL_CHECK``: no CRL is a failure, fail closed).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MSSANTE_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"delivery.client_cert_file/client_key_file: cannot load {cert_file}: {exc}"
        ) from exc
    try:
        ctx.load_verify_locations(cafile=trust_anchors_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"delivery.trust_anchors_file: cannot load {trust_anchors_file}: {exc}"
        ) from exc
    for crl_file in crl_files:
        _load_crl(ctx, crl_file)
    if crl_files:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def _load_crl(ctx: ssl.SSLContext, path: Path) -> None:
    try:
        raw = path.read_bytes()
        crl = (
            x509.load_pem_x509_crl(raw)
            if raw.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(raw)
        )
    except (OSError, ValueError) as exc:
        raise TlsConfigError(f"delivery.crl_files: cannot load {path}: {exc}") from exc
    # OpenSSL reads CRLs from a PEM file (cadata takes certificates only).
    with tempfile.NamedTemporaryFile(suffix=".pem") as pem:
        pem.write(crl.public_bytes(serialization.Encoding.PEM))
        pem.flush()
        ctx.load_verify_locations(cafile=pem.name)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The verified client certificate of a TLS session, as the policy needs it."""

    subject_dn: str  # RFC 4514, most specific first
    issuer_dn: str
    fingerprint: str  # SHA-256, lower-case hex


def peer_certificate(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
) -> PeerCertificate | None:
    """The client certificate, when one was presented and verified."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return PeerCertificate(
        subject_dn=cert.subject.rfc4514_string(),
        issuer_dn=cert.issuer.rfc4514_string(),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """``TLSv1.3 TLS_AES_256_GCM_SHA384`` for Received headers and the audit."""
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    version = ssl_object.version() or ""
    return f"{version} {cipher[0]}" if cipher else version
