"""MSSanté messages: headers, subject, round trips, refused messages."""

from __future__ import annotations

import dataclasses
import email.policy
import io
import zipfile
from email.parser import BytesParser
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante.message import (
    Document,
    IntegrityError,
    MalformedMessageError,
    Report,
    compose_message,
    parse_message,
)
from tests.message import samples

if TYPE_CHECKING:
    from email.message import EmailMessage


def _compose(report: Report) -> bytes:
    return compose_message(
        report,
        software=samples.SOFTWARE,
        now=samples.NOW,
        message_id=samples.MESSAGE_ID,
        uid=samples.UID,
    )


def _headers(data: bytes) -> EmailMessage:
    return BytesParser(policy=email.policy.default).parsebytes(data)


def test_report_subject_follows_mssante_form() -> None:
    msg = _headers(_compose(samples.report()))
    assert msg["Subject"] == (
        "XDM/1.0/DDM+Lettre de liaison à la sortie DUPONT-ESSAI MARIE 15/01/1980"
    )


def test_report_headers_with_cda() -> None:
    msg = _headers(
        _compose(
            samples.report(documents=(samples.discharge_letter(), samples.lab_report()))
        )
    )
    assert msg["X-MSS-NIL"] == "mssante-tests/1.0"
    assert msg["X-MSS-CODECDA"] == "34133-9,11502-2"
    assert msg["X-MSS-INS"] == "O"
    assert msg["Message-ID"] == samples.MESSAGE_ID
    assert msg["X-MSS-MES"] is None
    assert msg["Disposition-Notification-To"] is None


def test_unqualified_ins_is_flagged_n() -> None:
    patient = dataclasses.replace(samples.PATIENT, qualified=False)
    msg = _headers(_compose(samples.report(patient=patient)))
    assert msg["X-MSS-INS"] == "N"


def test_letter_without_cda_has_nil_but_no_cda_headers() -> None:
    letter = Report(
        sender=samples.SENDER,
        to=(samples.COLLEAGUE,),
        subject="Photo de la lésion",
        documents=(
            Document.other(
                b"\x89PNG\r\n\x1a\n", filename="lesion.png", mime_type="image/png"
            ),
        ),
        body="Voici la photo.",
    )
    msg = _headers(_compose(letter))
    assert msg["X-MSS-NIL"] == "mssante-tests/1.0"
    assert msg["X-MSS-CODECDA"] is None
    assert msg["X-MSS-INS"] is None
    assert [p.get_filename() for p in msg.iter_attachments()] == ["lesion.png"]
    assert parse_message(_compose(letter)).report == letter


def test_end_of_thread_read_receipt_and_threading_headers() -> None:
    reply = samples.report(
        end_of_thread=True,
        read_receipt=True,
        in_reply_to="<a@x.example>",
        references=("<root@x.example>", "<a@x.example>"),
    )
    msg = _headers(_compose(reply))
    assert msg["X-MSS-MES"] == "FIN"
    assert msg["Disposition-Notification-To"] == samples.SENDER
    assert msg["In-Reply-To"] == "<a@x.example>"
    assert msg["References"] == "<root@x.example> <a@x.example>"


def test_parts_are_text_then_zip_then_pdf() -> None:
    msg = _headers(_compose(samples.report()))
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content_charset() == "utf-8"
    assert [
        (p.get_content_type(), p.get_filename()) for p in msg.iter_attachments()
    ] == [
        ("application/zip", "IHE_XDM.ZIP"),
        ("application/pdf", "compte-rendu.pdf"),
    ]


def test_compose_is_deterministic_with_crlf_lines() -> None:
    data = _compose(samples.report())
    assert data == _compose(samples.report())
    assert b"\n" not in data.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "documents",
    [
        (samples.discharge_letter(), samples.rendition()),
        (
            samples.discharge_letter(),
            samples.lab_report(),
            samples.cda_n1(),
            samples.rendition(),
        ),
        (samples.cda_n1(),),
    ],
    ids=["letter+pdf", "three-cdas+pdf", "cda-n1-only"],
)
def test_report_round_trips(documents: tuple[Document, ...]) -> None:
    report = samples.report(documents=documents, read_receipt=True, cc=("a@b.example",))
    received = parse_message(_compose(report))
    assert received.report == report
    assert received.message_id == samples.MESSAGE_ID
    assert received.date == samples.NOW
    assert received.ins_qualified is True
    assert received.product == "mssante-tests/1.0"
    assert received.submission is not None


