"""MIME plumbing shared by S/MIME and PGP/MIME: headers, bodies, line ends.

Owns the few MIME operations the crypto layers need, on bytes: CRLF
canonicalisation, splitting a message into outer header fields and the MIME
entity to protect, reading Content-Type and Content-Transfer-Encoding, and
base64 bodies. What must stay true: pure functions, bytes in and out; a
header line without a colon raises :class:`MalformedError`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Final

from mssante.crypto._errors import MalformedError

if TYPE_CHECKING:
    from email.message import Message

CRLF: Final = b"\r\n"


def canonicalize(data: bytes) -> bytes:
    """CRLF line ends everywhere (RFC 8551 §3.1.1, RFC 5322 §2.1).

    Lone CRs are left alone. Already canonical input (every LF after a CR,
    the case for mail off the wire) is returned as is, without copying.
    """
    if data.count(b"\n") == data.count(CRLF):
        return data
    return data.replace(CRLF, b"\n").replace(b"\n", CRLF)


def split_header_block(data: bytes) -> tuple[bytes, bytes]:
    """Header block (without the blank line) and body."""
    if data.startswith((CRLF, b"\n")):
        return b"", data[2 if data.startswith(CRLF) else 1 :]
    crlf = data.find(b"\r\n\r\n")
    # A bare-LF blank line counts only if it comes first; search no further.
    lf = data.find(b"\n\n", 0, len(data) if crlf < 0 else crlf)
    if lf >= 0:
        return data[:lf], data[lf + 2 :]
    if crlf >= 0:
        return data[:crlf], data[crlf + 4 :]
    return data, b""


def _fields(block: bytes) -> list[bytes]:
    """Header fields, each with its folded continuation lines (RFC 5322 §2.2.3)."""
    fields: list[bytes] = []
    for line in canonicalize(block).split(CRLF):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += CRLF + line
        elif line:
            fields.append(line)
    return fields


def _field_name(field: bytes) -> bytes:
    name, sep, _ = field.partition(b":")
    if not sep:
        raise MalformedError("header line without a colon")
    return name.strip().lower()


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """Split a message into outer header fields and the MIME entity.

    Returns:
        ``(outer, entity)``: ``outer`` holds the non-``Content-*`` fields
        (CRLF-terminated, ``MIME-Version`` dropped); ``entity`` holds the
        ``Content-*`` fields, a blank line and the body, canonicalised.

    Raises:
        MalformedError: a header line without a colon.
    """
    block, body = split_header_block(message)
    outer: list[bytes] = []
    inner: list[bytes] = []
    for field in _fields(block):
        name = _field_name(field)
        if name.startswith(b"content-"):
            inner.append(field)
        elif name != b"mime-version":
            outer.append(field)
    head = b"".join(f + CRLF for f in outer)
    entity = b"".join([*(f + CRLF for f in inner), CRLF, canonicalize(body)])
    return head, entity


def join_message(outer: bytes, entity: bytes) -> bytes:
    """Put outer header fields back on an entity (inverse of split_message)."""
    if not outer:
        return entity
    return b"".join((outer, b"MIME-Version: 1.0", CRLF, entity))


def headers_of(block: bytes) -> Message:
    return BytesHeaderParser().parsebytes(block + CRLF + CRLF)


def mime_type(headers: Message) -> str:
    if headers.get("content-type") is None:
        return "text/plain"  # RFC 2045 §5.2 default
    return headers.get_content_type()


def decode_body(headers: Message, body: bytes) -> bytes:
    encoding = str(headers.get("content-transfer-encoding", "7bit")).strip().lower()
    if encoding == "base64":
        try:
            return binascii.a2b_base64(body)
        except binascii.Error as exc:
            raise MalformedError(f"bad base64 body: {exc}") from exc
    if encoding in {"7bit", "8bit", "binary"}:
        return body
    raise MalformedError(f"transfer encoding {encoding!r} not allowed for CMS")


def base64_lines(data: bytes) -> bytes:
    # RFC 2045 §6.8: lines of at most 76 characters.
    return base64.encodebytes(data).replace(b"\n", CRLF)


def two_parts(headers: Message, body: bytes) -> tuple[bytes, bytes]:
    """The two body parts of a multipart/signed or multipart/encrypted body.

    RFC 1847 §2.1, §2.2: exactly two parts. Raises ``MalformedError``.
    """
    boundary = headers.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise MalformedError("multipart without a boundary")
    try:
        # RFC 2046 §5.1.1: boundary characters are a subset of ASCII.
        delimiter = CRLF + b"--" + boundary.encode("ascii")
    except UnicodeEncodeError as exc:
        raise MalformedError("boundary is not ASCII") from exc
    # RFC 2046 §5.1.1: the CRLF before "--boundary" belongs to the delimiter.
    pieces = (CRLF + canonicalize(body)).split(delimiter)
    if len(pieces) < 4 or not pieces[3].startswith(b"--"):
        raise MalformedError("multipart needs exactly two body parts")
    parts = []
    for piece in pieces[1:3]:
        padding, sep, part = piece.partition(CRLF)
        if not sep or padding.strip(b" \t"):
            raise MalformedError("bad multipart boundary line")
        parts.append(part)
    return parts[0], parts[1]


def new_boundary() -> bytes:
    """A boundary no content will contain (RFC 2046 §5.1.1: up to 70 chars)."""
    return b"----=_mssante_" + secrets.token_hex(16).encode("ascii")
