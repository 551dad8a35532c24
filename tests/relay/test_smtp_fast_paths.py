"""The SMTP path's fast paths give exactly what the slow code they replace gave.

- ``RelaySMTP._getaddr`` answers the plain ``<local@domain>`` and ``<>`` paths
  itself and leaves every other form to aiosmtpd's parser: for any argument
  it returns (or raises) what aiosmtpd's ``SMTP._getaddr`` does.
- ``_has_bare_line_ending`` (the newline decoder) says what the three counts
  it replaced said, for any bytes.
- ``parse_head`` gives the message object ``BytesHeaderParser`` (compat32)
  gives for the header section, every attribute of it.
- ``RelaySMTP._read_data`` (parts joined once, dots found by ``memchr``)
  returns what the bytearray version it replaced returned, whatever the
  chunking, the stream limit and the size limit, and leaves the same bytes
  in the stream.
"""

from __future__ import annotations

import asyncio
import email.policy
import itertools
import string
from email.parser import BytesHeaderParser

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.smtp.handler import _has_bare_line_ending, _header_fields, parse_head
from relay.smtp.server import RelaySMTP, plain_path, unstuff

# -- MAIL FROM / RCPT TO paths ---------------------------------------------------

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
# Everything the parser treats specially, plus what the fast path must refuse:
# white space of several kinds, comments, quotes, escapes, brackets, routes,
# encoded-word openers, non-ASCII letters, controls.
TRICKY = ' \t\r\n\x0b\x00()<>[]\\",;:@.=?é€'

atoms = st.text(ATEXT, min_size=1, max_size=6)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
noise = st.text(ATEXT[:5] + TRICKY, max_size=6)
params = st.sampled_from(
    ["", " SIZE=100", "  BODY=8BITMIME", "\tSMTPUTF8", " (comment) SIZE=1", "x", " "]
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """Plain paths, with noise spliced in at random places now and then."""
    plain = draw(st.booleans())
    local = draw(
        dot_atoms
        if plain
        else st.one_of(dot_atoms, noise, dot_atoms.map(lambda s: '"' + s + '"'))
    )
    domain = draw(
        dot_atoms
        if plain
        else st.one_of(dot_atoms, noise, dot_atoms.map(lambda s: f"[{s}]"))
    )
    core = draw(
        st.sampled_from(
            [
                f"<{local}@{domain}>",
                f"<{local}@{domain}>",
                f"<{local}@{domain}>",
                f"<@{domain}:{local}@{domain}>",  # source route
                f"<{local}>",
                f"{local}@{domain}",
                f" <{local}@{domain}>",
                f"<{local}@{domain}",
                "<>",
                "<",
            ]
        )
    )
    text = core + draw(params)
    if not plain and draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(noise) + text[at:]
    return text


def _server(local_part_limit: int) -> RelaySMTP:
    # _getaddr reads nothing but local_part_limit: no connection is needed.
    server = RelaySMTP.__new__(RelaySMTP)
    server.local_part_limit = local_part_limit
    return server


def _outcome(call: object, arg: str) -> object:
    assert callable(call)
    try:
        return call(arg)
    except Exception as exc:  # noqa: BLE001 - the exception type is compared
        return type(exc)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(arg=st.one_of(paths(), st.text(ATEXT[:4] + TRICKY, max_size=12)))
@example(arg="<emetteur00@medecin.mssante.fr>")
@example(arg="<a@b> SIZE=1")
@example(arg="<a@b>  (c) SIZE=1")
@example(arg="<a@b>(c)")
@example(arg="<a@b>\x0bSIZE=1")
@example(arg="<=?utf-8?q?a?=@b>")
@example(arg="<a@=?utf-8?q?b?=>")
@example(arg="<a..b@c>")
@example(arg="<.a@c>")
@example(arg="<a@c.>")
@example(arg="<a@b@c>")
@example(arg="<é@b>")
@example(arg="<> SIZE=1")
@example(arg="<>x")
@example(arg="")
@example(arg="<")
def test_getaddr_fast_path_answers_as_aiosmtpd_parser(arg: str) -> None:
    for limit in (0, 3, 64):
        server = _server(limit)
        assert _outcome(server._getaddr, arg) == _outcome(
            lambda a, s=server: SMTP._getaddr(s, a), arg
        ), (arg, limit)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<emetteur00@medecin.mssante.fr>", ("emetteur00@medecin.mssante.fr", "")),
        ("<a.b+c@d.example> SIZE=100", ("a.b+c@d.example", "SIZE=100")),
        ("<>", ("<>", "")),
        ("<> SIZE=1", ("<>", " SIZE=1")),
    ],
)
def test_plain_paths_take_the_fast_path(arg: str, expected: tuple[str, str]) -> None:
    assert plain_path(arg) == expected


