"""The exception tree of the ``mssante`` library.

Every error the library raises on purpose derives from :class:`MSSanteError`;
a caller that wants to handle "anything mssante refused" catches that one
class. Lower layers (``ssl``, ``OSError``, ``asn1crypto``, ``email``) are
translated at the edge that calls them, with ``raise ... from exc``::

    MSSanteError
    ├── MessageError                 mssante.message: building or reading a message
    │   ├── InvalidFieldError        a field breaks its rule (names the field)
    │   ├── InvalidDocumentError     a CDA or PDF is not what it claims
    │   ├── MalformedXdmError        IHE_XDM.ZIP or METADATA.XML unusable
    │   ├── MalformedMessageError    not an MSSanté message
    │   └── MalformedReceiptError    a DSN or MDN that cannot be read
    └── CryptoError                  mssante.crypto: S/MIME, CMS, OpenPGP
        ├── MalformedError           not the CMS / MIME / PEM it claims to be
        ├── DecryptionError          cannot be opened with the key given
        ├── UnsupportedError         outside the profile
        └── OpenPGPError             gpg refused or failed

Verification results (a bad signature, an untrusted certificate) are not
errors: they come back as typed results with a reason.
"""

from __future__ import annotations


class MSSanteError(Exception):
    """Root of every error raised by the ``mssante`` library."""
