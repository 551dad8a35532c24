"""The IMAP core reading commands, whole and one byte at a time."""

from __future__ import annotations

import pytest

from mssante.proto import imap
from tests.proto.imap.helpers import drive

A = imap.Atom

CHUNKING = pytest.mark.parametrize("chunked", [False, True], ids=["whole", "bytes"])


def commands(events: list[imap.Event]) -> list[imap.Event]:
    return [e for e in events if not isinstance(e, imap.ConnectionClosed)]


@CHUNKING
def test_simple_command_is_read_with_its_tag_and_upper_case_name(chunked: bool) -> None:
    events, sent = drive(b"a1 noop\r\n", chunked=chunked)
    assert commands(events) == [imap.CommandReceived("a1", "NOOP")]
    assert sent == b"a1 OK done\r\n"


@CHUNKING
def test_rfc3501_examples_parse_into_generic_values(chunked: bool) -> None:
    # RFC 3501 §6.4.5 and §6.3.11 examples.
    data = (
        b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n"
        b"A003 APPEND saved-messages (\\Seen) {5}\r\nhello\r\n"
        b'A142 SELECT "INBOX"\r\n'
        b"A999 UID FETCH 4827313:4828442 FLAGS\r\n"
    )
    events, _ = drive(data, chunked=chunked)
    assert commands(events) == [
        imap.CommandReceived(
            "A654",
            "FETCH",
            (A("2:4"), (A("FLAGS"), A("BODY[HEADER.FIELDS (DATE FROM)]"))),
        ),
        imap.LiteralAwaited("A003", 5),
        imap.CommandReceived(
            "A003", "APPEND", (A("saved-messages"), (A("\\Seen"),), b"hello")
        ),
        imap.CommandReceived("A142", "SELECT", (b"INBOX",)),
        imap.CommandReceived(
            "A999", "FETCH", (A("4827313:4828442"), A("FLAGS")), uid=True
        ),
    ]


@CHUNKING
def test_non_synchronizing_literal_is_read_without_continuation(chunked: bool) -> None:
    # RFC 7888 §3 LITERAL+.
    events, sent = drive(
        b't LOGIN {4+}\r\nuser {6+}\r\np"ss w\r\n',
        chunked=chunked,
        conn=imap.Connection(),
    )
    assert commands(events) == [
        imap.CommandReceived("t", "LOGIN", (b"user", b'p"ss w'))
    ]
    assert b"+" not in sent


@CHUNKING
def test_literal_may_hold_crlf_and_any_byte(chunked: bool) -> None:
    body = b"Subject: x\r\n\r\n\x00\xff)\r\n"
    data = b"t APPEND INBOX {%d}\r\n" % len(body) + body + b"\r\n"
    events, sent = drive(data, chunked=chunked)
    assert commands(events)[-1] == imap.CommandReceived(
        "t", "APPEND", (A("INBOX"), body)
    )
    assert sent.startswith(b"+ Ready\r\n")


@CHUNKING
def test_quoted_strings_unescape_quote_and_backslash(chunked: bool) -> None:
    events, _ = drive(
        b't LOGIN "a\\"b" "c\\\\d"\r\n', chunked=chunked, conn=imap.Connection()
    )
    assert commands(events) == [imap.CommandReceived("t", "LOGIN", (b'a"b', b"c\\d"))]


@CHUNKING
def test_nested_lists_and_partial_sections_are_one_atom(chunked: bool) -> None:
    events, _ = drive(
        b"t FETCH 1 (BODY.PEEK[1.2.MIME]<0.100> (X (Y)) NIL)\r\n", chunked=chunked
    )
    assert commands(events) == [
        imap.CommandReceived(
            "t",
            "FETCH",
            (A("1"), (A("BODY.PEEK[1.2.MIME]<0.100>"), (A("X"), (A("Y"),)), A("NIL"))),
        )
    ]


@CHUNKING
@pytest.mark.parametrize(
    ("line", "tag"),
    [
        (b"\r\n", None),
        (b"t\r\n", "t"),
        (b"+x NOOP\r\n", None),
        (b't LOGIN "unterminated\r\n', "t"),
        (b"t LOGIN (a b\r\n", "t"),
        (b't LOGIN "bad \\escape"\r\n', "t"),
        (b"t FETCH 1 BODY[HEADER\r\n", "t"),
        (b"t FROBNICATE\r\n", "t"),
        (b"t UID LOGIN\r\n", "t"),
        (b"t LOGIN a b\r\n", "t"),  # not allowed once authenticated
        (b"t SELECT )\r\n", "t"),
        (b"t SELECT \xff\r\n", "t"),
    ],
)
def test_malformed_command_is_bad_and_the_session_goes_on(
    chunked: bool, line: bytes, tag: str | None
) -> None:
    events, sent = drive(line + b"ok NOOP\r\n", chunked=chunked)
    first, second = commands(events)
    assert isinstance(first, imap.InvalidCommandReceived)
    assert first.tag == tag
    assert first.status is imap.Status.BAD
    assert second == imap.CommandReceived("ok", "NOOP")
    assert sent.endswith(b"ok OK done\r\n")
    assert sent.startswith(b"* BAD " if tag is None else f"{tag} BAD ".encode())