@pytest.mark.parametrize(
    "arg",
    [
        '<"a b"@example.org>',  # quoted local part
        "<@relay.example:a@example.org>",  # source route
        "<a@[192.0.2.1]>",  # address literal
        "<médecin@example.org>",  # UTF-8 (SMTPUTF8)
        "<=?utf-8?q?a?=@example.org>",  # encoded-word opener
        "<a@example.org> (comment)",
        "<a..b@example.org>",
        "a@example.org",  # no brackets
        " <a@example.org>",
        "",
    ],
)
def test_other_paths_go_to_aiosmtpd_parser(arg: str) -> None:
    assert plain_path(arg) is None


def test_fast_path_keeps_the_local_part_limit() -> None:
    assert _server(3)._getaddr("<abcd@example.org>") == (None, None)
    assert _server(4)._getaddr("<abcd@example.org>") == ("abcd@example.org", "")


# -- bare CR and LF ---------------------------------------------------------------


def _three_counts(data: bytes) -> bool:
    """The check the newline decoder replaced."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


pieces = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\n",
        b"\n\r",
        b"a",
        b"line",
        b"\x00",
        b"\t",
        b"\xff",
        b".",
    ]
)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(data=st.one_of(st.lists(pieces, max_size=40).map(b"".join), st.binary()))
@example(data=b"")
@example(data=b"\r")
@example(data=b"\n")
@example(data=b"a\r")
@example(data=b"\r\r\n")
@example(data=b"\r\n\n")
@example(data=b"\x00\r\n")
@example(data=b"\xff\r\n\xff")
def test_bare_line_ending_check_agrees_with_counting(data: bytes) -> None:
    assert _has_bare_line_ending(data) == _three_counts(data)


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"From: a\r\n\r\nbody\r\n", False),
        (b"no line ending at all", False),
        (b"From: a\r\n\r\nbody\n", True),
        (b"From: a\r\n\r\nbody\r", True),
        (b"From: a\r\n\r\nbo\rdy\r\n", True),
        (b"\n.\n", True),
    ],
)
def test_bare_cr_or_lf_is_found(data: bytes, bare: bool) -> None:
    assert _has_bare_line_ending(data) is bare


# -- DATA: the end of data and dot-stuffing ----------------------------------------


def _unstuff_by_replace(data: bytes) -> bytes:
    """The un-stuffing unstuff() replaced."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


async def _read_data_by_bytearray(
    reader: asyncio.StreamReader, limit: int
) -> bytes | None:
    """The DATA reader RelaySMTP._read_data replaced, with one fix: it kept
    two octets when a message went over the size limit (``del data[:-2]``),
    so when the part that went over also ended the data, the end was missed
    and the reader went on into the next commands; five are kept here."""
    data = bytearray()
    too_big = False
    while True:
        try:
            part = await reader.readuntil(b".\r\n")
        except asyncio.LimitOverrunError as exc:
            part = await reader.read(exc.consumed)
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("connection lost during DATA") from None
        if not too_big:
            data += part
            if limit and len(data) > limit + 3:
                too_big = True
                del data[:-5]
        elif part:
            data = data[-2:] + part
        if part.endswith(b".\r\n") and (
            (len(data) == 3 and not too_big) or data[-5:-3] == b"\r\n"
        ):
            break
    if too_big:
        return None
    del data[-3:]
    if data.startswith(b"."):
        del data[0]
    return bytes(data.replace(b"\r\n.", b"\r\n"))


