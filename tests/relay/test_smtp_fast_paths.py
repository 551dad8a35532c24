"""The SMTP path's fast paths give exactly what the slow code they replace gave.

- ``RelaySMTP._getaddr`` answers the plain ``<local@domain>`` and ``<>`` paths
  itself and leaves every other form to aiosmtpd's parser: for any argument
  it returns (or raises) what aiosmtpd's ``SMTP._getaddr`` does.
- ``_has_bare_line_ending`` (the newline decoder) says what the three counts
  it replaced said, for any bytes.
"""

from __future__ import annotations

import string

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.smtp.handler import _has_bare_line_ending
from relay.smtp.server import RelaySMTP, plain_path

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


@settings(max_examples=1000, deadline=None, derandomize=True)
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
