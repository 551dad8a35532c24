"""One parse for the INBOX and Sent copies: the structure of a message with
its Return-Path line on top is the structure of the message, shifted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.store import ParsedStructure, parse_structure
from tests.relay.store.test_structure import MIXED, SIMPLE

RETURN_PATH = b"Return-Path: <auteur@medecin.mssante.fr>\r\n"


@pytest.mark.parametrize(
    "message",
    [
        SIMPLE,
        MIXED,
        b"",
        b"\r\nbody only\r\n",
        b"\nbody after a bare LF\n",
        b"Subject: no body",
        b"no header at all",
        b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ntext\r\n",
    ],
)
def test_shifted_structure_equals_the_structure_of_the_delivered_copy(
    message: bytes,
) -> None:
    shifted = parse_structure(message).with_return_path(RETURN_PATH)
    assert shifted == parse_structure(RETURN_PATH + message)


def test_message_starting_with_a_folded_line_asks_for_a_parse() -> None:
    assert (
        parse_structure(b" folded: x\r\n\r\nbody").with_return_path(RETURN_PATH) is None
    )


@pytest.mark.parametrize(
    "field",
    [
        b"Subject: x\r\n",
        b"Return-Path: <a@b>",
        b"Return-Path: <a@b>\r\nSubject: x\r\n",
        b"Return-Path: <a@b>\n",
    ],
)
def test_anything_but_one_return_path_line_is_a_bug(field: bytes) -> None:
    with pytest.raises(ValueError, match="Return-Path"):
        parse_structure(SIMPLE).with_return_path(field)


_LINES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=Q",
        b"Content-Type: message/rfc822",
        b"Content-Type: text/plain",
        b"--Q",
        b"--Q--",
        b"",
        b"Subject: s",
        b"From: a@b",
        b"\tfolded",
        b"body",
        b"\r",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=30), st.sampled_from([b"\r\n", b"\n"]))
def test_shift_matches_a_parse_for_mime_like_input(
    lines: list[bytes], eol: bytes
) -> None:
    message = eol.join(lines)
    shifted = parse_structure(message).with_return_path(RETURN_PATH)
    if shifted is not None:
        assert shifted == parse_structure(RETURN_PATH + message)
        assert ParsedStructure.from_json(shifted.to_json()) == shifted


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_shift_matches_a_parse_for_any_bytes(message: bytes) -> None:
    shifted = parse_structure(message).with_return_path(RETURN_PATH)
    if shifted is not None:
        assert shifted == parse_structure(RETURN_PATH + message)