wire_pieces = st.sampled_from(
    [
        b"\r\n",
        b"\r\n.",
        b".",
        b"..",
        b".\r\n",
        b"\r\n.\r\n",
        b"\n",
        b"\r",
        b"a",
        b"line",
    ]
)
wire = st.lists(wire_pieces, max_size=30).map(b"".join)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(data=st.one_of(wire, st.binary()))
@example(data=b"." * 200 + b"\r\n.x")  # past the dots looked at one by one
@example(data=b"a." * 100)
@example(data=b".\r\n.x")
@example(data=b"\n.")
def test_unstuff_removes_the_same_dots_as_replace(data: bytes) -> None:
    assert unstuff(data) == _unstuff_by_replace(data)


def _data_server(reader: asyncio.StreamReader, size_limit: int) -> RelaySMTP:
    # _read_data reads nothing but the stream and the size limit.
    server = RelaySMTP.__new__(RelaySMTP)
    server._reader = reader
    server.data_size_limit = size_limit
    return server


async def _fed(chunks: list[bytes], stream_limit: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=stream_limit)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


async def _both(
    chunks: list[bytes], stream_limit: int, size_limit: int
) -> tuple[object, object]:
    outcomes: list[object] = []
    for ours in (True, False):
        reader = await _fed(chunks, stream_limit)
        content: object
        try:
            if ours:
                content = await _data_server(reader, size_limit)._read_data()
            else:
                content = await _read_data_by_bytearray(reader, size_limit)
        except ConnectionResetError:
            content = ConnectionResetError
        outcomes.append((content, await reader.read()))  # and what is left
    return outcomes[0], outcomes[1]


@settings(max_examples=600, deadline=None, derandomize=True)
@given(
    body=st.one_of(wire, st.binary(max_size=200)),
    end=st.sampled_from([b"\r\n.\r\n", b".\r\n", b"\n.\r\n", b""]),
    after=st.sampled_from([b"", b"QUIT\r\n", b"MAIL FROM:<a@b>\r\n.\r\n"]),
    cuts=st.lists(st.integers(0, 300), max_size=4),
    stream_limit=st.sampled_from([4, 7, 64, 2**16]),
    size_limit=st.sampled_from([0, 5, 40, 2**20]),
)
@example(  # an empty message: the CRLF of the DATA line is the one before "."
    body=b"", end=b".\r\n", after=b"", cuts=[], stream_limit=64, size_limit=0
)
def test_read_data_returns_what_the_bytearray_reader_did(
    body: bytes,
    end: bytes,
    after: bytes,
    cuts: list[int],
    stream_limit: int,
    size_limit: int,
) -> None:
    stream = body + end + after
    marks = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(marks)]
    ours, theirs = asyncio.run(_both(chunks, stream_limit, size_limit))
    assert ours == theirs


