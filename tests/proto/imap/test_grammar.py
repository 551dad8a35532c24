"""Command-specific grammar: sequence sets, FETCH items, SEARCH, dates, names."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante.proto import imap

A = imap.Atom


def test_sequence_set_ranges_and_star() -> None:
    s = imap.parse_sequence_set(A("1:3,7,9:*"))
    assert s.select([1, 2, 3, 4, 7, 8, 9, 12]) == [1, 2, 3, 7, 9, 12]
    # RFC 3501 §9: 4:2 is the same as 2:4; * is the largest value.
    assert imap.parse_sequence_set(A("4:2")).select([1, 2, 3, 4, 5]) == [2, 3, 4]
    assert imap.parse_sequence_set(A("*")).select([3, 8]) == [8]
    assert imap.parse_sequence_set(A("1:4294967295")).contains(4294967295, 1)


@pytest.mark.parametrize("text", ["0", "1:", ":2", "a", "1,,2", "4294967296", "01"])
def test_malformed_sequence_sets_are_syntax_errors(text: str) -> None:
    with pytest.raises(imap.CommandSyntaxError):
        imap.parse_sequence_set(A(text))


def test_fetch_macros_and_sections() -> None:
    assert [i.name for i in imap.parse_fetch_items(A("FAST"))] == [
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
    ]
    items = imap.parse_fetch_items(
        (A("UID"), A("BODY.PEEK[HEADER.FIELDS (From Subject)]"), A("BODY[1.2]<10.20>"))
    )
    assert items[1] == imap.FetchItem(
        "BODY.PEEK", imap.Section((), "HEADER.FIELDS", ("FROM", "SUBJECT")), None
    )
    assert items[1].peek
    assert not items[1].sets_seen
    assert items[2].section == imap.Section((1, 2), "", ())
    assert items[2].partial == (10, 20)
    assert items[2].sets_seen
    assert items[2].response_name() == "BODY[1.2]<10>"
    assert items[1].response_name() == "BODY[HEADER.FIELDS (FROM SUBJECT)]"


@pytest.mark.parametrize(
    "text",
    [
        "BODY[FOO]",
        "BODY[MIME]",
        "BODY[0]",
        "BODY[HEADER.FIELDS]",
        "FLAGZ",
        "BODY[1]<1.0>",
    ],
)
def test_unknown_fetch_attributes_are_syntax_errors(text: str) -> None:
    with pytest.raises(imap.CommandSyntaxError):
        imap.parse_fetch_items(A(text))


def test_search_program_is_normalized() -> None:
    charset, key = imap.parse_search(
        (
            A("CHARSET"),
            A("UTF-8"),
            A("UNSEEN"),
            A("FROM"),
            b"zoe",
            A("OR"),
            A("LARGER"),
            A("10"),
            (A("SINCE"), A("1-Feb-2024")),
        )
    )
    assert charset == "UTF-8"
    assert key.op == "AND"
    unseen, from_, or_ = key.keys
    assert unseen == imap.SearchKey("NOT", (imap.SearchKey("FLAG", text="\\Seen"),))
    assert from_ == imap.SearchKey("HEADER", field="FROM", value=b"zoe")
    assert or_.keys[0] == imap.SearchKey("LARGER", number=10)
    assert or_.keys[1].keys[0].day == date(2024, 2, 1)


@pytest.mark.parametrize(
    "args",
    [
        (),
        (A("FROM"),),
        (A("BOGUS"),),
        (A("SINCE"), A("31-Feb-2024")),
        (A("LARGER"), A("x")),
    ],
)
def test_malformed_search_is_a_syntax_error(args: tuple[imap.Value, ...]) -> None:
    with pytest.raises(imap.CommandSyntaxError):
        imap.parse_search(args)


def test_flags_system_flags_are_canonical_and_recent_is_refused() -> None:
    assert imap.parse_flags((A("\\seen"), A("$Label"))) == ["\\Seen", "$Label"]
    with pytest.raises(imap.CommandSyntaxError):
        imap.parse_flags((A("\\Recent"),))


def test_datetime_round_trip() -> None:
    when = imap.parse_datetime(b"17-Jul-1996 02:44:25 -0700")
    assert when == datetime(
        1996, 7, 17, 2, 44, 25, tzinfo=timezone(-timedelta(hours=7))
    )
    assert imap.format_datetime(when) == "17-Jul-1996 02:44:25 -0700"
    assert (
        imap.format_datetime(datetime(2024, 3, 5, tzinfo=UTC))
        == " 5-Mar-2024 00:00:00 +0000"
    )
    with pytest.raises(imap.CommandSyntaxError):
        imap.parse_datetime(b"17-Jux-1996 02:44:25 -0700")


def test_mailbox_names_in_modified_utf7() -> None:
    # RFC 3501 §5.1.3 example.
    name = "~peter/mail/台北/日本語"
    assert imap.encode_mailbox(name) == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert imap.decode_mailbox(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-") == name
    assert imap.encode_mailbox("A&B") == "A&-B"
    with pytest.raises(imap.CommandSyntaxError):
        imap.decode_mailbox(b"&Jjo")


@given(st.text(max_size=20))
def test_mailbox_names_round_trip(name: str) -> None:
    try:
        name.encode("utf-16-be")
    except UnicodeEncodeError:
        return
    assert imap.decode_mailbox(imap.encode_mailbox(name).encode()) == name


def test_values_are_written_quoted_or_as_literals() -> None:
    assert imap.encode_values(
        [1, None, "a b", 'q"', b"x\r\n", (imap.Atom("\\Seen"),)]
    ) == (b'1 NIL "a b" "q\\"" {3}\r\nx\r\n (\\Seen)')
    assert imap.encode_values(["é"]) == b"{2}\r\n\xc3\xa9"
    with pytest.raises(TypeError):
        imap.encode_values([True])
