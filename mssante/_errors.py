"""The exception tree of the ``mssante`` library.

Every error the library raises on purpose derives from :class:`MSSanteError`;
a caller that wants to handle "anything mssante refused" catches that one
class. Lower layers (``ssl``, ``OSError``, ``asn1crypto``, ``email``) are
translated at the edge that calls them, with ``raise ... from exc``::

    MSSanteError
    ├── TransportError               talking to the relay failed (translated from
    │   │                            OSError, ssl.SSLError, TimeoutError)
    │   ├── ConnectError             cannot reach the server
    │   ├── TLSVerificationError     the server's certificate or TLS profile is refused
    │   ├── ResponseTimeoutError     the server did not answer in time
    │   └── RemoteProtocolError      the server's bytes are not SMTP / IMAP
    ├── SubmissionError              the relay refused (carries its reply)
    │   ├── AuthenticationError      AUTH refused
    │   ├── SenderRefusedError       MAIL FROM refused
    │   ├── RecipientsRefusedError   every recipient refused
    │   └── MessageRefusedError      DATA refused
    ├── MessageTooLargeError         bigger than the server's SIZE (checked before sending)
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


class TransportError(MSSanteError):
    """The connection to the server failed; the lower-level error is ``__cause__``."""


class ConnectError(TransportError):
    """The server cannot be reached."""


class TLSVerificationError(TransportError):
    """TLS could not be established with a verified server (never bypassed)."""


class ResponseTimeoutError(TransportError):
    """The server did not answer within the configured timeout."""


class SubmissionError(MSSanteError):
    """The relay answered with a refusal; ``reply`` is the SMTP reply."""

    def __init__(self, message: str, reply: object) -> None:
        super().__init__(message)
        self.reply = reply


class AuthenticationError(SubmissionError):
    """The relay refused the credentials (or has no usable mechanism)."""


class SenderRefusedError(SubmissionError):
    """The relay refused the envelope sender."""


class RecipientsRefusedError(SubmissionError):
    """The relay refused every recipient; ``refused`` maps each to its reply."""

    def __init__(self, message: str, refused: dict[str, object]) -> None:
        super().__init__(message, next(iter(refused.values()), None))
        self.refused = refused


class MessageRefusedError(SubmissionError):
    """The relay refused the message after DATA."""


class MessageTooLargeError(MSSanteError):
    """The message exceeds the size the server announced (RFC 1870)."""
