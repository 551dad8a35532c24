"""FETCH data from the store's cached structure and the decrypted message.

Owns the RFC 3501 §7.4.2 forms: ENVELOPE, BODY and BODYSTRUCTURE, and the
``BODY[section]<partial>`` slices. What must stay true: header-only items
(ENVELOPE, BODYSTRUCTURE, ``BODY[HEADER...]`` of the top level) are answered
from the cached structure without decrypting the message file; the message
is decrypted (in memory only) when a body section asks for it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from mssante.proto import imap
    from relay.store import Address, BodyPart, Envelope, ParsedStructure

_FIELD_NAME: Final = re.compile(rb"^([^:\s]+)[ \t]*:", re.MULTILINE)


def _addresses(addrs: tuple[Address, ...]) -> object:
    if not addrs:
        return None
    return tuple((a.name, a.adl, a.mailbox, a.host) for a in addrs)


def envelope(e: Envelope) -> tuple[object, ...]:
    """RFC 3501 §7.4.2 ENVELOPE, fields in the RFC's order."""
    return (
        e.date,
        e.subject,
        _addresses(e.from_),
        _addresses(e.sender),
        _addresses(e.reply_to),
        _addresses(e.to),
        _addresses(e.cc),
        _addresses(e.bcc),
        e.in_reply_to,
        e.message_id,
    )


def _params(params: tuple[tuple[str, str], ...]) -> object:
    if not params:
        return None
    return tuple(x for kv in params for x in kv)


def body_structure(part: BodyPart, *, extensible: bool) -> tuple[object, ...]:
    """BODYSTRUCTURE (``extensible``) or BODY (RFC 3501 §7.4.2)."""
    if part.is_multipart:
        items: list[object] = [
            body_structure(p, extensible=extensible) for p in part.parts
        ]
        items.append(part.subtype)
        if extensible:
            items.extend(
                [
                    _params(part.params),
                    _disposition(part),
                    _language(part),
                    part.location,
                ]
            )
        # RFC 3501 §9: body-type-mpart is 1*body SP media-subtype, no space
        # between the bodies; our writer separates list items by one space,
        # which is what every client and server actually send.
        return tuple(items)
    out: list[object] = [
        part.type,
        part.subtype,
        _params(part.params),
        part.id,
        part.description,
        part.encoding,
        part.size,
    ]
    if part.is_message and part.envelope is not None and part.body is not None:
        out.append(envelope(part.envelope))
        out.append(body_structure(part.body, extensible=extensible))
        out.append(part.lines or 0)
    elif part.type == "text":
        out.append(part.lines or 0)
    if extensible:
        out.extend([part.md5, _disposition(part), _language(part), part.location])
    return tuple(out)


def _disposition(part: BodyPart) -> object:
    if part.disposition is None:
        return None
    kind, params = part.disposition
    return (kind, _params(params))


def _language(part: BodyPart) -> object:
    if not part.language:
        return None
    return part.language


def header_fields(header: bytes, fields: tuple[str, ...], *, exclude: bool) -> bytes:
    """The header lines named in ``fields`` (or all others), then CRLF.

    RFC 3501 §6.4.5 HEADER.FIELDS / HEADER.FIELDS.NOT: continuation lines go
    with their field; the blank line that ends a header is kept.
    """
    wanted = {f.encode("ascii", "replace").upper() for f in fields}
    out = bytearray()
    keep = False
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out += line
            continue
        m = _FIELD_NAME.match(line)
        name = m.group(1).upper() if m else b""
        keep = (name in wanted) != exclude
        if keep:
            out += line
    out += b"\r\n"
    return bytes(out)


class SectionError(LookupError):
    """The section names a part the message does not have."""


def section_bytes(
    section: imap.Section, structure: ParsedStructure, message: bytes | None
) -> bytes:
    """The bytes of ``section`` (RFC 3501 §6.4.5).

    ``message`` may be ``None`` only for top-level header sections
    (:func:`needs_message` is false).
    """
    if section.part:
        try:
            part = structure.part(section.part)
        except KeyError:
            raise SectionError(section.spec()) from None
    else:
        part = structure.body
    text = section.text
    if text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"):
        # Of a message/rfc822 part, the encapsulated message's; at the top
        # level, the message's own.
        if section.part:
            if part.body is None:
                raise SectionError(section.spec())
            head_start, body_start = part.body.header_start, part.body.body_start
            body_end = part.body.body_end
        else:
            head_start, body_start, body_end = 0, part.body_start, structure.size
        if text == "TEXT":
            return _slice(message, body_start, body_end)
        header = (
            structure.header
            if not section.part
            else _slice(message, head_start, body_start)
        )
        if text == "HEADER":
            return header
        return header_fields(header, section.fields, exclude=text.endswith(".NOT"))
    if text == "MIME":
        return _slice(message, part.header_start, part.body_start)
    if not section.part:
        return _slice(message, 0, structure.size)
    return _slice(message, part.body_start, part.body_end)


def needs_message(section: imap.Section) -> bool:
    return bool(section.part) or section.text not in (
        "HEADER",
        "HEADER.FIELDS",
        "HEADER.FIELDS.NOT",
    )


def _slice(message: bytes | None, start: int, end: int) -> bytes:
    if message is None:  # pragma: no cover - needs_message guards it
        raise SectionError("message not loaded")
    return message[start:end]


def partial(data: bytes, item: imap.FetchItem) -> bytes:
    if item.partial is None:
        return data
    origin, length = item.partial
    return data[origin : None if length is None else origin + length]
