"""Keys of the mailbox store: the master key and the per-mailbox data keys.

Key hierarchy (every derivation is HKDF-SHA256 with a distinct label)::

    master key (32 random bytes, base64 in a 0600 file named by the config)
     ├── wrap key      AES-256-GCM; wraps each mailbox's data key, with the
     │                 mailbox locator as associated data
     ├── locator key   HMAC-SHA256; turns an address or a delivery key into
     │                 the opaque value the index stores (a patient address
     │                 carries the INS, so it is never written in clear)
     ├── address key   AES-256-GCM; the address itself, for listing mailboxes
     └── check value   stored in the index; a wrong master key is refused at
                       open, not discovered later as "corrupt" messages
    data key (32 random bytes per mailbox, stored wrapped)
     └── AES-256-GCM over every message file and every cached structure

What must stay true:

- The raw master key lives only in :class:`MasterKey` (slots, no ``repr``,
  no equality, no pickling) and in the derived primitives built from it.
- A key file readable by group or others is refused, never "fixed".
- Every ciphertext is ``nonce (12 bytes) || ciphertext || tag`` with a fresh
  random nonce: at 2**32 messages under one data key the collision risk stays
  below 2**-32 (NIST SP 800-38D §8.3); a mailbox never gets near that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from typing import TYPE_CHECKING, Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.store._errors import CorruptMessageError, MasterKeyError

if TYPE_CHECKING:
    from pathlib import Path

KEY_SIZE: Final = 32  # AES-256
NONCE_SIZE: Final = 12  # NIST SP 800-38D §8.2: 96-bit IVs for GCM
TAG_SIZE: Final = 16
_LABEL: Final = b"mssante-store/v1/"


def _derive(master: bytes, label: str) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=None,
        info=_LABEL + label.encode("ascii"),
    )
    return hkdf.derive(master)


class MasterKey:
    """The store's master key: 32 random bytes read from a file.

    ``repr`` shows a short one-way key id (so logs can tell two keys apart),
    never the key.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise MasterKeyError(f"a master key is {KEY_SIZE} bytes, got {len(key)}")
        self._key = key

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        """Read the key from ``path`` (base64 text, mode 0600 or stricter).

        Raises:
            MasterKeyError: the file is missing or unreadable, is not a regular
                file, is readable or writable by group or others, or does not
                hold exactly 32 base64-encoded bytes.
        """
        try:
            st = path.stat()
        except OSError as exc:
            raise MasterKeyError(
                f"{path}: cannot read the master key file: {exc.strerror}"
            ) from exc
        if not stat.S_ISREG(st.st_mode):
            raise MasterKeyError(f"{path}: the master key file is not a regular file")
        if st.st_mode & 0o077:
            raise MasterKeyError(
                f"{path}: the master key file has mode {stat.S_IMODE(st.st_mode):04o}; "
                "it must not be accessible to group or others (chmod 600)"
            )
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise MasterKeyError(
                f"{path}: cannot read the master key file: {exc}"
            ) from exc
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except binascii.Error as exc:
            raise MasterKeyError(f"{path}: the master key file is not base64") from exc
        if len(raw) != KEY_SIZE:
            raise MasterKeyError(
                f"{path}: the master key must be {KEY_SIZE} bytes, the file holds {len(raw)}"
            )
        return cls(raw)

    @classmethod
    def generate(cls, path: Path) -> MasterKey:
        """Create a new random key in a new file (mode 0600) and return it.

        Raises:
            MasterKeyError: the file already exists (a key is never overwritten).
        """
        raw = secrets.token_bytes(KEY_SIZE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise MasterKeyError(
                f"{path}: refusing to overwrite an existing key file"
            ) from exc
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(base64.b64encode(raw).decode("ascii") + "\n")
            f.flush()
            os.fsync(f.fileno())
        return cls(raw)

    @property
    def key_id(self) -> str:
        """A short public identifier of the key (HKDF output, not the key)."""
        return _derive(self._key, "key-id")[:6].hex()

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for another part of the relay (the audit trail's
        HMAC, the thread store's message references), independent of the
        store's own keys (HKDF with a distinct label, RFC 5869)."""
        return _derive(self._key, "purpose/" + purpose)

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a MasterKey is never pickled")

    def _keyring(self) -> KeyRing:
        return KeyRing(self._key)


class KeyRing:
    """The primitives derived from the master key (built once per store)."""

    __slots__ = ("_address", "_locator_key", "_wrap", "check_value")

    def __init__(self, master: bytes) -> None:
        self._wrap = AESGCM(_derive(master, "wrap"))
        self._address = AESGCM(_derive(master, "address"))
        self._locator_key = _derive(master, "locator")
        self.check_value = _derive(master, "check")

    def __repr__(self) -> str:
        return "KeyRing(<redacted>)"

    def locator(self, kind: str, value: str) -> bytes:
        """The opaque index value for an address or a delivery key."""
        msg = kind.encode("ascii") + b"\0" + value.encode("utf-8", "surrogatepass")
        return hmac.new(self._locator_key, msg, hashlib.sha256).digest()

    def new_wrapped_data_key(self, locator: bytes) -> bytes:
        return seal(self._wrap, secrets.token_bytes(KEY_SIZE), b"data-key\0" + locator)

    def data_key(self, wrapped: bytes, locator: bytes) -> DataKey:
        try:
            raw = unseal(self._wrap, wrapped, b"data-key\0" + locator)
        except InvalidTag as exc:
            raise CorruptMessageError("mailbox data key", "does not unwrap") from exc
        return DataKey(raw)

    def seal_address(self, address: str, locator: bytes) -> bytes:
        return seal(self._address, address.encode("utf-8", "surrogatepass"), locator)

    def open_address(self, sealed: bytes, locator: bytes) -> str:
        try:
            return unseal(self._address, sealed, locator).decode(
                "utf-8", "surrogatepass"
            )
        except InvalidTag as exc:
            raise CorruptMessageError("mailbox address", "does not decrypt") from exc


class DataKey:
    """One mailbox's data key, as a ready AES-256-GCM primitive."""

    __slots__ = ("_aead",)

    def __init__(self, raw: bytes) -> None:
        self._aead = AESGCM(raw)

    def __repr__(self) -> str:
        return "DataKey(<redacted>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return seal(self._aead, plaintext, aad)

    def unseal(self, blob: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """Decrypt and authenticate, or raise :class:`CorruptMessageError`."""
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise CorruptMessageError(what, "truncated")
        try:
            return unseal(self._aead, blob, aad)
        except InvalidTag as exc:
            raise CorruptMessageError(what, "integrity check failed") from exc


def seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def unseal(aead: AESGCM, blob: bytes | memoryview, aad: bytes) -> bytes:
    mv = memoryview(blob)
    return aead.decrypt(mv[:NONCE_SIZE], mv[NONCE_SIZE:], aad)
