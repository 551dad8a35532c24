"""The structure parser's fast paths give what the general ones give: the
parameter split of Content-Type and Content-Disposition, and the plain
address forms of the envelope."""

from __future__ import annotations

from email.utils import getaddresses

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.store._structure import _plain_addresses, _split_params


def _split_params_char_by_char(value: str) -> list[str]:
    """The reference: one character at a time (the parser's former code)."""
    items: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == ";" and not quoted:
            items.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    items.append("".join(buf))
    return items


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.text(alphabet='ab;"\\= (', max_size=24))
def test_parameters_split_as_one_character_at_a_time(value: str) -> None:
    assert _split_params(value) == _split_params_char_by_char(value)


def test_parameters_of_usual_headers() -> None:
    assert _split_params('multipart/mixed; boundary="=_a;b"; x=1') == [
        "multipart/mixed",
        ' boundary="=_a;b"',
        " x=1",
    ]
    assert _split_params('attachment; filename="a\\";b.pdf"') == [
        "attachment",
        ' filename="a\\";b.pdf"',
    ]
    assert _split_params('text/plain; name="unclosed;rest') == [
        "text/plain",
        ' name="unclosed;rest',
    ]


_PIECES = st.sampled_from(
    [
        "a", "jean", "martin", ".", "..", "@", "<", ">", " ", "  ", '"', "(",
        ")", ",", ";", ":", "\\", "'", "-", "_", "é", "x.fr", "Dr", "=?utf-8?q?e?=",
    ]
)  # fmt: skip


@st.composite
def _header_values(draw: st.DrawFn) -> str:
    """Near-plain address values: a plain form, then perhaps some pieces
    spliced in, so both the fast path and its refusals are exercised."""
    local = draw(st.sampled_from(["a", "jean.martin", "j-m_1", "x+y"]))
    domain = draw(st.sampled_from(["b.fr", "hopital-x.mssante.fr", "h"]))
    name = draw(st.sampled_from(["", "Jean", "Jean Martin", "Dr Jean M"]))
    value = f"{name} <{local}@{domain}>" if name else f"{local}@{domain}"
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(_PIECES) + value[at:]
    return value


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.lists(_header_values(), min_size=1, max_size=3))
def test_plain_addresses_are_what_getaddresses_gives(values: list[str]) -> None:
    fast = _plain_addresses(values)
    if fast is not None:
        assert fast == getaddresses(values)


def test_plain_address_forms_take_the_fast_path() -> None:
    assert _plain_addresses(["a@b.fr", "Jean Martin <jean.martin@x.fr>"]) == [
        ("", "a@b.fr"),
        ("Jean Martin", "jean.martin@x.fr"),
    ]
    # Anything else goes to the general parser.
    for value in ['"Martin, Jean" <j@x.fr>', "Dr. J <j@x.fr>", "a@b.fr (home)", ""]:
        assert _plain_addresses([value]) is None
