"""Checking a certificate before it is attached to a mailbox.

Pure: bytes and a time in, a :class:`~directory.model.Certificate` out, or an
:class:`~directory.errors.InvalidFieldError` naming what is wrong. Checks what
the directory can know on its own: the file parses (PEM or DER), it is within
its validity period, and one of its e-mail addresses (subjectAltName
rfc822Name, RFC 5280 §4.2.1.6; or the legacy emailAddress attribute of the
subject) is the mailbox's address. Path validation to the IGC-Santé trust
anchors and revocation belong to the crypto layer (mssante.crypto), which runs
them at use time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from directory import identifiers as ids
from directory.errors import InvalidFieldError
from directory.model import Certificate, CertificateUsage

if TYPE_CHECKING:
    from datetime import datetime

_PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


def load_certificate(data: bytes, field: str = "certificate") -> x509.Certificate:
    """Parse one certificate, PEM or DER."""
    try:
        if _PEM_MARKER in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise InvalidFieldError(
            field, f"{len(data)} bytes", f"not a PEM or DER certificate ({exc})"
        ) from None


def email_addresses(cert: x509.Certificate) -> list[str]:
    """E-mail addresses of a certificate: SAN rfc822Name first, then subject emailAddress."""
    found: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        found.extend(san.value.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        pass
    found.extend(
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    )
    return found


def _canonical_or_none(address: str) -> str | None:
    try:
        return ids.address(address)
    except InvalidFieldError:
        return None


def check_for_mailbox(
    data: bytes, mailbox_address: str, usage: CertificateUsage, now: datetime
) -> Certificate:
    """Validate a certificate for a mailbox and describe it.

    Raises InvalidFieldError when it does not parse, is not yet valid or has
    expired at ``now``, or has no e-mail address equal to the mailbox's.
    """
    cert = load_certificate(data)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        raise InvalidFieldError(
            "certificate",
            cert.subject.rfc4514_string(),
            f"not valid before {not_before.isoformat()}",
        )
    if now > not_after:
        raise InvalidFieldError(
            "certificate",
            cert.subject.rfc4514_string(),
            f"expired on {not_after.isoformat()}",
        )
    target = ids.address(mailbox_address, "mailbox")
    emails = email_addresses(cert)
    if target not in {_canonical_or_none(e) for e in emails}:
        shown = ", ".join(emails) or "none"
        raise InvalidFieldError(
            "certificate",
            cert.subject.rfc4514_string(),
            f"no e-mail address matches {target} (has: {shown})",
        )
    return Certificate(
        usage=usage,
        der=cert.public_bytes(Encoding.DER),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_after=not_after,
        email=target,
    )
