"""SEARCH key evaluation over a view (pure: no server, no store)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mssante.proto import imap
from relay.imap._search import SearchDoc, View, evaluate, needs

UIDS = [3, 5, 8, 13]
FLAGS = {
    3: frozenset({"\\Seen"}),
    5: frozenset({"\\Seen", "\\Flagged", "Urgent"}),
    8: frozenset(),
    13: frozenset({"\\Deleted"}),
}
META = {
    3: (datetime(2026, 3, 1, 9, tzinfo=UTC), 100),
    5: (datetime(2026, 3, 2, 9, tzinfo=UTC), 2000),
    8: (datetime(2026, 3, 3, 9, tzinfo=UTC), 50),
    13: (datetime(2026, 3, 4, 9, tzinfo=UTC), 5000),
}
DOCS = {
    u: SearchDoc.of(
        f"Subject: =?utf-8?q?R=C3=A9sultat_{u}?=\r\nFrom: a{u}@x.fr\r\n"
        f"Date: {u:02d} Mar 2026 10:00:00 +0100\r\n\r\n".encode()
    )
    for u in UIDS
}
BODIES = {3: "glycémie", 5: "créatinine", 8: "", 13: "glycémie élevée"}
VIEW = View(
    flags=FLAGS,
    recent={8},
    largest_uid=13,
    largest_seq=4,
    seq_of=lambda u: UIDS.index(u) + 1,
    meta=META,
    docs=DOCS,
    bodies=BODIES,
)


def _value(word: str | tuple[str, ...]) -> imap.Value:
    """A word as the reader gives it: an atom, a string (bytes) or a list."""
    if isinstance(word, tuple):
        return tuple(_value(w) for w in word)
    if word and word.isascii() and " " not in word:
        return imap.Atom(word)
    return word.encode()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("ALL",), UIDS),
        (("UNSEEN",), [8, 13]),
        (("SEEN", "UNFLAGGED"), [3]),
        (("KEYWORD", "urgent"), [5]),
        (("UNKEYWORD", "URGENT"), [3, 8, 13]),
        (("NEW",), [8]),
        (("OLD",), [3, 5, 13]),
        (("OR", "FLAGGED", "DELETED"), [5, 13]),
        (("NOT", ("SEEN", "FLAGGED")), [3, 8, 13]),
        (("UID", "5:8,13"), [5, 8, 13]),
        (("UID", "*"), [13]),
        (("2:*",), [5, 8, 13]),
        (("LARGER", "99"), [3, 5, 13]),
        (("SMALLER", "100"), [8]),
        (("BEFORE", "3-Mar-2026"), [3, 5]),
        (("ON", "3-Mar-2026"), [8]),
        (("SINCE", "3-Mar-2026"), [8, 13]),
        (("SUBJECT", "résultat 1"), [13]),
        (("FROM", "A5@"), [5]),
        (("HEADER", "Subject", ""), UIDS),
        (("HEADER", "X-Absent", ""), []),
        (("SENTSINCE", "8-Mar-2026"), [8, 13]),
        (("BODY", "GLYCÉMIE"), [3, 13]),
        (("TEXT", "a8@x.fr"), [8]),
    ],
)
def test_keys_filter_the_uids_in_order(
    args: tuple[str | tuple[str, ...], ...], expected: list[int]
) -> None:
    _charset, key = imap.parse_search(tuple(_value(w) for w in args))
    assert evaluate(key, VIEW, UIDS) == expected


def test_needs_names_what_a_key_reads() -> None:
    _c, key = imap.parse_search(
        tuple(_value(w) for w in ("OR", "TEXT", "x", "LARGER", "10", "UNSEEN"))
    )
    assert needs(key) == frozenset({"doc", "body", "meta"})
    _c, key = imap.parse_search((_value("UNSEEN"),))
    assert needs(key) == frozenset()
