"""OpenPGP for mail: PGP/MIME (RFC 3156) through gpg, in a keyring the caller owns.

Owns the OpenPGP path of DESIGN §6, for recipients whose directory entry
carries a PGP key and prefers it: sign + encrypt into ``multipart/encrypted``
(RFC 3156 §6.2, signature and encryption combined in one OpenPGP message) and
decrypt + verify back.

This is the one module of ``mssante.crypto`` that runs a program: python-gnupg
starts ``gpg`` with ``--homedir`` set to the keyring directory the caller
passes in (a private directory per relay or per test; never the user's
``~/.gnupg``). It reads no clock and opens no file itself; the other crypto
modules stay pure and do not import it.

What must stay true:

- trust comes from the directory, not from the web of trust: keys are used
  with ``--trust-model always`` and a decryption's signer is checked against
  the fingerprint the caller expects (the sender's directory key);
- the entity is canonicalised to CRLF before encryption (RFC 3156 §3);
- gpg failures raise :class:`OpenPGPError`; bad PGP/MIME framing raises
  :class:`MalformedError`; a bad signature inside a message that decrypts is
  reported in :class:`PGPVerification`, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import gnupg

from mssante.crypto._errors import MalformedError, OpenPGPError
from mssante.crypto._mime import (
    canonicalize,
    headers_of,
    join_message,
    mime_type,
    new_boundary,
    split_header_block,
    split_message,
    two_parts,
)
from mssante.crypto.certs import Reason

if TYPE_CHECKING:
    from collections.abc import Sequence
    from os import PathLike

__all__ = ["Keyring", "PGPOpened", "PGPVerification"]

PGP_ENCRYPTED: Final = "application/pgp-encrypted"
ARMOR_HEADER: Final = b"-----BEGIN PGP MESSAGE-----"
_PROBLEMS: Final = {
    "signature bad": Reason.BAD_SIGNATURE,
    "signature error": Reason.UNTRUSTED,  # ERRSIG: e.g. no public key
    "no public key": Reason.UNTRUSTED,
    "signature expired": Reason.EXPIRED,
    "signing key has expired": Reason.EXPIRED,
    "signing key was revoked": Reason.REVOKED,
}


@dataclass(frozen=True, slots=True)
class PGPVerification:
    """The signature found inside a decrypted OpenPGP message."""

    reason: Reason
    detail: str = ""
    signer_fingerprint: str | None = None
    signing_time: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.reason is Reason.VALID


@dataclass(frozen=True, slots=True)
class PGPOpened:
    """A decrypted message (outer fields put back) and its signature, if any."""

    message: bytes
    verification: PGPVerification | None


def _verification(
    result: gnupg.Crypt, expected_signer: str | None
) -> PGPVerification | None:
    fingerprint = result.pubkey_fingerprint or result.fingerprint
    when = (
        datetime.fromtimestamp(int(result.sig_timestamp), UTC)
        if result.sig_timestamp
        else None
    )
    if not result.valid:
        # python-gnupg keeps each signature problem; a later DECRYPTION_OKAY
        # overwrites ``status``, so read the problems, last one first.
        known = [
            str(p.get("status"))
            for p in result.problems
            if p.get("status") in _PROBLEMS
        ]
        if not known:
            return None  # decrypted, not signed
        return PGPVerification(_PROBLEMS[known[-1]], known[-1], fingerprint, when)
    status = str(result.status or "")
    if expected_signer is not None and (fingerprint or "").upper() != (
        expected_signer.upper()
    ):
        return PGPVerification(
            Reason.UNTRUSTED, "signed by another key", fingerprint, when
        )
    return PGPVerification(Reason.VALID, status, fingerprint, when)


class Keyring:
    """An isolated gpg keyring in a directory the caller owns.

    Args:
        home: the ``--homedir``; created by the caller, mode 0700.
        gpg_binary: the gpg program (``gpg`` from PATH by default).
    """

    def __init__(self, home: str | PathLike[str], *, gpg_binary: str = "gpg") -> None:
        self._gpg = gnupg.GPG(gpgbinary=gpg_binary, gnupghome=str(home))
        self._gpg.encoding = "utf-8"

    def import_keys(self, armored: bytes) -> tuple[str, ...]:
        """Import public (or secret) keys; returns their fingerprints."""
        result = self._gpg.import_keys(armored)
        if not result.fingerprints:
            raise OpenPGPError(f"no key imported: {result.results}")
        return tuple(str(f) for f in result.fingerprints)

    def export_public_key(self, fingerprint: str) -> bytes:
        """The armored public key, to publish in the directory."""
        armored = self._gpg.export_keys(fingerprint)
        if not armored:
            raise OpenPGPError(f"no public key {fingerprint}")
        return str(armored).encode("ascii")

    def sign_and_encrypt(
        self,
        message: bytes,
        *,
        signer: str | None,
        recipients: Sequence[str],
        passphrase: str | None = None,
    ) -> bytes:
        """PGP/MIME ``multipart/encrypted`` (RFC 3156 §6.2), signed if ``signer``.

        Args:
            message: an RFC 5322 message or a MIME entity; non-``Content-*``
                fields stay outside.
            signer: fingerprint of a secret key in this keyring, or ``None``
                to encrypt only.
            recipients: fingerprints (include the sender for a sent copy).
            passphrase: of the signing key, if it has one.

        Raises:
            OpenPGPError: gpg refused (unknown recipient, no secret key...).
        """
        outer, entity = split_message(message)
        result = self._gpg.encrypt(
            entity,
            list(recipients),
            sign=signer,
            passphrase=passphrase,
            always_trust=True,
            armor=True,
        )
        if not result.ok:
            raise OpenPGPError(f"gpg could not encrypt: {result.status}")
        boundary = new_boundary()
        # RFC 3156 §4: control part "Version: 1", then the OpenPGP message.
        head = (
            b'Content-Type: multipart/encrypted; protocol="%s";\r\n'
            b' boundary="%s"\r\n\r\n'
            b"This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n"
            b"--%s\r\n"
            b"Content-Type: application/pgp-encrypted\r\n"
            b"Content-Description: PGP/MIME version identification\r\n\r\n"
            b"Version: 1\r\n\r\n"
            b"--%s\r\n"
            b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
            b"Content-Description: OpenPGP encrypted message\r\n"
            b'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n'
        ) % (PGP_ENCRYPTED.encode("ascii"), boundary, boundary, boundary)
        tail = b"\r\n--%s--\r\n" % boundary
        encrypted = b"".join((head, canonicalize(result.data), tail))
        return join_message(outer, encrypted)

    def decrypt_and_verify(
        self,
        message: bytes,
        *,
        passphrase: str | None = None,
        expected_signer: str | None = None,
    ) -> PGPOpened:
        """Open a PGP/MIME ``multipart/encrypted`` message.

        Args:
            message: the message as received.
            passphrase: of our secret key, if it has one.
            expected_signer: the sender's directory key fingerprint; a
                signature by any other key is ``UNTRUSTED``.

        Returns:
            The inner entity with the outer fields back, and the signature's
            verification (``None`` when the message was not signed).

        Raises:
            MalformedError: not RFC 3156 ``multipart/encrypted``.
            OpenPGPError: gpg cannot decrypt (no secret key, corrupt data).
        """
        outer, entity = split_message(message)
        block, body = split_header_block(entity)
        headers = headers_of(block)
        # RFC 3156 §4: protocol parameter and the two parts.
        if mime_type(headers) != "multipart/encrypted" or (
            headers.get_param("protocol") != PGP_ENCRYPTED
        ):
            raise MalformedError("not PGP/MIME multipart/encrypted")
        control, payload = two_parts(headers, body)
        control_block, control_body = split_header_block(control)
        if mime_type(headers_of(control_block)) != PGP_ENCRYPTED or (
            b"Version: 1" not in control_body
        ):
            raise MalformedError("PGP/MIME control part missing or not version 1")
        _, armored = split_header_block(payload)
        if ARMOR_HEADER not in armored:
            raise MalformedError("no OpenPGP message in the second part")
        result = self._gpg.decrypt(armored, passphrase=passphrase, always_trust=True)
        if not result.ok:
            raise OpenPGPError(f"gpg could not decrypt: {result.status}")
        return PGPOpened(
            join_message(outer, canonicalize(result.data)),
            _verification(result, expected_signer),
        )