def test_round_trip_survives_lf_line_ends() -> None:
    data = _compose(samples.report()).replace(b"\r\n", b"\n")
    assert parse_message(data).report == samples.report()


def _swap_zip_member(data: bytes, name: str, content: bytes) -> bytes:
    msg = _headers(data)
    for part in msg.iter_attachments():
        if part.get_filename() == "IHE_XDM.ZIP":
            original = part.get_payload(decode=True)
            assert isinstance(original, bytes)
            out = io.BytesIO()
            with (
                zipfile.ZipFile(io.BytesIO(original)) as src,
                zipfile.ZipFile(out, "w") as dst,
            ):
                for info in src.infolist():
                    dst.writestr(
                        info, content if info.filename == name else src.read(info)
                    )
            part.set_content(
                out.getvalue(), "application", "zip", filename="IHE_XDM.ZIP"
            )
    return msg.as_bytes(policy=email.policy.SMTP)


def test_parse_refuses_a_document_whose_hash_does_not_match() -> None:
    letter = samples.DISCHARGE_LETTER.read_bytes()
    forged = letter.replace(b"trois fois", b"cinq fois")
    data = _swap_zip_member(
        _compose(samples.report()), "IHE_XDM/SUBSET01/DOC0001.XML", forged
    )
    with pytest.raises(IntegrityError):
        parse_message(data)


def test_parse_refuses_cda_headers_without_cda() -> None:
    letter = Report(sender=samples.SENDER, to=(samples.COLLEAGUE,), subject="Bonjour")
    data = _compose(letter).replace(b"X-MSS-NIL:", b"X-MSS-INS: O\r\nX-MSS-NIL:")
    with pytest.raises(MalformedMessageError, match="without a CDA"):
        parse_message(data)


def test_parse_refuses_cda_without_ins_header() -> None:
    data = _compose(samples.report()).replace(b"X-MSS-INS: O\r\n", b"")
    with pytest.raises(MalformedMessageError, match="X-MSS-INS"):
        parse_message(data)


def test_parse_refuses_two_senders() -> None:
    data = _compose(samples.report()).replace(b"From: ", b"From: a@x.example, ", 1)
    with pytest.raises(MalformedMessageError, match="From"):
        parse_message(data)


_header_text = (
    st.text(
        alphabet=st.characters(
            codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")
        ),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)
_body = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_categories=("Cs", "Zl", "Zp"),
        exclude_characters="\x0b\x0c\x1c\x1d\x1e\x85\r",
    ),
    max_size=300,
)


@settings(max_examples=40, deadline=None)
@given(
    subject=_header_text,
    body=_body,
    # ASCII only: the stdlib inserts a space between the encoded words of a
    # long non-ASCII display name it folds (a known gap, see the docs).
    sender_name=st.none() | st.from_regex(r"[A-Za-z][A-Za-z .-]{0,40}", fullmatch=True),
    read_receipt=st.booleans(),
    end_of_thread=st.booleans(),
)
def test_plain_letters_round_trip(
    subject: str,
    body: str,
    sender_name: str | None,
    read_receipt: bool,
    end_of_thread: bool,
) -> None:
    letter = Report(
        sender=samples.SENDER,
        sender_name=sender_name,
        to=(samples.COLLEAGUE, samples.PATIENT_ADDRESS),
        subject=subject,
        body=body,
        read_receipt=read_receipt,
        end_of_thread=end_of_thread,
        documents=(samples.rendition(),),
    )
    assert parse_message(_compose(letter)).report == letter


def test_asking_for_the_treating_doctor_copy_travels_in_a_header() -> None:
    report = samples.report(copy_treating_doctor=True)
    raw = _compose(report)
    assert b"X-MSSante-Copy-Treating: yes\r\n" in raw
    assert parse_message(raw).report == report
    assert b"X-MSSante-Copy-Treating" not in _compose(samples.report())
