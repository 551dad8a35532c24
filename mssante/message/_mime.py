"""Composing and parsing MSSanté messages (RFC 5322 / MIME).

Owns the mail form of a :class:`Report`:

- ``multipart/mixed``: a UTF-8 ``text/plain`` body (quoted-printable), then
  ``IHE_XDM.ZIP`` when there are CDA documents, then the PDF rendition and
  any other attachment, in the report's order;
- the MSSanté headers: ``X-MSS-NIL`` always; ``X-MSS-CODECDA`` and
  ``X-MSS-INS`` only with a CDA; ``X-MSS-MES: FIN`` to close a thread;
  ``Disposition-Notification-To`` for a read receipt; ``Message-ID``,
  ``In-Reply-To``, ``References``.

What must stay true: composing is deterministic (time, ids and MIME
boundaries come from the arguments), and :func:`parse_message` of a composed
message gives back an equal :class:`Report`. Parsing checks the profile
(X-MSS-INS present with a CDA and absent without, ``O`` only with the
traits) and the XDM hashes. Only the stdlib ``email`` package reads and
writes MIME.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.policy
import email.utils
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from typing import TYPE_CHECKING

from mssante.message._errors import (
    InvalidFieldError,
    MalformedMessageError,
)
from mssante.message._model import (
    MIME_PDF,
    Document,
    Report,
)
from mssante.message._xdm import (
    XDM_ZIP_NAME,
    XdmSubmission,
    build_xdm,
    document_from_entry,
    read_xdm,
)

if TYPE_CHECKING:
    import uuid

# ANS, "Guide d'intégration MSSanté des LPS": the MSSanté header fields.
H_NIL = "X-MSS-NIL"
H_CODECDA = "X-MSS-CODECDA"
H_INS = "X-MSS-INS"
H_MES = "X-MSS-MES"
MES_END_OF_THREAD = "FIN"
H_COPY_TREATING = "X-MSSante-Copy-Treating"
COPY_TREATING_YES = "yes"
INS_QUALIFIED = "O"
INS_NOT_QUALIFIED = "N"
SUBJECT_PREFIX = "XDM/1.0/DDM+"


@dataclass(frozen=True, slots=True)
class Software:
    """The practice software that composes: product reference and XDS sourceId OID."""

    product: str
    source_oid: str

    def __post_init__(self) -> None:
        if not self.product or "\r" in self.product or "\n" in self.product:
            raise InvalidFieldError("software.product", "one non-empty line")
        if not all(part.isdigit() for part in self.source_oid.split(".")):
            raise InvalidFieldError("software.source_oid", "must be an OID")


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A parsed MSSanté message: the report and what its envelope said."""

    report: Report
    message_id: str | None
    date: dt.datetime | None
    product: str | None  # X-MSS-NIL
    cda_codes: tuple[str, ...]  # X-MSS-CODECDA
    ins_qualified: bool | None  # X-MSS-INS (None when absent)
    submission: XdmSubmission | None


def report_subject(report: Report) -> str:
    """The MSSanté subject ``XDM/1.0/DDM+<title> <NAME> <first name> <DD/MM/YYYY>``."""
    cdas = report.cda_documents
    if not cdas or report.patient is None:
        raise InvalidFieldError("report.subject", "the MSSanté subject needs a CDA")
    p = report.patient
    return (
        f"{SUBJECT_PREFIX}{cdas[0].title} {p.birth_name} {p.first_name} "
        f"{p.birth_date.strftime('%d/%m/%Y')}"
    )


def make_message_id(uid: uuid.UUID, domain: str) -> str:
    """A ``Message-ID`` (RFC 5322 §3.6.4) ``<uid@domain>``."""
    return f"<{uid}@{domain}>"


