"""The ``multipart/report`` container (RFC 6522) shared by DSNs and MDNs.

Owns the three-part layout: a human-readable ``text/plain`` part, the
machine-readable part (``message/delivery-status`` or
``message/disposition-notification``), and the returned original as
``text/rfc822-headers`` or ``message/rfc822``. The returned bytes are kept
as given (never re-folded).
"""

from __future__ import annotations

import email.policy
import email.utils
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from typing import TYPE_CHECKING

from mssante.message._errors import InvalidFieldError, MalformedReceiptError

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence

SMTP = email.policy.SMTP


def field_block(fields: Sequence[tuple[str, str | None]]) -> Message:
    """A block of ``Name: value`` fields (RFC 3464 §2.1); None values are left out."""
    block = Message(policy=SMTP)
    for name, value in fields:
        if value is None:
            continue
        if "\r" in value or "\n" in value:
            raise InvalidFieldError(name, "must not hold a line break")
        block[name] = value
    return block


def compose_report(
    *,
    headers: Sequence[tuple[str, str]],
    report_type: str,
    human_text: str,
    machine: MIMEPart,
    returned: bytes | None,
    returned_full: bool,
    boundary: str,
) -> bytes:
    """A ``multipart/report`` message (RFC 6522 §3) with CRLF line ends."""
    # MIMEPart, not EmailMessage: parts carry no MIME-Version of their own.
    msg = MIMEPart(policy=SMTP)
    for name, value in headers:
        msg[name] = value
    msg["MIME-Version"] = "1.0"
    # RFC 6522 §3: report-type names the machine-readable second part.
    msg["Content-Type"] = (
        f'multipart/report; report-type={report_type}; boundary="{boundary}"'
    )
    text = MIMEPart(policy=SMTP)
    text.set_content(human_text, charset="utf-8", cte="quoted-printable")
    msg.attach(text)
    msg.attach(machine)
    if returned is not None:
        part = MIMEPart(policy=SMTP)
        if returned_full:
            # RFC 3461 §4.3 RET=FULL: the whole original as message/rfc822.
            part["Content-Type"] = "message/rfc822"
            part.set_payload(returned.decode("ascii", "surrogateescape"))
        else:
            # RFC 6522 §4 / RFC 3461 §4.3 RET=HDRS: text/rfc822-headers.
            cte = "7bit" if returned.isascii() else "8bit"
            part.set_content(returned, "text", "rfc822-headers", cte=cte)
        msg.attach(part)
    return msg.as_bytes(policy=SMTP)


def header_section(message: bytes) -> bytes:
    """The header section of a message, up to and including the blank line."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = message.find(separator)
        if end >= 0:
            return message[: end + len(separator)]
    return message


def parse_report(data: bytes, report_type: str) -> tuple[EmailMessage, list[MIMEPart]]:
    """The message and its parts, checked to be a ``multipart/report`` of that type.

    Raises:
        MalformedReceiptError: not multipart/report, or another report-type.
    """
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    if msg.get_content_type() != "multipart/report":
        raise MalformedReceiptError(f"{msg.get_content_type()} is not multipart/report")
    found = str(msg.get_param("report-type", "", header="content-type")).lower()
    if found != report_type:
        raise MalformedReceiptError(f"report-type is {found!r}, not {report_type}")
    parts = list(msg.iter_parts())
    return msg, parts


def typed_value(value: str | None) -> str | None:
    """The value of a typed field such as ``rfc822; a@b`` (RFC 3464 §2.1.2)."""
    if value is None:
        return None
    kind, semicolon, rest = value.partition(";")
    return (rest if semicolon else kind).strip()


def field_date(value: str | None) -> dt.datetime | None:
    """An RFC 5322 date-time field value, or None; raises MalformedReceiptError."""
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError) as exc:
        raise MalformedReceiptError(f"not an RFC 5322 date: {value!r}") from exc


def returned_part(parts: list[MIMEPart]) -> tuple[bytes | None, str | None]:
    """The returned headers (bytes) and the original Message-ID, from part 3."""
    if len(parts) < 3:
        return None, None
    part = parts[2]
    if part.get_content_type() == "message/rfc822":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            return None, None
        raw = inner.as_bytes(policy=SMTP)
        headers = header_section(raw)
    else:
        content = part.get_payload(decode=True)
        headers = content if isinstance(content, bytes) else b""
    parsed = BytesParser(policy=email.policy.default).parsebytes(
        headers, headersonly=True
    )
    message_id = parsed.get("Message-ID")
    return headers, None if message_id is None else str(message_id).strip()


def human_text(parts: list[MIMEPart]) -> str:
    """The first part's text (the human-readable explanation), LF line ends."""
    if not parts or parts[0].get_content_maintype() != "text":
        return ""
    try:
        content = parts[0].get_content()
    except (LookupError, UnicodeDecodeError):
        return ""
    return content.replace("\r\n", "\n") if isinstance(content, str) else ""
