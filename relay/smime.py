"""End-to-end protection applied by the relay: verify, seal, encrypt (DESIGN §6).

Owns the relay's use of :mod:`mssante.crypto`:

- **at acceptance** (``handle_DATA``): the S/MIME signature of a signed
  message is verified against the trust anchors, the CRLs and the sender's
  directory signature certificates; the result becomes the trace header
  ``X-MSSante-Signature`` and an audit record, and :func:`relay.policy.check_signature`
  decides what happens to the message;
- **at delivery** (``relay.queue.deliver``): each copy is sealed (an unsigned
  message of a local author is signed with the operator's credential, as
  ``multipart/signed`` so that clients without S/MIME still read it) and
  encrypted to the certificates the directory lists for the copy's mailbox
  (S/MIME), or to its OpenPGP key when the entry prefers OpenPGP. Both are
  configurable per peer domain (``[smime.peers."<domain>"]``).

What must stay true:

- fail closed: a signature the relay cannot check (revocation unknown, a
  crypto failure) is never accepted; a delivery whose directory lookup fails
  is retried, never stored unencrypted by default;
- a mailbox never receives content its owner's client cannot read: a copy is
  encrypted only to that mailbox's own certificates (the Sent copy to the
  sender's), only to certificates that validate for encryption now, and is
  left as it came otherwise (TLS and the at-rest encryption protect it);
- a message that is already signed is not sealed again, and one that is
  already encrypted (S/MIME or PGP/MIME) is not encrypted again;
- the ``X-MSSante-Signature`` field is the relay's own: any such field in a
  received message is removed before the relay writes its own;
- audit records carry addresses, reasons and codes, never content;
- CPU work (verification, signing, encryption) runs in threads, never on
  the event loop; the directory lookups a delivery needs are made on the
  event loop first (:meth:`RelaySmime.keys_for`).
"""

from __future__ import annotations

import dataclasses
import email.policy
import enum
import logging
import threading
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from directory.model import CertificateUsage, Mailbox
from mssante.crypto import (
    CryptoError,
    Kind,
    MalformedError,
    Reason,
    Recipient,
    RecipientProfile,
    TrustStore,
    Verification,
    certificate_addresses,
    kind_of,
    load_certificates,
    sign,
    validate_smime_certificate,
)
from mssante.crypto import encrypt as smime_encrypt
from mssante.crypto import verify as smime_verify
from mssante.crypto.certs import Credential
from relay.audit import AuditEvent
from relay.config import ConfigError, EncryptionProfile, RevocationMode

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime
    from email.message import Message
    from pathlib import Path

    from directory.model import Patient
    from directory.protocol import Directory
    from mssante.crypto.certs import RevocationMode as CertsRevocationMode
    from relay.audit import AuditTrail
    from relay.config import SmimeSettings
    from relay.queue.spool import Envelope

log = logging.getLogger("mssante.relay.smime")

SIGNATURE_HEADER: Final = "X-MSSante-Signature"
KEYRING_DIR_NAME: Final = "gnupg"
_SIGNED_PROTOCOLS: Final = frozenset(
    {"application/pkcs7-signature", "application/x-pkcs7-signature"}
)
_PKCS7_MIME: Final = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_ENCRYPTED_KINDS: Final = frozenset({Kind.ENVELOPED, Kind.AUTH_ENVELOPED})
_REVOCATION: Final[dict[RevocationMode, CertsRevocationMode]] = {
    RevocationMode.HARD_FAIL: "hard-fail",
    RevocationMode.SOFT_FAIL: "soft-fail",
    RevocationMode.REQUIRE: "require",
}
_PROFILES: Final = {
    EncryptionProfile.MODERN: RecipientProfile.MODERN,
    EncryptionProfile.COMPAT: RecipientProfile.COMPAT,
}


