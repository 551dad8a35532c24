"""CMS (RFC 5652) SignedData, EnvelopedData and AuthEnvelopedData, DER in and out.

Owns the ASN.1 side of S/MIME: building and checking SignedData, building and
opening EnvelopedData (RFC 5652 §6) and AuthEnvelopedData (RFC 5083 with
AES-GCM, RFC 5084). Structures come from ``asn1crypto.cms``; every
cryptographic operation is a ``cryptography`` primitive (RSA PKCS#1 v1.5 and
PSS, ECDSA, RSA-OAEP, AES-GCM, AES-CBC). MIME framing is :mod:`.smime`'s job.

Profile (DESIGN §6, RFC 8551 §2):

- signatures: SHA-256 digest; RSA PKCS#1 v1.5, RSA-PSS (MGF1-SHA-256, salt
  32) or ECDSA P-256; signed attributes contentType, signingTime (the
  caller's ``at``), messageDigest and SMIMECapabilities;
- encryption: a fresh AES-256 key per message, wrapped for each recipient
  with RSA-OAEP-SHA-256 (``MODERN``) or RSA PKCS#1 v1.5 (``COMPAT``), chosen
  per recipient; content in AES-256-GCM AuthEnvelopedData when every
  recipient is ``MODERN``, else AES-256-CBC EnvelopedData.

What must stay true:

- pure: bytes in, bytes out; no I/O; time only from ``at``;
- parsing failures raise :class:`MalformedError`; decryption failures raise
  :class:`DecryptionError` with one message whatever went wrong (no padding
  oracle); :func:`verify_signed_data` never raises for a bad input, it
  returns a :class:`Verification`;
- accepted on input: SHA-256/384/512 digests; SHA-1 and MD5 are refused.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mssante.crypto._errors import (
    CryptoError,
    DecryptionError,
    MalformedError,
    UnsupportedError,
)
from mssante.crypto.certs import (
    Reason,
    SignerCredential,
    TrustStore,
    certificate_addresses,
    validate_smime_certificate,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime

__all__ = [
    "Recipient",
    "RecipientProfile",
    "SignatureScheme",
    "Verification",
    "content_type_of",
    "decrypt_envelope",
    "encrypt_envelope",
    "sign_data",
    "verify_signed_data",
]

AES256_KEY_BYTES: Final = 32
GCM_NONCE_BYTES: Final = 12  # RFC 5084 §3.2: 12 octets recommended
GCM_TAG_BYTES: Final = 16  # RFC 5084 §3.2: aes-ICVlen 16 for the full tag
PSS_SALT_BYTES: Final = 32  # RFC 4055 §3.1: salt length = hash length
_DIGESTS: Final[dict[str, hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
# What asn1crypto and cryptography raise on malformed input, parsed lazily.
_PARSE_ERRORS: Final = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
)
_CONTENT_TYPES: Final = frozenset(
    {"signed_data", "enveloped_data", "authenticated_enveloped_data"}
)


class SignatureScheme(enum.Enum):
    """RSA signature padding; EC keys always sign with ECDSA."""

    PKCS1V15 = "pkcs1v15"
    PSS = "pss"


class RecipientProfile(enum.Enum):
    """Key transport (and content cipher) a recipient's software supports."""

    MODERN = "modern"  # RSA-OAEP-SHA-256; AES-256-GCM when all are MODERN
    COMPAT = "compat"  # RSA PKCS#1 v1.5; forces AES-256-CBC for the message


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient certificate and the profile its software supports."""

    cert: x509.Certificate
    profile: RecipientProfile = RecipientProfile.MODERN


@dataclass(frozen=True, slots=True)
class Verification:
    """The result of checking a signature; ``ok`` only when ``reason`` is VALID.

    ``content`` is the signed content (empty when the structure did not
    parse); ``signer`` and ``signing_time`` are set whenever they could be
    read, even on failure, for the audit trail.
    """

    reason: Reason
    detail: str = ""
    content: bytes = b""
    signer: x509.Certificate | None = None
    signing_time: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.reason is Reason.VALID


class _GcmParams(core.Sequence):  # type: ignore[misc]
    # RFC 5084 §3.2: GCMParameters
    _fields = [  # noqa: RUF012 - asn1crypto's declaration style
        ("aes_nonce", core.OctetString),
        ("aes_icvlen", core.Integer, {"default": 12}),
    ]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    parsed = asn1_x509.Certificate.load(_der(cert))
    return cms.IssuerAndSerialNumber(
        {"issuer": parsed.issuer, "serial_number": parsed.serial_number}
    )


def _load_content_info(blob: bytes) -> cms.ContentInfo:
    try:
        info = cms.ContentInfo.load(blob, strict=True)
        content_type = info["content_type"].native
        if content_type not in _CONTENT_TYPES:
            raise MalformedError(f"CMS content type {content_type!r} not handled")
    except MalformedError:
        raise
    except _PARSE_ERRORS as exc:
        raise MalformedError(f"not a CMS ContentInfo: {exc}") from exc
    return info


def content_type_of(blob: bytes) -> str:
    """``signed_data``, ``enveloped_data`` or ``authenticated_enveloped_data``.

    Raises:
        MalformedError: not a CMS ContentInfo of those types.
    """
    return str(_load_content_info(blob)["content_type"].native)


# -- SignedData ------------------------------------------------------------------


def _smime_capabilities() -> cms.SMIMECapabilites:
    # RFC 8551 §2.5.2: strongest first.
    return cms.SMIMECapabilites(
        [
            {"capability_id": "2.16.840.1.101.3.4.1.46"},  # aes256-GCM
            {"capability_id": "2.16.840.1.101.3.4.1.42"},  # aes256-CBC
            {"capability_id": "1.2.840.113549.1.1.7"},  # RSAES-OAEP
        ]
    )


def sign_data(
    content: bytes,
    signer: SignerCredential,
    *,
    at: datetime,
    detached: bool = True,
    scheme: SignatureScheme = SignatureScheme.PKCS1V15,
) -> bytes:
    """Build a DER ContentInfo holding SignedData over ``content``.

    Args:
        content: the exact bytes to sign (for S/MIME, the canonical MIME
            entity).
        signer: certificate, key and intermediates (all are embedded).
        at: the signingTime attribute (aware datetime).
        detached: leave eContent out (``multipart/signed``).
        scheme: RSA padding; ignored for EC keys.

    Raises:
        UnsupportedError: the key is neither RSA nor EC P-256/384.
    """
    key = signer.key
    digest = hashlib.sha256(content).digest()
    # RFC 5652 §11.1-11.3, RFC 8551 §2.5: signed attributes.
    signed_attrs = cms.CMSAttributes(
        [
            {"type": "content_type", "values": ["data"]},
            {"type": "signing_time", "values": [cms.Time({"utc_time": at})]},
            {"type": "message_digest", "values": [digest]},
            {"type": "smime_capabilities", "values": [_smime_capabilities()]},
        ]
    )
    # RFC 5652 §5.4: the signature covers the DER of the SET OF attributes.
    to_sign = signed_attrs.dump()
    if isinstance(key, rsa.RSAPrivateKey):
        if scheme is SignatureScheme.PSS:
            signature = key.sign(
                to_sign,
                asym_padding.PSS(
                    mgf=asym_padding.MGF1(hashes.SHA256()),
                    salt_length=PSS_SALT_BYTES,
                ),
                hashes.SHA256(),
            )
            # RFC 4056 §2: RSASSA-PSS-params with SHA-256 explicit.
            sig_alg = algos.SignedDigestAlgorithm(
                {
                    "algorithm": "rsassa_pss",
                    "parameters": algos.RSASSAPSSParams(
                        {
                            "hash_algorithm": {"algorithm": "sha256"},
                            "mask_gen_algorithm": {
                                "algorithm": "mgf1",
                                "parameters": {"algorithm": "sha256"},
                            },
                            "salt_length": PSS_SALT_BYTES,
                        }
                    ),
                }
            )
        else:
            signature = key.sign(to_sign, asym_padding.PKCS1v15(), hashes.SHA256())
            # RFC 3370 §3.2: rsaEncryption as the signature algorithm.
            sig_alg = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"})
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(to_sign, ec.ECDSA(hashes.SHA256()))
        # RFC 5753 §2.1.1: ecdsa-with-SHA256.
        sig_alg = algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})
    else:  # pragma: no cover - SignerCredential's type rules it out
        raise UnsupportedError(f"key type {type(key).__name__}")
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {"issuer_and_serial_number": _issuer_and_serial(signer.cert)}
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": signed_attrs,
            "signature_algorithm": sig_alg,
            "signature": signature,
        }
    )
    certs = [
        cms.CertificateChoices({"certificate": asn1_x509.Certificate.load(_der(c))})
        for c in (signer.cert, *signer.chain)
    ]
    encap: dict[str, object] = {"content_type": "data"}
    if not detached:
        encap["content"] = content
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": encap,
            "certificates": certs,
            "signer_infos": [signer_info],
        }
    )
    info = cms.ContentInfo({"content_type": "signed_data", "content": signed})
    dumped: bytes = info.dump()
    return dumped


def _embedded_certificates(signed: cms.SignedData) -> list[x509.Certificate]:
    return [
        x509.load_der_x509_certificate(choice.chosen.dump())
        for choice in signed["certificates"] or []
        if choice.name == "certificate"
    ]


def _find_signer(
    sid: cms.SignerIdentifier, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    for cert in candidates:
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            parsed = asn1_x509.Certificate.load(_der(cert))
            if (
                parsed.issuer == ias["issuer"]
                and parsed.serial_number == ias["serial_number"].native
            ):
                return cert
        else:
            try:
                ski = cert.extensions.get_extension_for_class(
                    x509.SubjectKeyIdentifier
                ).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == sid.chosen.native:
                return cert
    return None


def _check_signature(
    cert: x509.Certificate, signer_info: cms.SignerInfo, data: bytes, digest: str
) -> str:
    """Return "" when the signature holds, else why not."""
    algo = signer_info["signature_algorithm"]
    name = algo.signature_algo
    signature = signer_info["signature"].native
    public = cert.public_key()
    hash_alg = _DIGESTS[digest]
    try:
        if name == "rsassa_pkcs1v15" and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, asym_padding.PKCS1v15(), hash_alg)
        elif name == "rsassa_pss" and isinstance(public, rsa.RSAPublicKey):
            params = algo["parameters"]
            pss_hash = params["hash_algorithm"]["algorithm"].native
            mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
            if pss_hash not in _DIGESTS or mgf_hash not in _DIGESTS:
                return f"PSS hash {pss_hash}/{mgf_hash} outside the profile"
            public.verify(
                signature,
                data,
                asym_padding.PSS(
                    mgf=asym_padding.MGF1(_DIGESTS[mgf_hash]),
                    salt_length=params["salt_length"].native,
                ),
                _DIGESTS[pss_hash],
            )
        elif name == "ecdsa" and isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hash_alg))
        else:
            return f"signature algorithm {name} does not fit the signer's key"
    except InvalidSignature:
        return "signature does not verify"
    return ""


def _signed_attr(signer_info: cms.SignerInfo, name: str) -> list[object]:
    values: list[object] = []
    for attr in signer_info["signed_attrs"]:
        if attr["type"].native == name:
            values.extend(attr["values"])
    return values


def verify_signed_data(
    blob: bytes,
    trust: TrustStore,
    *,
    at: datetime,
    content: bytes | None = None,
    sender: str | None = None,
    certificates: Sequence[x509.Certificate] = (),
) -> Verification:
    """Check a SignedData: signature, signer's path, usage, validity, address.

    Args:
        blob: DER ContentInfo (SignedData).
        trust: anchors, intermediates and CRLs.
        at: the moment the certificate path is validated at.
        content: the detached content; ``None`` when it is encapsulated.
        sender: the mailbox the message claims to come from; when given, the
            signer's certificate must name it (RFC 8550 §3).
        certificates: more candidate signer certificates (e.g. from the
            directory) besides those the message carries.

    Returns:
        A :class:`Verification`; never raises for bad input. Checks run in
        order: structure (MALFORMED), signature and digest (BAD_SIGNATURE;
        UNTRUSTED when no certificate matches the signer id), path
        (UNTRUSTED, EXPIRED, REVOKED, REVOCATION_UNKNOWN, WRONG_USAGE),
        signing time inside the certificate's validity (EXPIRED), address
        (ADDRESS_MISMATCH).
    """
    try:
        return _verify_signed_data(
            blob,
            trust,
            at=at,
            content=content,
            sender=sender,
            certificates=certificates,
        )
    except (*_PARSE_ERRORS, CryptoError) as exc:  # lazily parsed fields
        return Verification(Reason.MALFORMED, f"bad SignedData: {exc}")


def _verify_signed_data(
    blob: bytes,
    trust: TrustStore,
    *,
    at: datetime,
    content: bytes | None = None,
    sender: str | None = None,
    certificates: Sequence[x509.Certificate] = (),
) -> Verification:
    try:
        info = _load_content_info(blob)
        if info["content_type"].native != "signed_data":
            return Verification(Reason.MALFORMED, "not a SignedData")
        signed = info["content"]
        encap = signed["encap_content_info"]
        if content is None:
            content = encap["content"].native
            if content is None:
                return Verification(Reason.MALFORMED, "detached signature, no content")
        elif encap["content"].native is not None:
            return Verification(Reason.MALFORMED, "content both detached and embedded")
        signer_infos = list(signed["signer_infos"])
        if len(signer_infos) != 1:
            return Verification(
                Reason.MALFORMED, f"{len(signer_infos)} signers; one expected"
            )
        signer_info = signer_infos[0]
        embedded = _embedded_certificates(signed)
        signer = _find_signer(signer_info["sid"], [*embedded, *certificates])
        digest_name = signer_info["digest_algorithm"]["algorithm"].native
        has_attrs = bool(signer_info["signed_attrs"])
        times = _signed_attr(signer_info, "signing_time") if has_attrs else []
        signing_time = times[0].native if times else None  # type: ignore[attr-defined]
        econtent_type = encap["content_type"].native
        digests = _signed_attr(signer_info, "message_digest") if has_attrs else []
        ctypes = _signed_attr(signer_info, "content_type") if has_attrs else []
        # RFC 5652 §5.4: the signature covers the attributes' DER with the SET
        # tag, or the content itself when there are none.
        to_verify = signer_info["signed_attrs"].untag().dump() if has_attrs else None
    except MalformedError as exc:
        return Verification(Reason.MALFORMED, str(exc))
    except _PARSE_ERRORS as exc:
        return Verification(Reason.MALFORMED, f"bad SignedData: {exc}")
    assert isinstance(content, bytes)  # noqa: S101 - narrowed above
    result = Verification(Reason.VALID, "", content, signer, signing_time)
    if digest_name not in _DIGESTS:
        return _with(result, Reason.BAD_SIGNATURE, f"digest {digest_name} refused")
    if signer is None:
        return _with(result, Reason.UNTRUSTED, "no certificate matches the signer")
    actual = hashlib.new(digest_name, content).digest()
    if has_attrs:
        # RFC 5652 §5.3, §11.1-11.2: exactly one contentType equal to
        # eContentType and one messageDigest equal to the content's digest.
        if len(digests) != 1 or len(ctypes) != 1:
            return _with(result, Reason.MALFORMED, "messageDigest/contentType count")
        if ctypes[0].native != econtent_type:  # type: ignore[attr-defined]
            return _with(result, Reason.BAD_SIGNATURE, "contentType mismatch")
        if not hmac.compare_digest(digests[0].native, actual):  # type: ignore[attr-defined]
            return _with(result, Reason.BAD_SIGNATURE, "content digest mismatch")
    why = _check_signature(
        signer, signer_info, content if to_verify is None else to_verify, digest_name
    )
    if why:
        return _with(result, Reason.BAD_SIGNATURE, why)
    reason, detail = validate_smime_certificate(
        signer, trust, at=at, extra=embedded, purpose="sign"
    )
    if reason is not Reason.VALID:
        return _with(result, reason, detail)
    if signing_time is not None and not (
        signer.not_valid_before_utc <= signing_time <= signer.not_valid_after_utc
    ):
        return _with(
            result, Reason.EXPIRED, "signing time outside certificate validity"
        )
    if sender is not None and sender.lower() not in certificate_addresses(signer):
        return _with(
            result, Reason.ADDRESS_MISMATCH, "sender address not in the certificate"
        )
    return result


def _with(result: Verification, reason: Reason, detail: str) -> Verification:
    return Verification(
        reason, detail, result.content, result.signer, result.signing_time
    )


# -- EnvelopedData / AuthEnvelopedData --------------------------------------------


def _key_transport(recipient: Recipient, cek: bytes) -> cms.RecipientInfo:
    public = recipient.cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise UnsupportedError("key transport needs an RSA recipient certificate")
    if recipient.profile is RecipientProfile.MODERN:
        # RFC 8017 §7.1, RFC 4055 §4.1: RSAES-OAEP, SHA-256 and MGF1-SHA-256.
        encrypted = public.encrypt(
            cek,
            asym_padding.OAEP(
                mgf=asym_padding.MGF1(hashes.SHA256()),
                algorithm=hashes.SHA256(),
                label=None,
            ),
        )
        alg = cms.KeyEncryptionAlgorithm(
            {
                "algorithm": "rsaes_oaep",
                "parameters": algos.RSAESOAEPParams(
                    {
                        "hash_algorithm": {"algorithm": "sha256"},
                        "mask_gen_algorithm": {
                            "algorithm": "mgf1",
                            "parameters": {"algorithm": "sha256"},
                        },
                    }
                ),
            }
        )
    else:
        # RFC 3370 §4.2.1: rsaEncryption (PKCS#1 v1.5) for older peers.
        encrypted = public.encrypt(cek, asym_padding.PKCS1v15())
        alg = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
    # RFC 5652 §6.2.1: KeyTransRecipientInfo, version 0 with issuerAndSerial.
    return cms.RecipientInfo(
        {
            "ktri": {
                "version": "v0",
                "rid": {"issuer_and_serial_number": _issuer_and_serial(recipient.cert)},
                "key_encryption_algorithm": alg,
                "encrypted_key": encrypted,
            }
        }
    )


def encrypt_envelope(
    content: bytes, recipients: Sequence[Recipient | x509.Certificate]
) -> bytes:
    """Encrypt ``content`` to every recipient; DER ContentInfo out.

    AES-256-GCM AuthEnvelopedData when every recipient is ``MODERN``,
    AES-256-CBC EnvelopedData otherwise. Include the sender to keep a
    readable sent copy.

    Raises:
        UnsupportedError: no recipient, or a recipient key that is not RSA.
    """
    if not recipients:
        raise UnsupportedError("no recipient to encrypt to")
    listed = [r if isinstance(r, Recipient) else Recipient(r) for r in recipients]
    cek = secrets.token_bytes(AES256_KEY_BYTES)
    infos = [_key_transport(r, cek) for r in listed]
    if all(r.profile is RecipientProfile.MODERN for r in listed):
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)
        sealed = AESGCM(cek).encrypt(nonce, content, None)
        # RFC 5083 §2.1: the tag goes in mac, the ciphertext without it.
        ciphertext, tag = sealed[:-GCM_TAG_BYTES], sealed[-GCM_TAG_BYTES:]
        envelope = cms.AuthEnvelopedData(
            {
                "version": "v0",
                "recipient_infos": infos,
                "auth_encrypted_content_info": {
                    "content_type": "data",
                    "content_encryption_algorithm": {
                        "algorithm": "aes256_gcm",
                        "parameters": _GcmParams(
                            {"aes_nonce": nonce, "aes_icvlen": GCM_TAG_BYTES}
                        ),
                    },
                    "encrypted_content": ciphertext,
                },
                "mac": tag,
            }
        )
        info = cms.ContentInfo(
            {"content_type": "authenticated_enveloped_data", "content": envelope}
        )
    else:
        iv = secrets.token_bytes(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(content) + padder.finalize()
        encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padded) + encryptor.finalize()
        envelope = cms.EnvelopedData(
            {
                "version": "v0",  # RFC 5652 §6.1: only ktri v0, no originatorInfo
                "recipient_infos": infos,
                "encrypted_content_info": {
                    "content_type": "data",
                    "content_encryption_algorithm": {
                        "algorithm": "aes256_cbc",
                        "parameters": core.OctetString(iv),
                    },
                    "encrypted_content": ciphertext,
                },
            }
        )
        info = cms.ContentInfo({"content_type": "enveloped_data", "content": envelope})
    dumped: bytes = info.dump()
    return dumped


def _key_transport_padding(
    ktri: cms.KeyTransRecipientInfo,
) -> tuple[bytes, asym_padding.AsymmetricPadding]:
    """The encrypted key and its padding; raises MalformedError/UnsupportedError."""
    try:
        alg = ktri["key_encryption_algorithm"]
        encrypted: bytes = ktri["encrypted_key"].native
        name = alg["algorithm"].native
        if name == "rsaes_pkcs1v15":
            return encrypted, asym_padding.PKCS1v15()
        if name != "rsaes_oaep":
            raise UnsupportedError(f"key transport {name} outside the profile")
        params = alg["parameters"]
        oaep_hash = params["hash_algorithm"]["algorithm"].native
        mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
    except _PARSE_ERRORS as exc:
        raise MalformedError(f"bad recipient info: {exc}") from exc
    # RFC 8017 §A.2.1: SHA-1 is OAEP's default (older peers send it); it is
    # safe inside OAEP, unlike in signatures.
    digests = {**_DIGESTS, "sha1": hashes.SHA1()}  # noqa: S303
    if oaep_hash not in digests or mgf_hash not in digests:
        raise UnsupportedError(f"OAEP with {oaep_hash}/{mgf_hash}")
    return encrypted, asym_padding.OAEP(
        mgf=asym_padding.MGF1(digests[mgf_hash]),
        algorithm=digests[oaep_hash],
        label=None,
    )


def _unwrap_key(ktri: cms.KeyTransRecipientInfo, key: rsa.RSAPrivateKey) -> bytes:
    encrypted, pad = _key_transport_padding(ktri)
    try:
        return key.decrypt(encrypted, pad)
    except ValueError as exc:
        raise DecryptionError("cannot decrypt the message") from exc


def decrypt_envelope(blob: bytes, recipient: SignerCredential) -> bytes:
    """Open EnvelopedData or AuthEnvelopedData with the recipient's key.

    Raises:
        MalformedError: not a CMS envelope.
        DecryptionError: no RecipientInfo for this certificate, or the key,
            padding or GCM tag does not check out (one message for all).
        UnsupportedError: a key transport or cipher outside the profile.
    """
    info = _load_content_info(blob)
    content_type = info["content_type"].native
    if content_type == "signed_data":
        raise MalformedError("not an envelope: SignedData")
    key = recipient.key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UnsupportedError("decryption needs an RSA key")
    try:
        envelope = info["content"]
        authenticated = content_type == "authenticated_enveloped_data"
        eci = envelope[
            "auth_encrypted_content_info" if authenticated else "encrypted_content_info"
        ]
        ours = _issuer_and_serial(recipient.cert)
        ktri = None
        for ri in envelope["recipient_infos"]:
            if ri.name != "ktri":
                continue
            rid = ri.chosen["rid"]
            if (
                rid.name == "issuer_and_serial_number"
                and rid.chosen["issuer"] == ours["issuer"]
                and rid.chosen["serial_number"].native == ours["serial_number"].native
            ):
                ktri = ri.chosen
                break
        if ktri is None:
            raise DecryptionError("no recipient info for this certificate")
        alg = eci["content_encryption_algorithm"]
        cipher_name = alg["algorithm"].native
        ciphertext = eci["encrypted_content"].native
        if ciphertext is None:
            raise MalformedError("no encrypted content")
        tag = nonce = iv = aad = b""
        icvlen = 0
        if authenticated:
            tag = envelope["mac"].native
            params = _GcmParams.load(alg["parameters"].dump())
            nonce = params["aes_nonce"].native
            icvlen = params["aes_icvlen"].native
            if envelope["auth_attrs"]:
                aad = envelope["auth_attrs"].untag().dump()
        else:
            iv = alg["parameters"].native
    except (DecryptionError, MalformedError):
        raise
    except _PARSE_ERRORS as exc:
        raise MalformedError(f"bad envelope: {exc}") from exc
    cek = _unwrap_key(ktri, key)
    if authenticated:
        if cipher_name != "aes256_gcm" and cipher_name != "aes128_gcm":
            raise UnsupportedError(f"content cipher {cipher_name}")
        if icvlen != len(tag) or icvlen < 12:
            raise DecryptionError("cannot decrypt the message")
        try:
            # RFC 5083 §2.2: authAttrs, DER with the SET tag, are the AAD.
            return AESGCM(cek).decrypt(nonce, ciphertext + tag, aad or None)
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError("cannot decrypt the message") from exc
    if cipher_name not in {"aes256_cbc", "aes128_cbc"}:
        raise UnsupportedError(f"content cipher {cipher_name}")
    try:
        decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise DecryptionError("cannot decrypt the message") from exc
