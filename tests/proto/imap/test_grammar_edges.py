"""Edge cases of the IMAP command grammar: every refusal path and rare key."""

from __future__ import annotations

from datetime import datetime

import pytest

from mssante.proto import imap
from mssante.proto.imap import _grammar as g

A = imap.Atom


@pytest.mark.parametrize(
    "call",
    [
        lambda: g.atom(b"quoted", "x"),
        lambda: g.astring((A("a"),), "x"),
        lambda: g.number(A("12a"), "x"),
        lambda: g.number(A("99999999999"), "x"),
        lambda: g.parse_flags(A("\\Bogus[")),
        lambda: g.parse_flags(A("")),
        lambda: g.parse_date(A("32-Foo-2020")),
        lambda: g.parse_datetime(A("17-Jul-1996")),
        lambda: g.parse_datetime(b"31-Feb-1996 02:44:25 -0700"),
        lambda: g.decode_mailbox(b"\xff", utf8=True),
        lambda: g.decode_mailbox(b"caf\xe9"),
        lambda: g.decode_mailbox(b"&AOk"),
        lambda: g.decode_mailbox(b"&!!!-"),
        lambda: g.parse_fetch_items(()),
        lambda: g.parse_fetch_items(A("BODY[0]")),
        lambda: g.parse_fetch_items(A("BODY[MIME]")),
        lambda: g.parse_fetch_items(A("BODY[TEXT extra]")),
        lambda: g.parse_fetch_items(A("BODY[HEADER.FIELDS ()]")),
        lambda: g.parse_fetch_items(A("BODY[1]<0.0>")),
        lambda: g.parse_fetch_items(A("NOSUCH")),
        lambda: g.parse_search(()),
        lambda: g.parse_search((A("NOSUCH"),)),
        lambda: g.parse_search(((),)),
        lambda: g.parse_search((A("FROM"),)),
    ],
)
def test_off_grammar_is_a_syntax_error(call: object) -> None:
    assert callable(call)
    with pytest.raises(imap.CommandSyntaxError):
        call()


def test_search_nesting_is_bounded() -> None:
    deep: object = (A("ALL"),)
    for _ in range(70):
        deep = (deep,)
    with pytest.raises(imap.CommandSyntaxError, match="nested"):
        g.parse_search((deep,))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((A("ALL"),), "ALL"),
        ((A("RECENT"),), "RECENT"),
        ((A("OLD"),), "NOT"),
        ((A("NEW"),), "AND"),
        ((A("KEYWORD"), A("$Label1")), "FLAG"),
        ((A("UNKEYWORD"), A("$Label1")), "NOT"),
        ((A("HEADER"), A("X-MSS-MES"), b"FIN"), "HEADER"),
        ((A("BODY"), b"x"), "BODY"),
        ((A("TEXT"), b"x"), "TEXT"),
        ((A("LARGER"), A("10")), "LARGER"),
        ((A("NOT"), A("SEEN")), "NOT"),
        ((A("OR"), A("SEEN"), A("DRAFT")), "OR"),
        ((A("UID"), A("1:*")), "UID"),
        ((A("2:4"),), "SEQ"),
    ],
)
def test_rare_search_keys(args: tuple[object, ...], name: str) -> None:
    charset, key = g.parse_search(args)  # type: ignore[arg-type]
    assert charset is None
    assert key.op == name


def test_search_charset_and_conjunction() -> None:
    charset, key = g.parse_search((A("CHARSET"), A("utf-8"), A("SEEN"), A("DELETED")))
    assert charset == "UTF-8"
    assert key.op == "AND"


def test_dates_and_names_round_trip() -> None:
    naive = datetime(2026, 11, 23, 9, 30)  # noqa: DTZ001 - a naive time is read as UTC
    assert g.format_datetime(naive) == "23-Nov-2026 09:30:00 +0000"
    assert g.decode_mailbox(b"caf\xc3\xa9", utf8=True) == "café"
    assert g.encode_mailbox("café", utf8=True) == "café"
    assert g.decode_mailbox(b"&-x") == "&x"
    assert g.parse_sequence_set(A("*")).select([]) == []


def test_fetch_item_names() -> None:
    [plain] = g.parse_fetch_items(A("BODY"))
    assert plain.response_name() == "BODY"
    [partial] = g.parse_fetch_items(A("BODY.PEEK[TEXT]<5>"))
    assert partial.partial == (5, None)
    assert partial.peek
    assert partial.response_name() == "BODY[TEXT]<5>"
