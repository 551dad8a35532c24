"""The MSSanté message profile: pure building and reading of messages.

Bytes and typed objects in, bytes and typed objects out: no file, socket,
clock or randomness (time and ids are arguments). What it covers:

- the model (:class:`Patient`, :class:`Author`, :class:`Document`,
  :class:`Report`) and its rules;
- CDA R2 headers (:func:`parse_cda`);
- IHE XDM archives with their METADATA.XML (:func:`build_xdm`,
  :func:`read_xdm`, :func:`build_metadata`, :func:`parse_metadata`);
- MSSanté messages (:func:`compose_message`, :func:`parse_message`);
- delivery status notifications (RFC 3464) and message disposition
  notifications (RFC 8098), composed and parsed.

Every error derives from :class:`MessageError`.
"""

from mssante.message._cda import CdaAuthor, CdaHeader, CdaPatient, parse_cda
from mssante.message._codes import (
    CONFIDENTIALITY_NORMAL,
    OID_INS_NIA,
    OID_INS_NIR,
    OID_INS_NIR_DEMO,
    OID_INS_NIR_TEST,
    Code,
    Masking,
)
from mssante.message._dsn import (
    Action,
    DeliveryStatusNotification,
    RecipientStatus,
    compose_dsn,
    parse_dsn,
)
from mssante.message._errors import (
    IntegrityError,
    InvalidDocumentError,
    InvalidFieldError,
    MalformedCdaError,
    MalformedMessageError,
    MalformedReceiptError,
    MalformedXdmError,
    MessageError,
    MissingInsError,
    MultiplePatientsError,
    NotAPdfError,
)
from mssante.message._mdn import (
    KO_SUBJECT_PREFIX,
    ActionMode,
    Disposition,
    DispositionNotification,
    DispositionType,
    IntegrationError,
    IntegrationErrorCode,
    SendingMode,
    compose_mdn,
    parse_mdn,
)
from mssante.message._mime import (
    ReceivedMessage,
    Software,
    compose_message,
    make_message_id,
    parse_message,
    report_subject,
)
from mssante.message._model import (
    Author,
    Document,
    DocumentKind,
    Institution,
    Patient,
    Report,
    Sex,
    XdsCodes,
)
from mssante.message._xdm import (
    XDM_ZIP_NAME,
    XdmEntry,
    XdmPackage,
    XdmSubmission,
    build_metadata,
    build_xdm,
    parse_metadata,
    read_xdm,
)

__all__ = [
    "CONFIDENTIALITY_NORMAL",
    "KO_SUBJECT_PREFIX",
    "OID_INS_NIA",
    "OID_INS_NIR",
    "OID_INS_NIR_DEMO",
    "OID_INS_NIR_TEST",
    "XDM_ZIP_NAME",
    "Action",
    "ActionMode",
    "Author",
    "CdaAuthor",
    "CdaHeader",
    "CdaPatient",
    "Code",
    "DeliveryStatusNotification",
    "Disposition",
    "DispositionNotification",
    "DispositionType",
    "Document",
    "DocumentKind",
    "Institution",
    "IntegrationError",
    "IntegrationErrorCode",
    "IntegrityError",
    "InvalidDocumentError",
    "InvalidFieldError",
    "MalformedCdaError",
    "MalformedMessageError",
    "MalformedReceiptError",
    "MalformedXdmError",
    "Masking",
    "MessageError",
    "MissingInsError",
    "MultiplePatientsError",
    "NotAPdfError",
    "Patient",
    "ReceivedMessage",
    "RecipientStatus",
    "Report",
    "SendingMode",
    "Sex",
    "Software",
    "XdmEntry",
    "XdmPackage",
    "XdmSubmission",
    "XdsCodes",
    "build_metadata",
    "build_xdm",
    "compose_dsn",
    "compose_mdn",
    "compose_message",
    "make_message_id",
    "parse_cda",
    "parse_dsn",
    "parse_mdn",
    "parse_message",
    "parse_metadata",
    "read_xdm",
    "report_subject",
]