def may_be_smime_signed(headers: Message) -> bool:
    """Whether the top-level Content-Type announces an S/MIME signature.

    ``multipart/signed`` with the PKCS#7 protocol (RFC 8551 §3.5.3), or
    ``application/pkcs7-mime`` that is not declared enveloped (RFC 8551
    §3.2.2: smime-type is optional, so an undeclared one is decoded to find
    out). A PGP/MIME signature (RFC 3156) is not S/MIME and is left alone.
    """
    ctype = headers.get_content_type()
    if ctype == "multipart/signed":
        return str(headers.get_param("protocol", "")).lower() in _SIGNED_PROTOCOLS
    if ctype in _PKCS7_MIME:
        smime_type = str(headers.get_param("smime-type", "")).lower()
        return smime_type in {"", "signed-data"}
    return False


def strip_field(head: bytes, name: str) -> bytes:
    """The header section without any ``name`` field (folded lines included)."""
    lowered = name.lower().encode("ascii") + b":"
    if lowered not in head.lower():
        return head
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in {b" ", b"\t"} and line.strip():
            # RFC 5322 §2.2.3: a continuation line belongs to the field above.
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(lowered)
        if not dropping:
            kept.append(line)
    return b"".join(kept)


def signature_header(
    verification: Verification | None, signer: str, *, at: datetime, by: str
) -> str:
    """The trace field the recipient reads, without its line end."""
    when = at.isoformat(timespec="seconds")
    if verification is None:
        return f"{SIGNATURE_HEADER}: unchecked; at={when}; by={by}"
    if verification.ok:
        signed = (
            f"; signed={verification.signing_time.isoformat(timespec='seconds')}"
            if verification.signing_time is not None
            else ""
        )
        return (
            f"{SIGNATURE_HEADER}: verified; signer={signer}{signed}; at={when}; by={by}"
        )
    return (
        f"{SIGNATURE_HEADER}: failed; reason={verification.reason.value};"
        f" at={when}; by={by}"
    )


def _certificates(
    entry: Mailbox | Patient | None, usage: CertificateUsage
) -> tuple[x509.Certificate, ...]:
    if not isinstance(entry, Mailbox):
        return ()
    found: list[x509.Certificate] = []
    for cert in entry.certificates:
        if cert.usage is not usage:
            continue
        try:
            found.append(x509.load_der_x509_certificate(cert.der))
        except ValueError:
            log.warning("unreadable %s certificate for %s", usage.value, entry.address)
    return tuple(found)


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"smime.{key}: cannot read {path}: {exc.strerror}") from exc


def _crl_der(data: bytes, path: Path) -> bytes:
    if b"-----BEGIN X509 CRL-----" not in data:
        return data
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise ConfigError(f"smime.crl_files: {path} is not a CRL: {exc}") from exc
    return crl.public_bytes(serialization.Encoding.DER)


