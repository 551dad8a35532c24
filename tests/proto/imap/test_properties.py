"""Hypothesis over commands: what a client encodes, the core reads back,
whatever the chunking; and arbitrary bytes never crash the core."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mssante.proto import imap
from tests.proto.imap.helpers import drive

ATOM_CHARS = st.sampled_from("abcXYZ019.-_\\$")
atoms = (
    st.text(ATOM_CHARS, min_size=1, max_size=8)
    .filter(lambda s: s.upper() != "NIL" or True)
    .map(imap.Atom)
)
strings = st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b)
literals = st.binary(max_size=40)


def values(depth: int = 0) -> st.SearchStrategy[tuple[str, imap.Value]]:
    leaf = st.one_of(
        atoms.map(lambda a: ("atom", a)),
        strings.map(lambda b: ("quoted", b)),
        literals.map(lambda b: ("literal", b)),
        literals.map(lambda b: ("literal+", b)),
    )
    if depth >= 2:
        return leaf
    return st.one_of(
        leaf,
        st.lists(values(depth + 1), max_size=3).map(lambda xs: ("list", tuple(xs))),
    )


def encode(kind: str, value: object) -> tuple[bytes, imap.Value]:
    if kind == "atom":
        assert isinstance(value, imap.Atom)
        return value.value.encode(), value
    if kind == "quoted":
        assert isinstance(value, bytes)
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', value
    if kind in ("literal", "literal+"):
        assert isinstance(value, bytes)
        plus = b"+" if kind == "literal+" else b""
        return b"{%d%s}\r\n" % (len(value), plus) + value, value
    assert isinstance(value, tuple)
    parts = [encode(k, v) for k, v in value]
    return (
        b"(" + b" ".join(p[0] for p in parts) + b")",
        tuple(p[1] for p in parts),
    )


@settings(max_examples=150, deadline=None)
@given(
    tag=st.text("abcdefgh0123456789", min_size=1, max_size=6),
    args=st.lists(values(), max_size=4),
    chunked=st.booleans(),
)
def test_encoded_commands_are_read_back_whatever_the_chunking(
    tag: str, args: list[tuple[str, imap.Value]], chunked: bool
) -> None:
    encoded = [encode(k, v) for k, v in args]
    line = tag.encode() + b" LOGIN" + b"".join(b" " + e[0] for e in encoded) + b"\r\n"
    conn = imap.Connection(max_unauthenticated_literal_size=1000)
    events, _ = drive(line, chunked=chunked, conn=conn)
    received = [e for e in events if isinstance(e, imap.CommandReceived)]
    assert received == [
        imap.CommandReceived(tag, "LOGIN", tuple(e[1] for e in encoded))
    ]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200),
    state=st.sampled_from(
        [imap.State.NOT_AUTHENTICATED, imap.State.AUTHENTICATED, imap.State.SELECTED]
    ),
)
def test_arbitrary_bytes_give_events_or_a_remote_protocol_error(
    data: bytes, state: imap.State
) -> None:
    conn = imap.Connection(state=state, max_literal_size=50, max_line_length=100)
    try:
        drive(data, chunked=False, conn=conn)
    except imap.RemoteProtocolError:
        assert conn.state is imap.State.ERROR