def compose_message(
    report: Report,
    *,
    software: Software,
    now: dt.datetime,
    message_id: str,
    uid: uuid.UUID,
) -> bytes:
    """The RFC 5322 bytes of ``report``, with CRLF line ends.

    Args:
        report: a validated report (Report checks its own rules).
        software: product reference (X-MSS-NIL) and XDS source id.
        now: the Date header and the XDM submission time (aware).
        message_id: the ``Message-ID``, ``<...@...>``.
        uid: seed of the XDM ids and of the MIME boundary.

    Raises:
        InvalidFieldError: ``now`` is naive or ``message_id`` malformed.
    """
    if now.tzinfo is None:
        raise InvalidFieldError("now", "needs a time zone")
    _check_msg_id("message_id", message_id)
    # MIMEPart, not EmailMessage: parts carry no MIME-Version of their own.
    msg = MIMEPart(policy=email.policy.SMTP)
    msg["From"] = Address(
        display_name=report.sender_name or "", addr_spec=report.sender
    )
    msg["To"] = ", ".join(report.to)
    if report.cc:
        msg["Cc"] = ", ".join(report.cc)
    msg["Subject"] = (
        report.subject if report.subject is not None else report_subject(report)
    )
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = message_id
    # RFC 5322 §3.6.4: threading of replies.
    if report.in_reply_to is not None:
        msg["In-Reply-To"] = report.in_reply_to
    if report.references:
        msg["References"] = " ".join(report.references)
    msg[H_NIL] = software.product
    cdas = report.cda_documents
    if cdas and report.patient is not None:
        msg[H_CODECDA] = ",".join(d.xds.type_code.code for d in cdas if d.xds)
        msg[H_INS] = INS_QUALIFIED if report.patient.qualified else INS_NOT_QUALIFIED
    if report.end_of_thread:
        msg[H_MES] = MES_END_OF_THREAD
    if report.copy_treating_doctor:
        msg[H_COPY_TREATING] = COPY_TREATING_YES
    if report.read_receipt:
        # RFC 8098 §2.1: the address the MDN goes to.
        msg["Disposition-Notification-To"] = report.sender
    msg["MIME-Version"] = "1.0"
    msg.set_content(report.body, charset="utf-8", cte="quoted-printable")
    if cdas:
        zip_bytes = build_xdm(
            report,
            now=now,
            uid=uid,
            source_id=software.source_oid,
            product=software.product,
        )
        msg.add_attachment(
            zip_bytes, maintype="application", subtype="zip", filename=XDM_ZIP_NAME
        )
    for doc in report.documents:
        if doc in cdas:
            continue
        maintype, _, subtype = doc.mime_type.partition("/")
        msg.add_attachment(
            doc.content,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=doc.filename or doc.title,
        )
    if msg.is_multipart():
        msg.set_boundary(f"=_mss_{uid.hex}")
    return msg.as_bytes(policy=email.policy.SMTP)


