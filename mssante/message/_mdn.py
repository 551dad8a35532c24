"""Message disposition notifications (RFC 8098), composed and parsed.

Owns :func:`compose_mdn` (practice software acknowledging, or refusing to
integrate, a received document) and :func:`parse_mdn`. An MDN is a
``multipart/report; report-type=disposition-notification`` (RFC 6522) whose
second part holds ``Reporting-UA``, ``Original-Recipient``,
``Final-Recipient``, ``Original-Message-ID`` and ``Disposition``.

The MSSanté integration errors (ANS, "Guide d'intégration MSSanté des LPS")
travel as the disposition modifier ``Error: <code>^<label>`` after
``processed``, and the MDN subject then starts with
``[KO Intégration système !][<code>]``.

What must stay true: an MDN is composed only for a message that asked for
one (``Disposition-Notification-To``, RFC 8098 §2.1) and goes to that
address; a composed MDN parses back to an equal :class:`Disposition`.
"""

from __future__ import annotations

import email.policy
import email.utils
import enum
import hashlib
from dataclasses import dataclass
from email.message import Message, MIMEPart
from email.parser import BytesParser
from typing import TYPE_CHECKING

from mssante.message._errors import (
    InvalidFieldError,
    MalformedMessageError,
    MalformedReceiptError,
)
from mssante.message._report import (
    compose_report,
    field_block,
    header_section,
    human_text,
    parse_report,
    returned_part,
    typed_value,
)

if TYPE_CHECKING:
    import datetime as dt

REPORT_TYPE_MDN = "disposition-notification"
KO_SUBJECT_PREFIX = "[KO Intégration système !]"


class ActionMode(enum.Enum):
    """RFC 8098 §3.2.6.1: whether a person or the software acted."""

    MANUAL = "manual-action"
    AUTOMATIC = "automatic-action"


class SendingMode(enum.Enum):
    """RFC 8098 §3.2.6.1: whether the MDN was sent by a person or automatically."""

    MANUAL = "MDN-sent-manually"
    AUTOMATIC = "MDN-sent-automatically"


class DispositionType(enum.Enum):
    """RFC 8098 §3.2.6.2: what was done with the message."""

    DISPLAYED = "displayed"
    DELETED = "deleted"
    DISPATCHED = "dispatched"
    PROCESSED = "processed"


class IntegrationErrorCode(enum.IntEnum):
    """The MSSanté integration error codes, sent by the receiving software."""

    E900_WRONG_DOCUMENT_VERSION = 900
    E901_AUTHOR_NOT_ALLOWED = 901
    E902_UNKNOWN_PATIENT = 902
    E903_NO_INS = 903
    E904_INS_MISMATCH = 904
    E905_INS_TRAITS_INCOMPLETE = 905
    E906_OTHER = 906

    @property
    def label(self) -> str:
        """The default label sent after the code."""
        return INTEGRATION_ERROR_LABELS[self]


INTEGRATION_ERROR_LABELS = {
    IntegrationErrorCode.E900_WRONG_DOCUMENT_VERSION: "Version du document incorrecte",
    IntegrationErrorCode.E901_AUTHOR_NOT_ALLOWED: (
        "Auteur non autorisé à remplacer ou supprimer le document"
    ),
    IntegrationErrorCode.E902_UNKNOWN_PATIENT: "Patient inconnu",
    IntegrationErrorCode.E903_NO_INS: "INS absent du document",
    IntegrationErrorCode.E904_INS_MISMATCH: "INS non concordant",
    IntegrationErrorCode.E905_INS_TRAITS_INCOMPLETE: "Traits d'identité INS incomplets",
    IntegrationErrorCode.E906_OTHER: "Autre erreur d'intégration",
}


@dataclass(frozen=True, slots=True)
class IntegrationError:
    """An integration error: its code and the label sent with it."""

    code: IntegrationErrorCode
    label: str

    def __post_init__(self) -> None:
        if any(c in self.label for c in "^\r\n"):
            raise InvalidFieldError("integration_error.label", "no ^ nor line break")

    @classmethod
    def of(cls, code: IntegrationErrorCode) -> IntegrationError:
        """The error with its default label."""
        return cls(code, code.label)


