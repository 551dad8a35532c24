"""Errors of the cryptography library.

Owns the exception tree of ``mssante.crypto``. What must stay true: every
failure the library reports by raising is one of these classes, so a caller
catches ``CryptoError`` and nothing else; verification never raises for a bad
message, it returns a :class:`~mssante.crypto.Verification` with a reason.

::

    CryptoError                 root, under MSSanteError
    ├── MalformedError          input is not the CMS / MIME / PEM it claims to be
    ├── DecryptionError         no recipient info for our certificate, wrong key,
    │                           integrity tag or padding failure
    ├── UnsupportedError        an algorithm or key type outside our profile
    └── OpenPGPError            gpg refused or failed (openpgp module only)
"""

from __future__ import annotations

from mssante._errors import MSSanteError


class CryptoError(MSSanteError):
    """Root of every error raised by ``mssante.crypto``."""


class MalformedError(CryptoError):
    """The bytes do not parse as the structure they claim to be."""


class DecryptionError(CryptoError):
    """The envelope parses but cannot be opened with the key given."""


class UnsupportedError(CryptoError):
    """An algorithm, key type or content type outside the MSSanté profile."""


class OpenPGPError(CryptoError):
    """gpg refused the operation (bad key, bad signature, no secret key)."""
