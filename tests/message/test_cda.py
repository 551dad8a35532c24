"""CDA R2 headers read with a real XML parser, hostile XML refused."""

from __future__ import annotations

import datetime as dt

import pytest

from mssante.message import Document, MalformedCdaError, NotAPdfError, parse_cda
from mssante.message._cda import hl7_time_to_utc
from tests.message import samples


def test_discharge_letter_header_fields() -> None:
    header = parse_cda(samples.DISCHARGE_LETTER.read_bytes())
    assert header.document_id == "1.2.250.1.999.2.1^LDL-2025-0001"
    assert header.type_code.code == "34133-9"
    assert header.type_code.scheme == "2.16.840.1.113883.6.1"
    assert header.effective_time == "20250314091500"  # +0100 converted to UTC
    assert header.language == "fr-FR"
    (patient,) = header.patients
    assert patient.ins == "280017512345610"
    assert patient.ins_oid == "1.2.250.1.213.1.4.10"
    assert patient.birth_name == "DUPONT-ESSAI"
    assert patient.first_names == ("MARIE", "CLAIRE")
    assert patient.sex == "F"
    assert patient.birth_date == dt.date(1980, 1, 15)
    assert patient.birth_place == "75056"
    assert header.author is not None
    assert header.author.national_id == "810001234565"
    assert header.author.institution_id == "1750000001"
    assert header.non_xml_content is None


def test_lab_report_has_no_facility_type() -> None:
    header = parse_cda(samples.LAB_REPORT.read_bytes())
    assert header.facility_type is None
    assert header.practice_setting is not None
    assert header.practice_setting.code == "LABO"


def test_cda_n1_yields_the_wrapped_pdf() -> None:
    header = parse_cda(samples.CDA_N1_PDF.read_bytes())
    assert header.non_xml_media_type == "application/pdf"
    assert header.non_xml_content == samples.tiny_pdf(samples.RENDITION_TEXT)


def test_cda_n1_wrapping_a_non_pdf_raises_not_a_pdf() -> None:
    import base64

    data = samples.CDA_N1_PDF.read_bytes()
    pdf_b64 = base64.b64encode(samples.tiny_pdf(samples.RENDITION_TEXT))
    start = data.index(b'representation="B64">') + len(b'representation="B64">')
    end = data.index(b"</text>", start)
    forged = data[:start] + base64.b64encode(b"MZ not a pdf") + data[end:]
    assert pdf_b64[:10] not in forged
    with pytest.raises(NotAPdfError):
        samples.report(
            documents=(Document.cda(forged, facility_type=samples.FACILITY_TYPE),)
        )


@pytest.mark.parametrize(
    "data",
    [
        b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id root='1'/>",
        b"not xml at all",
        b"",
    ],
    ids=["truncated", "text", "empty"],
)
def test_not_well_formed_cda_raises_malformed(data: bytes) -> None:
    with pytest.raises(MalformedCdaError, match="well-formed"):
        parse_cda(data)


def test_entity_expansion_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&b;</title></ClinicalDocument>'
    )
    with pytest.raises(MalformedCdaError, match="forbidden"):
        parse_cda(bomb)


def test_other_root_element_is_refused() -> None:
    with pytest.raises(MalformedCdaError, match="root element"):
        parse_cda(b"<ClinicalDocument><id root='1'/></ClinicalDocument>")


def test_missing_title_is_refused() -> None:
    data = samples.DISCHARGE_LETTER.read_bytes().replace(
        b"<title>Lettre de liaison \xc3\xa0 la sortie</title>", b""
    )
    with pytest.raises(MalformedCdaError, match="title"):
        parse_cda(data)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20250314101500+0100", "20250314091500"),
        ("20250314", "20250314"),
        ("202503140030-0230", "20250314030000"),
        ("20250101003000+0100", "20241231233000"),
    ],
)
def test_hl7_time_converts_to_utc(value: str, expected: str) -> None:
    assert hl7_time_to_utc(value) == expected


@pytest.mark.parametrize("value", ["2025-03-14", "20251399+0100", "20250314+01"])
def test_bad_hl7_time_is_refused(value: str) -> None:
    with pytest.raises(MalformedCdaError):
        hl7_time_to_utc(value)