@pytest.mark.parametrize(
    ("stream", "content", "left"),
    [
        (b".\r\nQUIT\r\n", b"", b"QUIT\r\n"),
        (b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n", b""),
        (b"..a\r\n.\r\n", b".a\r\n", b""),
        (b"a\n.\r\nb\r\n.\r\nRSET\r\n", b"a\n.\r\nb\r\n", b"RSET\r\n"),
    ],
)
def test_read_data_ends_at_crlf_dot_crlf_only(
    stream: bytes, content: bytes, left: bytes
) -> None:
    async def read() -> tuple[bytes | None, bytes]:
        reader = await _fed([stream], 2**16)
        return await _data_server(reader, 0)._read_data(), await reader.read()

    assert asyncio.run(read()) == (content, left)


def test_read_data_refuses_an_oversized_message_after_reading_it_all() -> None:
    async def read() -> tuple[bytes | None, bytes]:
        reader = await _fed([b"x" * 100 + b"\r\n.\r\nQUIT\r\n"], 16)
        return await _data_server(reader, 50)._read_data(), await reader.read()

    assert asyncio.run(read()) == (None, b"QUIT\r\n")


def test_read_data_sees_the_end_in_the_part_that_goes_over_the_limit() -> None:
    # One part holds the whole oversized message and its end: the reader
    # stops there (552 follows) and leaves the next command alone.
    async def read() -> tuple[bytes | None, bytes]:
        reader = await _fed([b"x" * 60 + b"\r\n.\r\nQUIT\r\n"], 2**16)
        return await _data_server(reader, 50)._read_data(), await reader.read()

    assert asyncio.run(read()) == (None, b"QUIT\r\n")


# -- the header section ------------------------------------------------------------

field_names = st.sampled_from(
    ["From", "To", "Subject", "Message-ID", "X-MSS-MES", "Content-Type", "a", "~!"]
)
field_values = st.text(' \tabc:;<>@."=?()\x00\x0b\x1c', max_size=12)
field_lines = st.builds(lambda n, v: f"{n}:{v}", field_names, field_values)
folded_lines = st.builds(lambda w, v: w + v, st.sampled_from([" ", "\t"]), field_values)
odd_lines = st.one_of(
    st.sampled_from(
        ["From a@b", "From: x", ":no name", "no colon", "", "Sub ject: x", "é: x"]
    ),
    st.builds(lambda v: "X:" + v + "\r", field_values),
    st.builds(lambda v: " " + v + "\r", field_values),
    st.builds(lambda v: "X:\n" + v, field_values),
    st.builds(lambda v: "\t\n" + v, field_values),
)
ends = st.sampled_from(["\r\n\r\n", "\r\n\r\n", "\r\n\r\n", "\r\n", "", "\n\n"])


@st.composite
def header_sections(draw: st.DrawFn) -> bytes:
    """Mostly plain sections; half of them with one odd line spliced in."""
    lines = draw(
        st.lists(st.one_of(field_lines, field_lines, folded_lines), max_size=8)
    )
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(odd_lines))
    return ("\r\n".join(lines) + draw(ends)).encode("utf-8")


def _parser_view(head: bytes) -> dict[str, object]:
    parsed = BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    return _view(parsed)


def _view(message: object) -> dict[str, object]:
    state = dict(vars(message))
    state["defects"] = [type(d) for d in state["defects"]]
    return state


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(head=header_sections())
@example(head=b"From: a@b\r\nSubject: x\r\n y\r\n\tz\r\n\r\n")
@example(head=b"Subject:\r\n folded\r\n\r\n")
@example(head=b"Subject: \t v \t\r\n\r\n")
@example(head=b" first line folded\r\nTo: a\r\n\r\n")
@example(head=b"To: a\r\n x\r\r\n\r\n")
def test_parse_head_gives_what_the_email_parser_gives(head: bytes) -> None:
    assert _view(parse_head(head)) == _parser_view(head)


def test_plain_header_section_skips_the_parser() -> None:
    head = (
        b"From: a@b.example\r\nTo: c@d.example\r\nSubject: one\r\n two\r\n"
        b"Content-Type: multipart/mixed;\r\n\tboundary=x\r\n\r\n"
    )
    assert _header_fields(head) == [
        ("From", "a@b.example"),
        ("To", "c@d.example"),
        ("Subject", "one\r\n two"),
        ("Content-Type", "multipart/mixed;\r\n\tboundary=x"),
    ]
    assert _view(parse_head(head)) == _parser_view(head)


@pytest.mark.parametrize(
    "head",
    [
        b"From a@b Mon Nov 2\r\nTo: c\r\n\r\n",  # an mbox From line
        b" folded first\r\nTo: c\r\n\r\n",
        b"To: c\r\nno colon\r\n\r\n",
        b"To: \xc3\xa9\r\n\r\n",  # 8-bit
        b"To: c\nCc: d\r\n\r\n",  # bare LF
        b"To: c\r\n",  # no empty line: the whole message is headers
    ],
)
def test_other_header_sections_go_to_the_parser(head: bytes) -> None:
    assert _header_fields(head) is None
    assert _view(parse_head(head)) == _parser_view(head)