@dataclass(frozen=True, slots=True, kw_only=True)
class Disposition:
    """The ``Disposition`` field (RFC 8098 §3.2.6)."""

    type: DispositionType
    action_mode: ActionMode = ActionMode.AUTOMATIC
    sending_mode: SendingMode = SendingMode.AUTOMATIC
    error: IntegrationError | None = None

    def __post_init__(self) -> None:
        if self.error is not None and self.type is not DispositionType.PROCESSED:
            raise InvalidFieldError(
                "disposition.error", "an integration error is processed/Error"
            )

    def field_value(self) -> str:
        """The field value, e.g. ``automatic-action/MDN-sent-automatically; processed``."""
        value = f"{self.action_mode.value}/{self.sending_mode.value}; {self.type.value}"
        if self.error is not None:
            value += f"/Error: {self.error.code.value}^{self.error.label}"
        return value

    @classmethod
    def parse(cls, value: str) -> Disposition:
        """Read a ``Disposition`` field value; raises MalformedReceiptError."""
        modes, semicolon, rest = value.partition(";")
        action, slash, sending = modes.strip().partition("/")
        if not semicolon or not slash:
            raise MalformedReceiptError(f"not an RFC 8098 disposition: {value!r}")
        kind, _, modifier = rest.strip().partition("/")
        try:
            parsed = cls(
                type=DispositionType(kind.strip().lower()),
                action_mode=ActionMode(action.strip().lower()),
                sending_mode=_sending_mode(sending.strip()),
                error=_integration_error(modifier.strip())
                if modifier.strip()
                else None,
            )
        except (ValueError, InvalidFieldError) as exc:
            raise MalformedReceiptError(f"disposition {value!r}: {exc}") from exc
        return parsed


@dataclass(frozen=True, slots=True)
class DispositionNotification:
    """A parsed MDN."""

    disposition: Disposition
    final_recipient: str
    original_recipient: str | None
    original_message_id: str | None
    reporting_ua: str | None
    subject: str
    message_id: str | None
    returned_headers: bytes | None
    text: str


def compose_mdn(
    *,
    original: bytes,
    final_recipient: str,
    disposition: Disposition,
    reporting_ua: str,
    from_address: str,
    message_id: str,
    now: dt.datetime,
    text: str | None = None,
) -> bytes:
    """An MDN answering ``original``.

    Args:
        original: the received message (its headers at least).
        final_recipient: the mailbox that received it.
        disposition: what was done; with an integration error for a refusal.
        reporting_ua: the practice software (``Reporting-UA``).
        from_address: the MDN's ``From`` (the recipient's mailbox).
        message_id: the MDN's own ``Message-ID``.
        now: its ``Date`` (aware).
        text: the human-readable part; a default one says what happened.

    Raises:
        MalformedMessageError: the original asked no MDN
            (no ``Disposition-Notification-To``, RFC 8098 §2.1).
        InvalidFieldError: a naive ``now``, a field with a line break.
    """
    if now.tzinfo is None:
        raise InvalidFieldError("now", "needs a time zone")
    headers = header_section(original)
    parsed = BytesParser(policy=email.policy.default).parsebytes(
        headers, headersonly=True
    )
    notify = parsed.get("Disposition-Notification-To")
    # The stdlib header registry does not know this field: read its mailbox list.
    addresses = [a for _, a in email.utils.getaddresses([str(notify or "")]) if a]
    if not addresses:
        raise MalformedMessageError(
            "the original asks no MDN (Disposition-Notification-To)"
        )
    to = addresses[0]
    original_id = parsed.get("Message-ID")
    original_subject = str(parsed.get("Subject", ""))
    original_recipient = parsed.get("Original-Recipient")
    machine = MIMEPart(policy=email.policy.SMTP)
    machine["Content-Type"] = "message/disposition-notification"
    # RFC 8098 §3.1: the disposition-notification fields.
    machine.set_payload(
        [
            field_block(
                [
                    ("Reporting-UA", reporting_ua),
                    (
                        "Original-Recipient",
                        None if original_recipient is None else str(original_recipient),
                    ),
                    ("Final-Recipient", f"rfc822; {final_recipient}"),
                    (
                        "Original-Message-ID",
                        None if original_id is None else str(original_id),
                    ),
                    ("Disposition", disposition.field_value()),
                ]
            )
        ]
    )
    out_headers = [
        ("From", from_address),
        ("To", to),
        ("Subject", _subject(disposition, original_subject)),
        ("Date", email.utils.format_datetime(now)),
        ("Message-ID", message_id),
    ]
    if original_id is not None:
        out_headers.append(("References", str(original_id)))
    if disposition.action_mode is ActionMode.AUTOMATIC:
        # RFC 3834 §5: an automatic response says so.
        out_headers.append(("Auto-Submitted", "auto-replied"))
    seed = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:32]
    return compose_report(
        headers=out_headers,
        report_type=REPORT_TYPE_MDN,
        human_text=text
        if text is not None
        else _human_text(disposition, original_subject),
        machine=machine,
        returned=headers,
        returned_full=False,
        boundary=f"=_mdn_{seed}",
    )


