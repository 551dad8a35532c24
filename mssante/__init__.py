"""mssante: the client library of an MSSanté-style secure health messaging space.

The public API is what ``__all__`` lists (``tests/test_exports.py`` checks
it stays sorted and importable). Practice software builds a :class:`Report`
for one patient, composes it as an MSSanté message, and reads the DSN and
MDN receipts that come back::

    from mssante import Author, Document, Patient, Report, compose_message

Message building and parsing live in :mod:`mssante.message`, end-to-end
cryptography in :mod:`mssante.crypto` (imported on demand: it is larger).
Every error the library raises derives from :class:`MSSanteError`.
"""

from __future__ import annotations

from mssante._client import Client, OpenedMessage, SentMessage
from mssante._config import Timeouts, TLSConfig
from mssante._errors import (
    AuthenticationError,
    ConnectError,
    MessageRefusedError,
    MessageTooLargeError,
    MSSanteError,
    RecipientsRefusedError,
    ResponseTimeoutError,
    SenderRefusedError,
    SubmissionError,
    TLSVerificationError,
    TransportError,
)
from mssante._mailbox import InboxItem, MailboxSession, Receipts
from mssante._reports import report_from_cda
from mssante._sync import SyncClient
from mssante._traces import TraceLog
from mssante._transport import SmtpConnection
from mssante.crypto._errors import CryptoError
from mssante.message import (
    Action,
    Author,
    DeliveryStatusNotification,
    Disposition,
    DispositionNotification,
    DispositionType,
    Document,
    Institution,
    IntegrationError,
    IntegrationErrorCode,
    MessageError,
    Patient,
    ReceivedMessage,
    RecipientStatus,
    Report,
    Sex,
    Software,
    compose_dsn,
    compose_mdn,
    compose_message,
    parse_dsn,
    parse_mdn,
    parse_message,
)

__all__ = [
    "Action",
    "AuthenticationError",
    "Author",
    "Client",
    "ConnectError",
    "CryptoError",
    "DeliveryStatusNotification",
    "Disposition",
    "DispositionNotification",
    "DispositionType",
    "Document",
    "InboxItem",
    "Institution",
    "IntegrationError",
    "IntegrationErrorCode",
    "MSSanteError",
    "MailboxSession",
    "MessageError",
    "MessageRefusedError",
    "MessageTooLargeError",
    "OpenedMessage",
    "Patient",
    "Receipts",
    "ReceivedMessage",
    "RecipientStatus",
    "RecipientsRefusedError",
    "Report",
    "ResponseTimeoutError",
    "SenderRefusedError",
    "SentMessage",
    "Sex",
    "SmtpConnection",
    "Software",
    "SubmissionError",
    "SyncClient",
    "TLSConfig",
    "TLSVerificationError",
    "Timeouts",
    "TraceLog",
    "TransportError",
    "compose_dsn",
    "compose_mdn",
    "compose_message",
    "parse_dsn",
    "parse_mdn",
    "parse_message",
    "report_from_cda",
]