@CHUNKING
def test_oversized_synchronizing_literal_is_refused_before_it_is_read(
    chunked: bool,
) -> None:
    conn = imap.Connection(state=imap.State.AUTHENTICATED, max_literal_size=100)
    events, sent = drive(
        b"t APPEND INBOX {101}\r\nu NOOP\r\n", chunked=chunked, conn=conn
    )
    assert commands(events) == [
        imap.InvalidCommandReceived("t", "Literal too big", imap.Status.NO, "TOOBIG"),
        imap.CommandReceived("u", "NOOP"),
    ]
    assert sent == b"t NO [TOOBIG] Literal too big\r\nu OK done\r\n"


@CHUNKING
def test_literal_before_login_is_limited_to_a_few_kilobytes(chunked: bool) -> None:
    conn = imap.Connection()
    events, sent = drive(b"t LOGIN {5000}\r\n", chunked=chunked, conn=conn)
    assert isinstance(events[0], imap.InvalidCommandReceived)
    assert b"+" not in sent


def test_oversized_non_synchronizing_literal_is_a_protocol_error() -> None:
    conn = imap.Connection(state=imap.State.AUTHENTICATED, max_literal_size=10)
    conn.receive_data(b"t APPEND INBOX {11+}\r\n0123456789A\r\n")
    with pytest.raises(imap.RemoteProtocolError):
        conn.next_event()
    assert conn.state is imap.State.ERROR
    with pytest.raises(imap.RemoteProtocolError):
        conn.next_event()
    # We may still say goodbye.
    assert conn.send(imap.Untagged.status(imap.Status.BYE, "too big")).startswith(
        b"* BYE"
    )


@CHUNKING
def test_line_over_the_limit_is_skipped_and_answered_bad(chunked: bool) -> None:
    conn = imap.Connection(state=imap.State.AUTHENTICATED, max_line_length=64)
    data = b"t1 SELECT " + b"x" * 200 + b"\r\nt2 NOOP\r\n"
    events, sent = drive(data, chunked=chunked, conn=conn)
    assert commands(events) == [
        imap.InvalidCommandReceived("t1", "Command line too long"),
        imap.CommandReceived("t2", "NOOP"),
    ]
    assert sent == b"t1 BAD Command line too long\r\nt2 OK done\r\n"


def test_commands_wait_while_a_reply_is_due() -> None:
    conn = imap.Connection(state=imap.State.AUTHENTICATED)
    conn.receive_data(b"a NOOP\r\nb NOOP\r\n")
    assert conn.next_event() == imap.CommandReceived("a", "NOOP")
    assert conn.next_event() is imap.PAUSED
    conn.send(imap.Untagged((imap.Raw(b"3 EXISTS"),)))
    assert conn.next_event() is imap.PAUSED
    conn.send(imap.Tagged("a", imap.Status.OK, "done"))
    assert conn.next_event() == imap.CommandReceived("b", "NOOP")


def test_continuation_lets_one_line_through_for_idle() -> None:
    conn = imap.Connection(state=imap.State.AUTHENTICATED)
    conn.receive_data(b"i IDLE\r\n")
    assert conn.next_event() == imap.CommandReceived("i", "IDLE")
    assert conn.send(imap.ContinuationRequest("idling")) == b"+ idling\r\n"
    assert conn.next_event() is imap.NEED_DATA
    conn.receive_data(b"DONE\r\nn NOOP\r\n")
    assert conn.next_event() == imap.ContinuationReceived(b"DONE")
    assert conn.next_event() is imap.PAUSED
    conn.send(imap.Tagged("i", imap.Status.OK, "IDLE terminated"))
    assert conn.next_event() == imap.CommandReceived("n", "NOOP")


def test_eof_in_the_middle_of_a_command_closes() -> None:
    events, _ = drive(b"t APPEND INBOX {10}\r\nabc", chunked=False)
    assert events[-1] == imap.ConnectionClosed()