def parse_message(data: bytes) -> ReceivedMessage:
    """Parse an MSSanté message back into a :class:`Report`.

    Args:
        data: the RFC 5322 message.

    Returns:
        The report and the envelope facts. ``report.subject`` is None when the
        subject is the MSSanté one for that report.

    Raises:
        MalformedMessageError: headers missing or contradicting the profile.
        MalformedXdmError, IntegrityError: the XDM archive is bad.
        MalformedCdaError, NotAPdfError: a document is not what it claims.
        InvalidFieldError, MissingInsError, MultiplePatientsError: the
            content breaks a rule of the model.
    """
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    sender, sender_name = _single_address(msg)
    body_part = msg.get_body(preferencelist=("plain",))
    body = ""
    if body_part is not None:
        body = _text(body_part)
    documents: list[Document] = []
    submission = None
    for part in msg.iter_attachments():
        filename = part.get_filename() or ""
        content = part.get_payload(decode=True)
        if not isinstance(content, bytes):
            raise MalformedMessageError(f"attachment {filename!r} has no content")
        if filename.upper() == XDM_ZIP_NAME:
            if submission is not None:
                raise MalformedMessageError(f"two {XDM_ZIP_NAME} in one message")
            package = read_xdm(content)
            submission = package.submission
            documents[0:0] = [
                document_from_entry(entry, body_bytes)
                for entry, body_bytes in zip(
                    submission.entries, package.contents, strict=True
                )
            ]
        elif part.get_content_type() == MIME_PDF:
            documents.append(Document.pdf(content, filename=filename or "document.pdf"))
        else:
            documents.append(
                Document.other(
                    content,
                    filename=filename or "attachment",
                    mime_type=part.get_content_type(),
                )
            )
    ins_header = _header(msg, H_INS)
    ins_qualified = None
    patient = author = None
    if submission is not None:
        if ins_header not in (INS_QUALIFIED, INS_NOT_QUALIFIED):
            raise MalformedMessageError(f"{H_INS} must be O or N with a CDA")
        ins_qualified = ins_header == INS_QUALIFIED
        author = submission.author
        try:
            patient = dataclasses.replace(
                submission.entries[0].patient, qualified=ins_qualified
            )
        except InvalidFieldError as exc:
            raise MalformedMessageError(f"{H_INS}: O without the INS traits") from exc
    elif ins_header is not None or _header(msg, H_CODECDA) is not None:
        raise MalformedMessageError(f"{H_INS}/{H_CODECDA} without a CDA document")
    references = tuple(str(msg.get("References", "")).split())
    report = Report(
        sender=sender,
        sender_name=sender_name,
        to=_addresses(msg, "To"),
        cc=_addresses(msg, "Cc"),
        author=author,
        patient=patient,
        documents=tuple(documents),
        body=body,
        subject=str(msg.get("Subject", "")),
        read_receipt=msg.get("Disposition-Notification-To") is not None,
        end_of_thread=_header(msg, H_MES) == MES_END_OF_THREAD,
        copy_treating_doctor=_header(msg, H_COPY_TREATING) == COPY_TREATING_YES,
        in_reply_to=_header(msg, "In-Reply-To"),
        references=references,
    )
    if report.cda_documents and report.subject == report_subject(report):
        report = dataclasses.replace(report, subject=None)
    date_header = msg.get("Date")
    date = getattr(date_header, "datetime", None)
    return ReceivedMessage(
        report=report,
        message_id=_header(msg, "Message-ID"),
        date=date if isinstance(date, dt.datetime) else None,
        product=_header(msg, H_NIL),
        cda_codes=tuple(
            c.strip() for c in (_header(msg, H_CODECDA) or "").split(",") if c.strip()
        ),
        ins_qualified=ins_qualified,
        submission=submission,
    )


def _check_msg_id(field: str, value: str) -> None:
    # RFC 5322 §3.6.4: msg-id = "<" id-left "@" id-right ">".
    inner = value[1:-1]
    if (
        not (value.startswith("<") and value.endswith(">"))
        or "@" not in inner
        or any(c in inner for c in "<> \r\n")
    ):
        raise InvalidFieldError(field, f"not a <id@domain> Message-ID: {value!r}")


def _header(msg: EmailMessage, name: str) -> str | None:
    value = msg.get(name)
    return None if value is None else str(value).strip()


def _single_address(msg: EmailMessage) -> tuple[str, str | None]:
    header = msg.get("From")
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    if len(addresses) != 1:
        raise MalformedMessageError("From must name exactly one address")
    address = addresses[0]
    return address.addr_spec, address.display_name or None


def _addresses(msg: EmailMessage, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for header in msg.get_all(name, []):
        found.extend(a.addr_spec for a in getattr(header, "addresses", ()))
    return tuple(found)


def _text(part: MIMEPart) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeDecodeError) as exc:
        raise MalformedMessageError(f"text part cannot be decoded: {exc}") from exc
    if not isinstance(content, str):
        raise MalformedMessageError("text part is not text")
    return content.replace("\r\n", "\n")