def parse_mdn(data: bytes) -> DispositionNotification:
    """Parse an MDN (RFC 8098 in RFC 6522).

    Raises:
        MalformedReceiptError: not a disposition-notification report, no
            ``message/disposition-notification`` part, a missing or bad field.
    """
    msg, parts = parse_report(data, REPORT_TYPE_MDN)
    part = next(
        (
            p
            for p in parts
            if p.get_content_type() == "message/disposition-notification"
        ),
        None,
    )
    if part is None:
        raise MalformedReceiptError("no message/disposition-notification part")
    payload = part.get_payload()
    # The stdlib parses a message/* part as an embedded message: the
    # notification fields are its header fields.
    fields = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(fields, Message):
        raise MalformedReceiptError("empty disposition-notification part")
    final = typed_value(_get(fields, "Final-Recipient"))
    disposition = _get(fields, "Disposition")
    if not final or not disposition:
        raise MalformedReceiptError(
            "Final-Recipient and Disposition are required (§3.1)"
        )
    returned, returned_id = returned_part(parts)
    own_id = msg.get("Message-ID")
    return DispositionNotification(
        disposition=Disposition.parse(disposition),
        final_recipient=final,
        original_recipient=typed_value(_get(fields, "Original-Recipient")),
        original_message_id=_get(fields, "Original-Message-ID") or returned_id,
        reporting_ua=_get(fields, "Reporting-UA"),
        subject=str(msg.get("Subject", "")),
        message_id=None if own_id is None else str(own_id).strip(),
        returned_headers=returned,
        text=human_text(parts),
    )


def _get(block: Message, name: str) -> str | None:
    value = block.get(name)
    # RFC 5322 §2.2.3: unfolding removes the CRLF of a fold, nothing else.
    return (
        None
        if value is None
        else str(value).replace("\r\n", "").replace("\n", "").strip()
    )


def _sending_mode(value: str) -> SendingMode:
    for mode in SendingMode:
        if mode.value.lower() == value.lower():
            return mode
    raise MalformedReceiptError(f"unknown sending mode {value!r}")


def _integration_error(modifier: str) -> IntegrationError:
    name, colon, detail = modifier.partition(":")
    code, caret, label = detail.strip().partition("^")
    if name.strip().lower() != "error" or not colon or not caret or not code.isdigit():
        raise MalformedReceiptError(
            f"not an MSSanté Error: <code>^<label>: {modifier!r}"
        )
    return IntegrationError(IntegrationErrorCode(int(code)), label.strip())


def _subject(disposition: Disposition, original_subject: str) -> str:
    if disposition.error is not None:
        return f"{KO_SUBJECT_PREFIX}[{disposition.error.code.value}] {original_subject}"
    return f"{_TITLES[disposition.type]} : {original_subject}"


_TITLES = {
    DispositionType.DISPLAYED: "Accusé de lecture",
    DispositionType.PROCESSED: "Accusé de traitement",
    DispositionType.DISPATCHED: "Accusé de transmission",
    DispositionType.DELETED: "Accusé de suppression",
}


def _human_text(disposition: Disposition, original_subject: str) -> str:
    if disposition.error is not None:
        return (
            f"Le message « {original_subject} » n'a pas pu être intégré.\n"
            f"Erreur {disposition.error.code.value} : {disposition.error.label}\n"
        )
    return (
        f"Le message « {original_subject} » a été traité ({disposition.type.value}).\n"
    )