class TrustSource:
    """The trust anchors, read once, and the CRL files, re-read when they change.

    CRLs are short-lived (days); operators replace the files in place
    (write, then rename) and the next verification picks them up. A CRL file
    that disappears or becomes unreadable keeps its last good content.
    """

    def __init__(self, settings: SmimeSettings) -> None:
        self._settings = settings
        pem = _read(settings.trust_anchors_file, "trust_anchors_file")
        try:
            certs = load_certificates(pem)
        except MalformedError as exc:
            raise ConfigError(
                f"smime.trust_anchors_file: {settings.trust_anchors_file}: {exc}"
            ) from exc
        self._roots = tuple(c for c in certs if c.subject == c.issuer)
        self._intermediates = tuple(c for c in certs if c.subject != c.issuer)
        if not self._roots:
            raise ConfigError(
                f"smime.trust_anchors_file: {settings.trust_anchors_file}"
                " holds no self-signed root"
            )
        self._lock = threading.Lock()
        self._stamps: tuple[tuple[int, int], ...] = ()
        self._crls: dict[Path, bytes] = {}
        self._store = self._build(initial=True)

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._settings.crl_files:
            try:
                st = path.stat()
            except OSError:
                stamps.append((-1, -1))
            else:
                stamps.append((st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _build(self, *, initial: bool) -> TrustStore:
        self._stamps = self._stamp()
        for path in self._settings.crl_files:
            try:
                self._crls[path] = _crl_der(_read(path, "crl_files"), path)
            except ConfigError:
                if initial:
                    raise
                log.warning("CRL file %s unreadable; keeping the last one", path)
        try:
            return TrustStore(
                roots=self._roots,
                intermediates=self._intermediates,
                crls=tuple(self._crls.values()),
                revocation_mode=_REVOCATION[self._settings.revocation],
            )
        except MalformedError as exc:
            if initial:
                raise ConfigError(f"smime.crl_files: {exc}") from exc
            log.warning("a CRL file is not DER; keeping the last trust store")
            return self._store

    def current(self) -> TrustStore:
        """The trust store, rebuilt when a CRL file changed (thread-safe)."""
        with self._lock:
            if self._stamp() != self._stamps:
                self._store = self._build(initial=False)
            return self._store


@dataclass(frozen=True, slots=True)
class MailboxKeys:
    """What the directory says about how to encrypt to one mailbox."""

    certificates: tuple[x509.Certificate, ...] = ()
    pgp_key: str = ""
    prefers_pgp: bool = False

    @classmethod
    def of(cls, entry: Mailbox | Patient | None) -> MailboxKeys:
        if not isinstance(entry, Mailbox):
            return cls()  # patients and unknown addresses: no keys
        return cls(
            _certificates(entry, CertificateUsage.ENCRYPTION),
            entry.pgp_key,
            entry.prefers_pgp,
        )


class RelaySmime:
    """The relay's S/MIME and OpenPGP operations, built from ``[smime]``.

    Args:
        settings: the validated ``[smime]`` table.
        data_dir: the relay's data directory (the OpenPGP keyring lives in
            ``<data_dir>/gnupg``, created on first use, mode 0700).
        hostname: names the relay in trace fields.
        audit: the audit trail.

    Raises:
        ConfigError: a file named in ``[smime]`` cannot be read or used; the
            message names the key.
    """

    def __init__(
        self,
        settings: SmimeSettings,
        *,
        data_dir: Path,
        hostname: str,
        audit: AuditTrail,
    ) -> None:
        self.settings = settings
        self.trust = TrustSource(settings)
        self._hostname = hostname
        self._audit = audit
        self._keyring_dir = data_dir / KEYRING_DIR_NAME
        self._keyring_lock = threading.Lock()
        self.seal: Credential | None = None
        if settings.seal_cert_file is not None and settings.seal_key_file is not None:
            self.seal = self._load_seal(settings.seal_cert_file, settings.seal_key_file)

    def _load_seal(self, cert_file: Path, key_file: Path) -> Credential:
        cert_pem = _read(cert_file, "seal_cert_file")
        key_pem = _read(key_file, "seal_key_file")
        try:
            certs = load_certificates(cert_pem)
            credential = Credential.from_pem(
                certs[0].public_bytes(serialization.Encoding.PEM), key_pem
            )
        except CryptoError as exc:
            raise ConfigError(
                f"smime.seal_cert_file/seal_key_file: cannot load: {exc}"
            ) from exc
        spki = (
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        if credential.cert.public_key().public_bytes(*spki) != (
            credential.key.public_key().public_bytes(*spki)
        ):
            raise ConfigError(
                "smime.seal_key_file: the key does not match the certificate"
            )
        return dataclasses.replace(credential, chain=certs[1:])

    # -- acceptance ---------------------------------------------------------------

    def verify(
        self,
        message: bytes,
        *,
        addresses: Iterable[str],
        sender_entry: Mailbox | Patient | None,
        at: datetime,
    ) -> Verification | None:
        """Verify a message's S/MIME signature (blocking: run it in a thread).

        Args:
            message: the message as received.
            addresses: the addresses the signer may speak for (envelope
                sender, ``From``, ``Sender``); RFC 8550 §3 wants one of them
                in the signer's certificate.
            sender_entry: the envelope sender's directory entry; its
                signature certificates are candidates for the signer (a
                message may carry no certificate at all).
            at: the moment the certificate path is validated at.

        Returns:
            The verification, or ``None`` when the message turns out not to be
            signed (an S/MIME envelope the relay cannot open).

        Raises:
            CryptoError: the check itself failed (not the signature).
        """
        try:
            kind = kind_of(message)
        except MalformedError as exc:
            return Verification(Reason.MALFORMED, str(exc))
        if kind in _ENCRYPTED_KINDS or kind is Kind.PLAIN:
            return None
        result = smime_verify(
            message,
            self.trust.current(),
            at=at,
            certificates=_certificates(sender_entry, CertificateUsage.SIGNATURE),
        )
        if not result.ok or result.signer is None:
            return result
        wanted = {a.lower() for a in addresses if a}
        # RFC 8550 §3: the From or Sender address must be in the certificate.
        if not wanted & set(certificate_addresses(result.signer)):
            return dataclasses.replace(
                result,
                reason=Reason.ADDRESS_MISMATCH,
                detail="the certificate names neither the sender nor From",
            )
        # The directory is the reference (issue 7: "against the sender's
        # directory certificate"): when it lists signature certificates for
        # the sender, the signer must be one of them; when it lists none, a
        # valid IGC-Santé certificate naming the address is accepted.
        listed = _certificates(sender_entry, CertificateUsage.SIGNATURE)
        if listed and result.signer not in listed:
            return dataclasses.replace(
                result,
                reason=Reason.UNTRUSTED,
                detail="the signer is not a certificate the directory lists for the sender",
            )
        return result

    def signer_address(
        self, verification: Verification | None, addresses: Iterable[str]
    ) -> str:
        """The address the signer's certificate vouches for, among ``addresses``."""
        if verification is None or verification.signer is None:
            return ""
        certified = certificate_addresses(verification.signer)
        for address in addresses:
            if address and address.lower() in certified:
                return address.lower()
        return certified[0] if certified else ""

    def trace_header(
        self, verification: Verification | None, signer: str, at: datetime
    ) -> str:
        return signature_header(verification, signer, at=at, by=self._hostname)

    # -- delivery -----------------------------------------------------------------

    async def keys_for(
        self, directory: Directory, addresses: Sequence[str]
    ) -> dict[str, MailboxKeys]:
        """Look up the encryption keys of ``addresses`` (on the event loop).

        Raises:
            DirectoryError: the directory cannot answer (the delivery waits).
        """
        keys: dict[str, MailboxKeys] = {}
        for address in dict.fromkeys(addresses):
            if self.settings.for_address(address).encrypt:
                keys[address] = MailboxKeys.of(await directory.resolve(address))
        return keys

    def copies(
        self,
        envelope: Envelope,
        message: bytes,
        keys: dict[str, MailboxKeys],
        *,
        local_author: bool,
        at: datetime,
    ) -> Copies:
        """The per-mailbox copies of one spooled message (blocking work)."""
        return Copies(self, envelope, message, keys, local_author=local_author, at=at)

    def keyring_home(self) -> Path:
        with self._keyring_lock:
            self._keyring_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._keyring_dir

    def emit(self, event: AuditEvent, **fields: object) -> None:
        self._audit.emit(event, **fields)


class Copies:
    """Sealed and encrypted copies of one message, one per mailbox.

    The seal is computed once per message and shared by the copies that want
    it; its signing time is the acceptance time, so a replay after a crash
    seals the same way.
    """

    def __init__(
        self,
        owner: RelaySmime,
        envelope: Envelope,
        message: bytes,
        keys: dict[str, MailboxKeys],
        *,
        local_author: bool,
        at: datetime,
    ) -> None:
        self._owner = owner
        self._envelope = envelope
        self._message = message
        self._keys = keys
        self._local_author = local_author
        self._at = at
        self._kind = _kind(message)
        self._sealed: bytes | None = None

    def _seal(self) -> bytes:
        seal = self._owner.seal
        assert seal is not None  # noqa: S101 - config requires it for sealing
        if self._sealed is not None:
            return self._sealed
        try:
            # RFC 8551 §3.5: multipart/signed, readable without S/MIME support.
            self._sealed = sign(self._message, seal, at=self._envelope.received_at)
        except CryptoError as exc:
            log.warning("message %s not sealed: %s", self._envelope.queue_id, exc)
            self._sealed = self._message
            return self._sealed
        self._owner.emit(
            AuditEvent.SMIME_SEALED,
            cid=self._envelope.cid,
            sender=self._envelope.sender,
            queue_id=self._envelope.queue_id,
            message_ref=self._envelope.message_ref,
            signer=seal.cert.subject.rfc4514_string(),
        )
        return self._sealed

    def for_mailbox(self, address: str) -> bytes:
        """The copy to store in ``address``'s mailbox (a recipient or the sender)."""
        peer = self._owner.settings.for_address(address)
        message = self._message
        if (
            peer.seal_unsigned
            and self._local_author
            and self._kind is _Shape.PLAIN
            and self._owner.seal is not None
        ):
            message = self._seal()
        keys = self._keys.get(address)
        if not peer.encrypt or keys is None or self._kind is _Shape.ENCRYPTED:
            return message
        if keys.prefers_pgp and keys.pgp_key:
            return self._pgp(address, message, keys.pgp_key)
        if keys.certificates:
            return self._smime(address, message, keys.certificates, peer.profile)
        return message

    def _skipped(self, address: str, method: str, reason: str) -> None:
        self._owner.emit(
            AuditEvent.SMIME_ENCRYPTION_SKIPPED,
            cid=self._envelope.cid,
            recipient=address,
            queue_id=self._envelope.queue_id,
            method=method,
            reason=reason,
        )

    def _smime(
        self,
        address: str,
        message: bytes,
        certificates: tuple[x509.Certificate, ...],
        profile: EncryptionProfile,
    ) -> bytes:
        trust = self._owner.trust.current()
        usable: list[Recipient] = []
        refused: list[str] = []
        for cert in certificates:
            try:
                reason, _ = validate_smime_certificate(
                    cert, trust, at=self._at, purpose="encrypt"
                )
            except CryptoError:
                reason = Reason.REVOCATION_UNKNOWN
            if reason is Reason.VALID:
                usable.append(Recipient(cert, _PROFILES[profile]))
            else:
                refused.append(reason.value)
        if not usable:
            self._skipped(address, "smime", ",".join(refused))
            return message
        try:
            encrypted = smime_encrypt(message, usable)
        except CryptoError as exc:
            self._skipped(address, "smime", type(exc).__name__)
            return message
        self._owner.emit(
            AuditEvent.SMIME_ENCRYPTED,
            cid=self._envelope.cid,
            recipient=address,
            queue_id=self._envelope.queue_id,
            method="smime",
            profile=profile.value,
            certificates=len(usable),
        )
        return encrypted

    def _pgp(self, address: str, message: bytes, armored: str) -> bytes:
        # Imported here: python-gnupg runs gpg; only OpenPGP recipients need it.
        from mssante.crypto.openpgp import Keyring

        ring = Keyring(self._owner.keyring_home())
        try:
            fingerprints = ring.import_keys(armored.encode("ascii"))
            encrypted = ring.sign_and_encrypt(
                message, signer=None, recipients=fingerprints
            )
        except (CryptoError, OSError, UnicodeEncodeError) as exc:
            self._skipped(address, "openpgp", type(exc).__name__)
            return message
        self._owner.emit(
            AuditEvent.SMIME_ENCRYPTED,
            cid=self._envelope.cid,
            recipient=address,
            queue_id=self._envelope.queue_id,
            method="openpgp",
        )
        return encrypted


class _Shape(enum.Enum):
    PLAIN = "plain"  # may be sealed and encrypted
    SIGNED = "signed"  # S/MIME or PGP/MIME signed: encrypted, not sealed
    ENCRYPTED = "encrypted"  # left as it is


def _kind(message: bytes) -> _Shape:
    try:
        kind = kind_of(message)
    except MalformedError:
        return _Shape.ENCRYPTED  # unreadable protection: touch nothing
    if kind in _ENCRYPTED_KINDS:
        return _Shape.ENCRYPTED
    if kind is not Kind.PLAIN:
        return _Shape.SIGNED
    head_end = message.find(b"\r\n\r\n")
    head = message if head_end < 0 else message[: head_end + 4]
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    # RFC 1847 §2.2 / RFC 3156 §4: PGP/MIME encryption is multipart/encrypted.
    if headers.get_content_type() == "multipart/encrypted":
        return _Shape.ENCRYPTED
    return _Shape.PLAIN
