"""Certificates: loading, credentials, trust stores and RFC 5280 path validation.

Owns the answer to "may this certificate be used for S/MIME by this address,
at this time?". Path building and validation (signatures up the chain,
validity periods, basic constraints, revocation by CRL) are delegated to
``pyhanko-certvalidator``; this module chooses the inputs (trust anchors,
intermediates, CRLs, the moment) and maps its errors to a :class:`Reason`.

What must stay true:

- pure: no file or network I/O (CRL and AIA fetching are disabled; CRLs come
  in through :class:`TrustStore`), no wall clock (``at`` is a parameter);
- pyhanko-certvalidator's coroutines are driven to completion without an event
  loop (:func:`_run_to_completion`); with fetching disabled they never
  suspend, and if one ever did we raise instead of blocking;
- every validation failure becomes a :class:`Reason`, never an exception;
  loading bad PEM/DER raises :class:`~mssante.crypto.MalformedError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator import errors as pv_errors

from mssante.crypto._errors import CryptoError, MalformedError, UnsupportedError

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable
    from datetime import datetime

__all__ = [
    "Credential",
    "PrivateKey",
    "Reason",
    "SignerCredential",
    "TrustStore",
    "certificate_addresses",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "validate_smime_certificate",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
RevocationMode = Literal["hard-fail", "soft-fail", "require"]
_T = TypeVar("_T")

PEM_CERT_MARKER: Final = b"-----BEGIN CERTIFICATE-----"


class Reason(enum.Enum):
    """Outcome of a verification; everything but ``VALID`` is a failure."""

    VALID = "valid"
    BAD_SIGNATURE = "bad-signature"
    UNTRUSTED = "untrusted"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation-unknown"
    WRONG_USAGE = "wrong-usage"
    ADDRESS_MISMATCH = "address-mismatch"
    MALFORMED = "malformed"


class SignerCredential(Protocol):
    """What signing and decryption need: a certificate, its key, its chain.

    :class:`Credential` and :class:`mssante.crypto.testpki.Issued` both fit.
    """

    @property
    def cert(self) -> x509.Certificate: ...
    @property
    def key(self) -> PrivateKey: ...
    @property
    def chain(self) -> tuple[x509.Certificate, ...]: ...


@dataclass(frozen=True, slots=True)
class Credential:
    """A certificate with its private key and the intermediates to send."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_pem(
        cls,
        cert_pem: bytes,
        key_pem: bytes,
        chain_pem: bytes = b"",
        *,
        password: bytes | None = None,
    ) -> Credential:
        """Load a credential; raises ``MalformedError`` or ``UnsupportedError``."""
        cert = load_certificate(cert_pem)
        key = load_private_key(key_pem, password=password)
        chain = load_certificates(chain_pem) if chain_pem.strip() else ()
        return cls(cert, key, chain)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustStore:
    """Trust anchors, known intermediates and CRLs for path validation.

    ``revocation_mode`` is pyhanko-certvalidator's: ``hard-fail`` (default)
    refuses a certificate whose CRL distribution point has no matching CRL in
    ``crls``; ``soft-fail`` accepts it; ``require`` wants revocation data for
    every certificate.
    """

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    crls: tuple[bytes, ...] = ()
    revocation_mode: RevocationMode = "hard-fail"
    # asn1crypto forms, parsed once: a national CRL runs to megabytes.
    _anchors: tuple[asn1_x509.Certificate, ...] = field(
        init=False, repr=False, compare=False
    )
    _others: tuple[asn1_x509.Certificate, ...] = field(
        init=False, repr=False, compare=False
    )
    _crls: tuple[asn1_crl.CertificateList, ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        """Raises ``MalformedError`` for a CRL that is not DER at all."""
        try:
            crls = tuple(asn1_crl.CertificateList.load(c) for c in self.crls)
        except ValueError as exc:
            raise MalformedError(f"not a DER CRL: {exc}") from exc
        object.__setattr__(self, "_anchors", tuple(_asn1(c) for c in self.roots))
        object.__setattr__(self, "_others", tuple(_asn1(c) for c in self.intermediates))
        object.__setattr__(self, "_crls", crls)

    @classmethod
    def from_pem(
        cls,
        roots_pem: bytes,
        intermediates_pem: bytes = b"",
        crls_der: Iterable[bytes] = (),
        *,
        revocation_mode: RevocationMode = "hard-fail",
    ) -> TrustStore:
        return cls(
            roots=load_certificates(roots_pem),
            intermediates=load_certificates(intermediates_pem)
            if intermediates_pem.strip()
            else (),
            crls=tuple(crls_der),
            revocation_mode=revocation_mode,
        )


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate from PEM or DER; raises ``MalformedError``."""
    try:
        if PEM_CERT_MARKER in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise MalformedError(f"not a certificate: {exc}") from exc


def load_certificates(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM bundle (at least one); raises ``MalformedError``."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise MalformedError(f"not a PEM certificate bundle: {exc}") from exc
    return tuple(certs)


def load_private_key(pem: bytes, *, password: bytes | None = None) -> PrivateKey:
    """An RSA or EC private key from PEM or DER (PKCS#8 or traditional)."""
    try:
        if b"-----BEGIN" in pem:
            key = serialization.load_pem_private_key(pem, password=password)
        else:
            key = serialization.load_der_private_key(pem, password=password)
    except (ValueError, TypeError) as exc:
        raise MalformedError(f"not a private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise UnsupportedError(f"key type {type(key).__name__} outside the profile")
    return key


def certificate_addresses(cert: x509.Certificate) -> tuple[str, ...]:
    """The e-mail addresses a certificate speaks for, lowercased.

    RFC 8550 §3: rfc822Name entries of subjectAltName; the legacy
    emailAddress attribute of the subject is read too (RFC 8550 §3 allows
    receivers to honour it).
    """
    found: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        found += san.value.get_values_for_type(x509.RFC822Name)
    found += [
        str(a.value)
        for a in cert.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)
    ]
    return tuple(a.lower() for a in found)


def _run_to_completion(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends; pyhanko's API is async-only."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: _T = done.value
        return result
    coro.close()
    raise CryptoError("certificate validation tried to wait for I/O")


def _asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def validate_smime_certificate(
    cert: x509.Certificate,
    trust: TrustStore,
    *,
    at: datetime,
    extra: Iterable[x509.Certificate] = (),
    purpose: Literal["sign", "encrypt"] = "sign",
) -> tuple[Reason, str]:
    """Validate ``cert`` for S/MIME at ``at`` against ``trust``.

    Args:
        cert: the end-entity certificate.
        trust: anchors, intermediates, CRLs.
        at: the validation moment (aware datetime).
        extra: more candidate intermediates (those carried by the message).
        purpose: ``sign`` wants digitalSignature or nonRepudiation;
            ``encrypt`` wants keyEncipherment.

    Returns:
        ``(Reason.VALID, "")`` or the failure reason with pyhanko's text.
    """
    try:
        # A fresh context per call: pyhanko caches revocation results in it.
        context = ValidationContext(
            trust_roots=list(trust._anchors),
            other_certs=[*trust._others, *(_asn1(c) for c in extra)],
            crls=list(trust._crls),
            moment=at,
            allow_fetching=False,
            revocation_mode=trust.revocation_mode,
        )
        leaf = _asn1(cert)
        validator = CertificateValidator(leaf, validation_context=context)
        _run_to_completion(validator.async_validate_path())
    except pv_errors.RevokedError as exc:
        return Reason.REVOKED, str(exc)
    except (pv_errors.ExpiredError, pv_errors.NotYetValidError) as exc:
        return Reason.EXPIRED, str(exc)
    except pv_errors.InsufficientRevinfoError as exc:
        return Reason.REVOCATION_UNKNOWN, str(exc)
    except (pv_errors.PathError, pv_errors.ValidationError) as exc:
        return Reason.UNTRUSTED, str(exc)
    except ValueError as exc:  # asn1crypto on a malformed CRL or extension
        return Reason.MALFORMED, str(exc)
    # RFC 8550 §4.4.4: if extendedKeyUsage is present it must allow
    # id-kp-emailProtection.
    eku = leaf.extended_key_usage_value
    if eku is not None and "email_protection" not in eku.native:
        return (
            Reason.WRONG_USAGE,
            f"extended key usage {eku.native} lacks emailProtection",
        )
    # RFC 8550 §4.4.2: the key usage bits must allow the operation.
    ku = leaf.key_usage_value
    if ku is not None:
        bits = set(ku.native)
        wanted = (
            {"digital_signature", "non_repudiation"}
            if purpose == "sign"
            else {"key_encipherment"}
        )
        if not bits & wanted:
            return Reason.WRONG_USAGE, f"key usage {sorted(bits)} lacks {purpose}"
    return Reason.VALID, ""
