"""Edge cases of the IMAP core: malformed framing, EOF, the writer's types."""

from __future__ import annotations

import pytest

from mssante.proto import imap
from mssante.proto.imap._writer import encode_value, encode_values
from tests.proto.imap.helpers import drive


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(
    "line",
    [
        b"A1\r\n",  # tag without command
        b"A1 {3}\r\nabc\r\n",  # a literal where the command should be
        b"A1 UID {3}\r\nabc\r\n",  # a literal after UID
        b"A1 UID\r\n",  # UID alone
        b"A1 NOOP(\r\n",  # no space before an argument
        b"A1 FETCH 1 (((((((((((((((((((FLAGS)))))))))))))))))))\r\n",  # too deep
        b'A1 LOGIN "unterminated\r\n',
        b"A1 SELECT \x01\r\n",
    ],
)
def test_malformed_commands_get_bad_and_the_session_goes_on(
    line: bytes, chunked: bool
) -> None:
    events, sent = drive(line + b"A2 NOOP\r\n", chunked=chunked)
    assert any(isinstance(e, imap.InvalidCommandReceived) for e in events), events
    assert b"A2 OK" in sent


def test_trailing_spaces_are_tolerated() -> None:
    events, sent = drive(b"A1 NOOP \r\n", chunked=False)
    assert isinstance(events[0], imap.CommandReceived)
    assert sent.startswith(b"A1 OK")


def test_data_after_eof_is_a_local_error() -> None:
    conn = imap.Connection(imap.SERVER)
    conn.receive_data(b"")
    with pytest.raises(imap.LocalProtocolError):
        conn.receive_data(b"A1 NOOP\r\n")


def test_pending_names_the_command_awaiting_its_reply() -> None:
    conn = imap.Connection(imap.SERVER)
    conn.receive_data(b"A1 NOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, imap.CommandReceived)
    assert conn.pending is event
    conn.send(imap.Tagged("A1", imap.Status.OK, "done"))
    assert conn.pending is None


def test_writer_encodes_lists_and_refuses_other_types() -> None:
    out = bytearray()
    encode_value([imap.Atom("FLAGS"), (imap.Atom("\\Seen"), imap.Atom("\\Draft"))], out)
    assert bytes(out) == b"(FLAGS (\\Seen \\Draft))"
    assert encode_values((imap.Atom("A"), 3)) == b"A 3"
    with pytest.raises(TypeError, match="no IMAP form"):
        encode_value(object(), bytearray())
