"""The structure cached at delivery: ENVELOPE, BODYSTRUCTURE fields, offsets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.store import MAX_DEPTH, BodyPart, ParsedStructure, parse_structure

SIMPLE = (
    b"From: =?utf-8?q?Dr_Andr=C3=A9?= <andre@a.example>\r\n"
    b'To: b@b.example, "C, D" <c@c.example>\r\n'
    b"Cc: undisclosed-recipients:;\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sultats?=\r\n"
    b" du jour\r\n"
    b"Message-ID: <m1@a.example>\r\n"
    b"\r\n"
    b"line one\r\nline two\r\n"
)

MIXED = (
    b"From: a@a.example\r\n"
    b"Subject: report\r\n"
    b"Reply-To: replies@a.example\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Bonjour \xc3\xa9\r\n"
    b"--XX\r\n"
    b'Content-Type: application/pdf; name="cr.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment;\r\n"
    b' filename="cr.pdf"\r\n'
    b"Content-ID: <pdf@a>\r\n"
    b"\r\n"
    b"JVBERi0xLjcK\r\n"
    b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner@c.example\r\n"
    b"Subject: forwarded\r\n"
    b"Content-Type: multipart/alternative; boundary=YY\r\n"
    b"\r\n"
    b"--YY\r\n"
    b"\r\n"
    b"plain\r\n"
    b"--YY\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>html</p>\r\n"
    b"--YY--\r\n"
    b"--XX--\r\n"
    b"epilogue\r\n"
)


def test_plain_message_envelope_keeps_raw_values() -> None:
    s = parse_structure(SIMPLE)
    env = s.envelope
    # RFC 3501 §7.4.2: raw (encoded-words kept), unfolded.
    assert env.subject == "=?utf-8?q?R=C3=A9sultats?= du jour"
    assert env.from_[0].name == "=?utf-8?q?Dr_Andr=C3=A9?="
    assert (env.from_[0].mailbox, env.from_[0].host) == ("andre", "a.example")
    assert env.sender == env.from_ == env.reply_to
    assert [(a.name, a.mailbox) for a in env.to] == [(None, "b"), ("C, D", "c")]
    assert env.cc == ()
    assert env.message_id == "<m1@a.example>"
    assert env.date is None


def test_plain_message_body_defaults_to_text_plain_us_ascii() -> None:
    s = parse_structure(SIMPLE)
    b = s.body
    assert (b.type, b.subtype, b.params, b.encoding) == (
        "text",
        "plain",
        (("charset", "us-ascii"),),
        "7bit",
    )
    assert SIMPLE[b.body_start : b.body_end] == b"line one\r\nline two\r\n"
    assert (b.size, b.lines) == (20, 2)
    assert s.part((1,)) is b
    assert s.header == SIMPLE[: b.body_start]


def test_multipart_offsets_slice_each_part_exactly() -> None:
    s = parse_structure(MIXED)
    root = s.body
    assert (root.type, root.subtype) == ("multipart", "mixed")
    assert dict(root.params) == {"boundary": "XX"}
    assert len(root.parts) == 3
    text, pdf, _fwd = root.parts
    assert MIXED[text.body_start : text.body_end] == b"Bonjour \xc3\xa9"
    assert MIXED[text.header_start : text.body_start].startswith(
        b"Content-Type: text/plain"
    )
    assert (text.encoding, text.lines, text.size) == ("8bit", 1, 10)
    assert MIXED[pdf.body_start : pdf.body_end] == b"JVBERi0xLjcK"
    assert pdf.disposition == ("attachment", (("filename", "cr.pdf"),))
    assert pdf.params == (("name", "cr.pdf"),)
    assert pdf.id == "<pdf@a>"
    assert pdf.lines is None
    assert s.envelope.reply_to[0].mailbox == "replies"


def test_encapsulated_message_has_its_own_envelope_and_sections() -> None:
    s = parse_structure(MIXED)
    fwd = s.part((3,))
    assert (fwd.type, fwd.subtype) == ("message", "rfc822")
    assert fwd.envelope is not None
    assert fwd.envelope.subject == "forwarded"
    assert fwd.body is not None
    assert fwd.body.header_start == fwd.body_start
    # RFC 3501 §6.4.5: 3.1 and 3.2 are the parts of the encapsulated multipart.
    plain, html = s.part((3, 1)), s.part((3, 2))
    assert MIXED[plain.body_start : plain.body_end] == b"plain"
    assert (plain.type, plain.subtype) == ("text", "plain")
    assert (html.subtype, MIXED[html.body_start : html.body_end]) == (
        "html",
        b"<p>html</p>",
    )


def test_unknown_section_is_a_key_error() -> None:
    s = parse_structure(MIXED)
    for section in [(4,), (0,), (1, 2), (3, 3)]:
        with pytest.raises(KeyError):
            s.part(section)


def test_bare_lf_message_parses_with_same_shape() -> None:
    s = parse_structure(MIXED.replace(b"\r\n", b"\n"))
    lf = MIXED.replace(b"\r\n", b"\n")
    assert [p.subtype for p in s.body.parts] == ["plain", "pdf", "rfc822"]
    assert lf[s.part((2,)).body_start : s.part((2,)).body_end] == b"JVBERi0xLjcK"


def test_multipart_without_close_delimiter_or_boundary() -> None:
    open_ended = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\nx\r\n"
    s = parse_structure(open_ended)
    assert len(s.body.parts) == 1
    assert open_ended[s.part((1,)).body_start : s.part((1,)).body_end] == b"x\r\n"
    no_boundary = parse_structure(b"Content-Type: multipart/mixed\r\n\r\nbody\r\n")
    [empty] = no_boundary.body.parts
    assert (empty.type, empty.size) == ("text", 0)


def test_digest_parts_default_to_message_rfc822() -> None:
    msg = (
        b"Content-Type: multipart/digest; boundary=D\r\n\r\n"
        b"--D\r\n\r\nSubject: one\r\n\r\nbody\r\n--D--\r\n"
    )
    part = parse_structure(msg).part((1,))
    assert (part.type, part.subtype) == ("message", "rfc822")
    assert part.envelope is not None
    assert part.envelope.subject == "one"


def test_nesting_beyond_the_limit_becomes_an_opaque_leaf() -> None:
    depth = MAX_DEPTH + 5
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    s = parse_structure(head + b"\r\ndeep\r\n")
    node = s.body
    levels = 0
    while node.parts:
        node = node.parts[0]
        levels += 1
    assert levels <= MAX_DEPTH
    assert (node.type, node.subtype) == ("application", "octet-stream")


def test_eight_bit_headers_survive_the_cached_form() -> None:
    msg = b"Subject: caf\xc3\xa9 \xff\r\nFrom: x@y\r\n\r\nbody"
    s = parse_structure(msg)
    again = ParsedStructure.from_json(s.to_json())
    assert again == s
    assert again.envelope.subject is not None
    assert (
        again.envelope.subject.encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff"
    )
    assert again.header == msg[: s.body.body_start]


def test_json_form_round_trips_a_full_tree() -> None:
    s = parse_structure(MIXED)
    assert ParsedStructure.from_json(s.to_json()) == s


def test_headers_only_message_has_an_empty_body() -> None:
    s = parse_structure(b"Subject: no body\r\n")
    assert s.body.size == 0
    assert s.envelope.subject == "no body"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_and_round_trip(data: bytes) -> None:
    s = parse_structure(data)
    assert ParsedStructure.from_json(s.to_json()) == s
    assert 0 <= s.body.body_start <= s.body.body_end == len(data)


_LINES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=Q",
        b"Content-Type: message/rfc822",
        b"Content-Type: text/plain",
        b"--Q",
        b"--Q--",
        b"",
        b"Subject: s",
        b"body",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_LINES, max_size=30), st.sampled_from([b"\r\n", b"\n"]))
def test_mime_like_input_gives_offsets_inside_the_message(
    lines: list[bytes], eol: bytes
) -> None:
    data = eol.join(lines)
    s = parse_structure(data)

    def walk(p: BodyPart) -> None:
        assert 0 <= p.header_start <= p.body_start <= p.body_end <= len(data)
        assert p.size == p.body_end - p.body_start
        for c in p.parts:
            assert p.body_start <= c.header_start
            walk(c)
        if p.body is not None:
            walk(p.body)

    walk(s.body)
