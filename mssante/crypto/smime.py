"""S/MIME 4.0 (RFC 8551) framing: sign, encrypt, verify, decrypt and unwrap messages.

Owns the MIME side of S/MIME: ``multipart/signed`` (RFC 1847, RFC 8551
§3.5.3), ``application/pkcs7-mime`` with ``smime-type`` signed-data,
enveloped-data and authEnveloped-data (RFC 8551 §3.2, §3.4), and the order of
layers (sign, then encrypt; unwrap in reverse). The CMS inside is
:mod:`.cms`'s job.

Every public function takes a whole RFC 5322 message or a bare MIME entity.
Header fields that are not ``Content-*`` (From, To, Subject, Message-ID...)
stay outside the protection, as RFC 8551 §3.1 describes: they are split off
before the entity is protected and put back on the result
(:func:`split_message`, :func:`join_message`).

What must stay true:

- pure: bytes in, bytes out, no I/O, time only from ``at``;
- the entity is canonicalised to CRLF line ends before it is signed or
  encrypted (RFC 8551 §3.1.1), and verification hashes the first part of a
  ``multipart/signed`` exactly as received, after the same canonicalisation;
- parsing failures raise :class:`MalformedError`; :func:`verify` and the
  verification inside :func:`unwrap` return a ``Verification`` instead of
  raising.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mssante.crypto._errors import DecryptionError, MalformedError
from mssante.crypto._mime import (
    base64_lines,
    canonicalize,
    decode_body,
    headers_of,
    join_message,
    mime_type,
    new_boundary,
    split_header_block,
    split_message,
    two_parts,
)
from mssante.crypto.certs import Reason, SignerCredential, TrustStore
from mssante.crypto.cms import (
    Recipient,
    SignatureScheme,
    Verification,
    content_type_of,
    decrypt_envelope,
    encrypt_envelope,
    sign_data,
    verify_signed_data,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from email.message import Message

    from cryptography import x509

__all__ = [
    "Kind",
    "Unwrapped",
    "canonicalize",
    "decrypt",
    "encrypt",
    "join_message",
    "kind_of",
    "sign",
    "sign_and_encrypt",
    "split_message",
    "unwrap",
    "verify",
]

MAX_LAYERS: Final = 4  # sign + encrypt + a triple wrap (RFC 8551 §3.7) + slack
_SMIME_TYPES: Final = {
    "signed_data": b"signed-data",
    "enveloped_data": b"enveloped-data",
    "authenticated_enveloped_data": b"authEnveloped-data",
}
_PKCS7_MIME: Final = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_PKCS7_SIG: Final = frozenset(
    {"application/pkcs7-signature", "application/x-pkcs7-signature"}
)


class Kind(enum.Enum):
    """What protection the outermost layer of a message carries."""

    PLAIN = "plain"
    SIGNED = "signed"  # multipart/signed
    SIGNED_OPAQUE = "signed-opaque"  # application/pkcs7-mime; signed-data
    ENVELOPED = "enveloped"  # EnvelopedData (AES-CBC)
    AUTH_ENVELOPED = "auth-enveloped"  # AuthEnvelopedData (AES-GCM)


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """What :func:`unwrap` found.

    ``message`` is the innermost content with the outer header fields put
    back; ``encrypted`` says whether a layer was an envelope; ``verification``
    is ``None`` for an unsigned message.
    """

    message: bytes
    encrypted: bool
    verification: Verification | None


# -- MIME plumbing ----------------------------------------------------------------


def _pkcs7_mime(der: bytes) -> bytes:
    smime_type = _SMIME_TYPES[content_type_of(der)]
    # RFC 8551 §3.2.1-3.2.2: name and smime-type parameters.
    head = (
        b'Content-Type: application/pkcs7-mime; smime-type=%s; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
    ) % smime_type
    return head + base64_lines(der)


def kind_of(message: bytes) -> Kind:
    """The protection of the outermost layer; raises ``MalformedError``."""
    _, entity = split_message(message)
    block, body = split_header_block(entity)
    return _kind(headers_of(block), body)


def _kind(headers: Message, body: bytes) -> Kind:
    mime = mime_type(headers)
    if mime == "multipart/signed":
        return Kind.SIGNED
    if mime not in _PKCS7_MIME:
        return Kind.PLAIN
    cms_type = content_type_of(decode_body(headers, body))
    return {
        "signed_data": Kind.SIGNED_OPAQUE,
        "enveloped_data": Kind.ENVELOPED,
        "authenticated_enveloped_data": Kind.AUTH_ENVELOPED,
    }[cms_type]


def _signed_parts(headers: Message, body: bytes) -> tuple[bytes, bytes]:
    """The signed entity and the DER signature of a multipart/signed body."""
    # RFC 1847 §2.1: the first part is the signed content, as is.
    signed, signature_entity = two_parts(headers, body)
    sig_block, sig_body = split_header_block(signature_entity)
    sig_headers = headers_of(sig_block)
    if mime_type(sig_headers) not in _PKCS7_SIG:
        raise MalformedError("second part is not application/pkcs7-signature")
    return signed, decode_body(sig_headers, sig_body)


# -- public operations ----------------------------------------------------------


def sign(
    message: bytes,
    signer: SignerCredential,
    *,
    at: datetime,
    detached: bool = True,
    scheme: SignatureScheme = SignatureScheme.PKCS1V15,
) -> bytes:
    """Sign a message: ``multipart/signed`` (default) or opaque signed-data.

    Args:
        message: an RFC 5322 message or a MIME entity.
        signer: the author's (or the operator's, for sealing) credential.
        at: the signingTime.
        detached: ``multipart/signed``, readable without S/MIME support;
            ``False`` gives ``application/pkcs7-mime; smime-type=signed-data``.
        scheme: RSA PKCS#1 v1.5 or PSS; EC keys sign with ECDSA.

    Raises:
        MalformedError: the message header does not parse.
    """
    outer, entity = split_message(message)
    if not detached:
        der = sign_data(entity, signer, at=at, detached=False, scheme=scheme)
        return join_message(outer, _pkcs7_mime(der))
    der = sign_data(entity, signer, at=at, detached=True, scheme=scheme)
    boundary = new_boundary()
    # RFC 8551 §3.5.3.2: micalg for SHA-256 is "sha-256".
    head = (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
        b' micalg=sha-256; boundary="%s"\r\n\r\n'
        b"This is a cryptographically signed message in MIME format.\r\n\r\n"
        b"--%s\r\n"
    ) % (boundary, boundary)
    signature_head = (
        b"\r\n--%s\r\n"
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
    ) % boundary
    tail = b"\r\n--%s--\r\n" % boundary
    # one join: the entity may be megabytes, copy it once
    signed = b"".join((head, entity, signature_head, base64_lines(der), tail))
    return join_message(outer, signed)


def encrypt(
    message: bytes, recipients: Sequence[Recipient | x509.Certificate]
) -> bytes:
    """Encrypt a message to its recipients (include the sender for the sent copy).

    ``authEnveloped-data`` (AES-256-GCM) when every recipient is MODERN,
    ``enveloped-data`` (AES-256-CBC) otherwise; see :mod:`.cms`.

    Raises:
        MalformedError: the message header does not parse.
        UnsupportedError: no recipient, or a non-RSA recipient key.
    """
    outer, entity = split_message(message)
    return join_message(outer, _pkcs7_mime(encrypt_envelope(entity, recipients)))


def sign_and_encrypt(
    message: bytes,
    signer: SignerCredential,
    recipients: Sequence[Recipient | x509.Certificate],
    *,
    at: datetime,
    scheme: SignatureScheme = SignatureScheme.PKCS1V15,
) -> bytes:
    """Sign (``multipart/signed``) then encrypt (RFC 8551 §3.7)."""
    outer, entity = split_message(message)
    signed = sign(entity, signer, at=at, scheme=scheme)
    return join_message(outer, _pkcs7_mime(encrypt_envelope(signed, recipients)))


def verify(
    message: bytes,
    trust: TrustStore,
    *,
    at: datetime,
    sender: str | None = None,
    certificates: Sequence[x509.Certificate] = (),
) -> Verification:
    """Verify a signed message (``multipart/signed`` or opaque signed-data).

    Returns a :class:`Verification` whose ``content`` is the signed entity;
    a message that is not signed, or does not parse, gives ``MALFORMED``.
    See :func:`mssante.crypto.cms.verify_signed_data` for the checks.
    """
    try:
        _, entity = split_message(message)
        block, body = split_header_block(entity)
        headers = headers_of(block)
        kind = _kind(headers, body)
        if kind is Kind.SIGNED:
            content, der = _signed_parts(headers, body)
            return verify_signed_data(
                der,
                trust,
                at=at,
                content=content,
                sender=sender,
                certificates=certificates,
            )
        if kind is Kind.SIGNED_OPAQUE:
            return verify_signed_data(
                decode_body(headers, body),
                trust,
                at=at,
                sender=sender,
                certificates=certificates,
            )
    except MalformedError as exc:
        return Verification(Reason.MALFORMED, str(exc))
    return Verification(Reason.MALFORMED, f"not a signed message ({kind.value})")


def decrypt(message: bytes, recipient: SignerCredential) -> bytes:
    """Decrypt an enveloped message; the inner entity with outer fields back.

    Raises:
        MalformedError: not an S/MIME envelope.
        DecryptionError: not for this recipient, or does not check out.
        UnsupportedError: an algorithm outside the profile.
    """
    outer, entity = split_message(message)
    block, body = split_header_block(entity)
    headers = headers_of(block)
    if _kind(headers, body) not in {Kind.ENVELOPED, Kind.AUTH_ENVELOPED}:
        raise MalformedError("not an S/MIME envelope")
    inner = decrypt_envelope(decode_body(headers, body), recipient)
    return join_message(outer, inner)


def unwrap(
    message: bytes,
    trust: TrustStore,
    *,
    at: datetime,
    recipient: SignerCredential | None = None,
    sender: str | None = None,
    certificates: Sequence[x509.Certificate] = (),
) -> Unwrapped:
    """Peel every S/MIME layer: decrypt with ``recipient``, verify signatures.

    The innermost signature's verification is returned (with ``sender`` and
    ``trust`` as for :func:`verify`); a failed verification stops the
    unwrapping there and its result is returned with the signed content.

    Raises:
        MalformedError: a layer does not parse, or more than MAX_LAYERS.
        DecryptionError: an envelope and no ``recipient``, or it does not open.
        UnsupportedError: an algorithm outside the profile.
    """
    outer, entity = split_message(message)
    encrypted = False
    verification: Verification | None = None
    for _ in range(MAX_LAYERS):
        block, body = split_header_block(entity)
        headers = headers_of(block)
        kind = _kind(headers, body)
        if kind is Kind.PLAIN:
            return Unwrapped(join_message(outer, entity), encrypted, verification)
        if kind in {Kind.ENVELOPED, Kind.AUTH_ENVELOPED}:
            if recipient is None:
                raise DecryptionError("encrypted message and no key to open it")
            entity = canonicalize(
                decrypt_envelope(decode_body(headers, body), recipient)
            )
            encrypted = True
            continue
        verification = verify(
            entity, trust, at=at, sender=sender, certificates=certificates
        )
        _, entity = split_message(verification.content)
        if not verification.ok:
            break
    else:
        raise MalformedError(f"more than {MAX_LAYERS} S/MIME layers")
    return Unwrapped(join_message(outer, entity), encrypted, verification)
