"""The session state machine: the transition table and the replies that drive it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante.proto import imap
from mssante.proto.imap._state import next_state


@given(st.sampled_from(imap.State), st.sampled_from(imap.Transition))
def test_every_state_transition_pair_is_in_the_table_or_refused(
    state: imap.State, transition: imap.Transition
) -> None:
    if (state, transition) in imap.TRANSITIONS:
        assert next_state(state, transition) in imap.State
    else:
        with pytest.raises(imap.LocalProtocolError):
            next_state(state, transition)


def test_no_command_is_accepted_after_logout_or_error() -> None:
    assert imap.COMMANDS_BY_STATE[imap.State.LOGOUT] == frozenset()
    assert imap.COMMANDS_BY_STATE[imap.State.ERROR] == frozenset()


def reply(conn: imap.Connection, line: bytes, status: imap.Status) -> imap.State:
    conn.receive_data(line)
    event = conn.next_event()
    assert isinstance(event, imap.CommandReceived), event
    conn.send(imap.Tagged(event.tag, status, "x"))
    return conn.state


def test_login_ok_authenticates_and_select_ok_selects() -> None:
    conn = imap.Connection()
    assert reply(conn, b"a LOGIN u p\r\n", imap.Status.OK) is imap.State.AUTHENTICATED
    assert reply(conn, b"b SELECT INBOX\r\n", imap.Status.OK) is imap.State.SELECTED
    assert reply(conn, b"c CLOSE\r\n", imap.Status.OK) is imap.State.AUTHENTICATED


def test_failed_login_stays_unauthenticated() -> None:
    conn = imap.Connection()
    reply(conn, b"a LOGIN u p\r\n", imap.Status.NO)
    assert conn.state is imap.State.NOT_AUTHENTICATED


def test_failed_select_deselects_the_current_folder() -> None:
    # RFC 3501 §6.3.1.
    conn = imap.Connection(state=imap.State.SELECTED)
    reply(conn, b"a SELECT nowhere\r\n", imap.Status.NO)
    assert conn.state is imap.State.AUTHENTICATED


def test_selected_state_commands_are_bad_when_not_selected() -> None:
    conn = imap.Connection(state=imap.State.AUTHENTICATED)
    conn.receive_data(b"a FETCH 1 FLAGS\r\n")
    event = conn.next_event()
    assert isinstance(event, imap.InvalidCommandReceived)
    assert conn.send(event.reply()) == (
        b"a BAD FETCH not allowed in state authenticated\r\n"
    )


def test_bye_moves_to_logout_and_nothing_more_is_read() -> None:
    conn = imap.Connection(state=imap.State.AUTHENTICATED)
    conn.receive_data(b"a LOGOUT\r\nb NOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, imap.CommandReceived)
    conn.send(imap.Untagged.status(imap.Status.BYE, "bye"))
    conn.send(imap.Tagged("a", imap.Status.OK, "LOGOUT completed"))
    assert conn.state is imap.State.LOGOUT
    assert conn.next_event() is imap.PAUSED


def test_bytes_sent_before_starttls_completes_are_discarded() -> None:
    # RFC 3501 §6.2.1; the STARTTLS command injection (CVE-2011-0411).
    conn = imap.Connection()
    conn.receive_data(b"a STARTTLS\r\nb LOGIN injected cmd\r\n")
    event = conn.next_event()
    assert event == imap.CommandReceived("a", "STARTTLS")
    conn.send(imap.Tagged("a", imap.Status.OK, "Begin TLS negotiation now"))
    assert conn.next_event() is imap.NEED_DATA
    conn.receive_data(b"c NOOP\r\n")
    assert conn.next_event() == imap.CommandReceived("c", "NOOP")


def test_reply_to_a_command_that_is_not_pending_is_a_local_error() -> None:
    conn = imap.Connection()
    with pytest.raises(imap.LocalProtocolError):
        conn.send(imap.Tagged("zz", imap.Status.OK, "x"))
    with pytest.raises(imap.LocalProtocolError):
        conn.send(imap.ContinuationRequest())


def test_status_text_cannot_inject_a_second_line() -> None:
    conn = imap.Connection()
    conn.receive_data(b"a NOOP\r\n")
    conn.next_event()
    out = conn.send(imap.Tagged("a", imap.Status.NO, "x\r\n* OK fake"))
    assert out == b"a NO x  * OK fake\r\n"


def test_authenticate_continuation_then_server_abort() -> None:
    conn = imap.Connection()
    conn.receive_data(b"a AUTHENTICATE PLAIN\r\n")
    assert conn.next_event() == imap.CommandReceived(
        "a", "AUTHENTICATE", (imap.Atom("PLAIN"),)
    )
    assert conn.send(imap.ContinuationRequest("")) == b"+ \r\n"
    conn.receive_data(b"AGEAYg==\r\n")
    assert conn.next_event() == imap.ContinuationReceived(b"AGEAYg==")
    conn.send(imap.Tagged("a", imap.Status.OK, "ok"))
    assert conn.state is imap.State.AUTHENTICATED
