"""Delivery status notifications (RFC 3464), composed and parsed.

Owns :func:`compose_dsn`, which the relay uses for its delivery notices, and
:func:`parse_dsn`, which the client uses to read them. A DSN is a
``multipart/report; report-type=delivery-status`` (RFC 6522): a human text,
a ``message/delivery-status`` part with one per-message block and one block
per recipient, and the original's headers (RET=HDRS) or the whole original
(RET=FULL, RFC 3461 §4.3).

What must stay true: every recipient's status class agrees with its action
(RFC 3464 §2.3.4: failed is 5.x.x, delayed 4.x.x, the others 2.x.x); the
same arguments give the same bytes; a composed DSN parses back to equal
:class:`RecipientStatus` values.
"""

from __future__ import annotations

import email.policy
import email.utils
import enum
import hashlib
from dataclasses import dataclass
from email.message import Message, MIMEPart
from typing import TYPE_CHECKING

from mssante.message._errors import InvalidFieldError, MalformedReceiptError
from mssante.message._report import (
    compose_report,
    field_block,
    field_date,
    header_section,
    human_text,
    parse_report,
    returned_part,
    typed_value,
)

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence

REPORT_TYPE_DSN = "delivery-status"


class Action(enum.Enum):
    """RFC 3464 §2.3.3: what happened to the message for one recipient."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


# RFC 3464 §2.3.4 / RFC 3463 §3.1: the status class each action requires.
_STATUS_CLASS = {
    Action.FAILED: "5",
    Action.DELAYED: "4",
    Action.DELIVERED: "2",
    Action.RELAYED: "2",
    Action.EXPANDED: "2",
}


def _check_status(status: str) -> None:
    # RFC 3463 §2: class "." subject "." detail; subject and detail 1-3 digits.
    parts = status.split(".")
    if (
        len(parts) != 3
        or parts[0] not in ("2", "4", "5")
        or not all(p.isascii() and p.isdigit() and 1 <= len(p) <= 3 for p in parts[1:])
    ):
        raise InvalidFieldError("status", f"not an RFC 3463 status code: {status!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientStatus:
    """The per-recipient fields of a DSN (RFC 3464 §2.3)."""

    final_recipient: str
    action: Action
    status: str
    original_recipient: str | None = None
    remote_mta: str | None = None
    diagnostic_code: str | None = None  # e.g. "550 5.1.1 unknown" (type smtp)
    last_attempt_date: dt.datetime | None = None
    will_retry_until: dt.datetime | None = None

    def __post_init__(self) -> None:
        _check_status(self.status)
        if self.status[0] != _STATUS_CLASS[self.action]:
            raise InvalidFieldError(
                "status",
                f"{self.action.value} needs a {_STATUS_CLASS[self.action]}.x.x status",
            )
        if self.action is not Action.DELAYED and self.will_retry_until is not None:
            raise InvalidFieldError("will_retry_until", "only for a delayed action")


@dataclass(frozen=True, slots=True)
class DeliveryStatusNotification:
    """A parsed DSN."""

    reporting_mta: str
    original_envelope_id: str | None
    arrival_date: dt.datetime | None
    recipients: tuple[RecipientStatus, ...]
    original_message_id: str | None
    returned_headers: bytes | None
    message_id: str | None
    text: str


def compose_dsn(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    arrival_date: dt.datetime,
    recipients: Sequence[RecipientStatus],
    original: bytes,
    return_full: bool,
    notify_to: str,
    message_id: str,
    now: dt.datetime,
    from_address: str | None = None,
) -> bytes:
    """A DSN about ``original`` for the given recipients.

    Args:
        reporting_mta: the relay's host name (``Reporting-MTA: dns; ...``).
        original_envelope_id: the ENVID of the MAIL command (RFC 3461 §4.4).
        arrival_date: when the original arrived.
        recipients: one status each; at least one.
        original: the original message (at least its headers).
        return_full: RET=FULL (whole message) rather than RET=HDRS (headers).
        notify_to: the original envelope sender, the DSN's ``To``.
        message_id: the DSN's own ``Message-ID``.
        now: the DSN's ``Date`` (aware).
        from_address: the DSN's ``From``; ``MAILER-DAEMON@<reporting_mta>`` by default.

    Returns:
        The DSN bytes, CRLF line ends. Send it with an empty envelope sender
        (RFC 3461 §6.2), which is the caller's job.

    Raises:
        InvalidFieldError: no recipient, a naive date, a field with a line break.
    """
    if not recipients:
        raise InvalidFieldError("recipients", "a DSN reports on at least one recipient")
    for moment in (arrival_date, now):
        if moment.tzinfo is None:
            raise InvalidFieldError("date", "needs a time zone")
    actions = {r.action for r in recipients}
    machine = MIMEPart(policy=email.policy.SMTP)
    machine["Content-Type"] = "message/delivery-status"
    # RFC 3464 §2.2: per-message fields.
    per_message = field_block(
        [
            ("Original-Envelope-Id", original_envelope_id),
            ("Reporting-MTA", f"dns; {reporting_mta}"),
            ("Arrival-Date", email.utils.format_datetime(arrival_date)),
        ]
    )
    # RFC 3464 §2.3: per-recipient fields.
    blocks: list[Message | str] = [
        per_message,
        *(_recipient_block(r) for r in recipients),
    ]
    machine.set_payload(blocks)
    seed = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:32]
    return compose_report(
        headers=[
            ("From", from_address or f"MAILER-DAEMON@{reporting_mta}"),
            ("To", notify_to),
            ("Subject", _subject(actions)),
            ("Date", email.utils.format_datetime(now)),
            ("Message-ID", message_id),
            # RFC 3834 §5: a notification is an automatic response.
            ("Auto-Submitted", "auto-replied"),
        ],
        report_type=REPORT_TYPE_DSN,
        human_text=_human_text(reporting_mta, recipients),
        machine=machine,
        returned=original if return_full else header_section(original),
        returned_full=return_full,
        boundary=f"=_dsn_{seed}",
    )


def parse_dsn(data: bytes) -> DeliveryStatusNotification:
    """Parse a DSN (RFC 3464 in RFC 6522).

    Raises:
        MalformedReceiptError: not a delivery-status report, no
            ``message/delivery-status`` part, a missing or invalid field.
    """
    msg, parts = parse_report(data, REPORT_TYPE_DSN)
    status = next(
        (p for p in parts if p.get_content_type() == "message/delivery-status"), None
    )
    if status is None:
        raise MalformedReceiptError("no message/delivery-status part")
    payload = status.get_payload()
    blocks = (
        [b for b in payload if isinstance(b, Message)]
        if isinstance(payload, list)
        else []
    )
    if len(blocks) < 2:
        raise MalformedReceiptError(
            "delivery-status needs per-message and recipient blocks"
        )
    per_message = blocks[0]
    reporting = typed_value(per_message.get("Reporting-MTA"))
    if not reporting:
        raise MalformedReceiptError("Reporting-MTA is required (RFC 3464 §2.2.2)")
    try:
        recipients = tuple(_recipient(block) for block in blocks[1:])
    except InvalidFieldError as exc:
        raise MalformedReceiptError(f"delivery-status: {exc}") from exc
    returned, original_id = returned_part(parts)
    own_id = msg.get("Message-ID")
    return DeliveryStatusNotification(
        reporting_mta=reporting,
        original_envelope_id=_get(per_message, "Original-Envelope-Id"),
        arrival_date=field_date(_get(per_message, "Arrival-Date")),
        recipients=recipients,
        original_message_id=original_id,
        returned_headers=returned,
        message_id=None if own_id is None else str(own_id).strip(),
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


def _recipient(block: Message) -> RecipientStatus:
    final = typed_value(_get(block, "Final-Recipient"))
    action = (_get(block, "Action") or "").lower()
    status = _get(block, "Status")
    if not final or not status:
        raise MalformedReceiptError("Final-Recipient and Status are required (§2.3)")
    try:
        parsed_action = Action(action)
    except ValueError as exc:
        raise MalformedReceiptError(f"unknown Action {action!r}") from exc
    diagnostic = _get(block, "Diagnostic-Code")
    return RecipientStatus(
        final_recipient=final,
        action=parsed_action,
        # RFC 3464 §2.3.4: a status may be followed by a comment in parentheses.
        status=status.split("(")[0].strip(),
        original_recipient=typed_value(_get(block, "Original-Recipient")),
        remote_mta=typed_value(_get(block, "Remote-MTA")),
        diagnostic_code=typed_value(diagnostic),
        last_attempt_date=field_date(_get(block, "Last-Attempt-Date")),
        will_retry_until=field_date(_get(block, "Will-Retry-Until")),
    )


def _recipient_block(r: RecipientStatus) -> Message:
    return field_block(
        [
            ("Original-Recipient", _rfc822(r.original_recipient)),
            ("Final-Recipient", _rfc822(r.final_recipient)),
            ("Action", r.action.value),
            ("Status", r.status),
            ("Remote-MTA", None if r.remote_mta is None else f"dns; {r.remote_mta}"),
            (
                "Diagnostic-Code",
                None if r.diagnostic_code is None else f"smtp; {r.diagnostic_code}",
            ),
            ("Last-Attempt-Date", _date(r.last_attempt_date)),
            ("Will-Retry-Until", _date(r.will_retry_until)),
        ]
    )


def _rfc822(address: str | None) -> str | None:
    # RFC 3464 §2.3.1-2.3.2: address-type "rfc822" for Internet mail addresses.
    return None if address is None else f"rfc822; {address}"


def _date(moment: dt.datetime | None) -> str | None:
    return None if moment is None else email.utils.format_datetime(moment)


def _subject(actions: set[Action]) -> str:
    if Action.FAILED in actions:
        return "Undelivered Mail Returned to Sender"
    if Action.DELAYED in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _human_text(reporting_mta: str, recipients: Sequence[RecipientStatus]) -> str:
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    for r in recipients:
        line = f"<{r.final_recipient}>: {r.action.value} ({r.status})"
        if r.diagnostic_code:
            line += f": {r.diagnostic_code}"
        lines.append(line)
    return "\n".join(lines) + "\n"
