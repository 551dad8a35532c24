"""The model refuses what the MSSanté profile forbids, with named errors."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from mssante.message import (
    Author,
    Document,
    DocumentKind,
    Institution,
    InvalidFieldError,
    Masking,
    MessageError,
    MissingInsError,
    MultiplePatientsError,
    NotAPdfError,
    Patient,
    Sex,
)
from tests.message import samples


def test_patient_with_empty_ins_raises_missing_ins() -> None:
    with pytest.raises(MissingInsError):
        dataclasses.replace(samples.PATIENT, ins="")


@pytest.mark.parametrize(
    "ins",
    ["28001751234561", "280017512345611", "2800175123456AB", "580017512345610"],
    ids=["too-short", "wrong-key", "letters-in-key", "bad-first-digit"],
)
def test_patient_with_invalid_ins_is_refused(ins: str) -> None:
    with pytest.raises(InvalidFieldError, match=r"patient\.ins"):
        dataclasses.replace(samples.PATIENT, ins=ins)


def test_corsican_ins_key_reads_2a_as_19() -> None:
    nir = "180072A123456"
    key = 97 - int(nir.replace("2A", "19")) % 97
    patient = dataclasses.replace(samples.OTHER_PATIENT, ins=f"{nir}{key:02d}")
    assert patient.ins.endswith(f"{key:02d}")


def test_qualified_ins_needs_birth_place() -> None:
    with pytest.raises(InvalidFieldError, match="qualified"):
        dataclasses.replace(samples.PATIENT, birth_place=None)


def test_patient_name_with_hl7_delimiter_is_refused() -> None:
    with pytest.raises(InvalidFieldError, match="birth_name"):
        dataclasses.replace(samples.PATIENT, birth_name="DUPONT^X")


def test_unknown_ins_oid_is_refused() -> None:
    with pytest.raises(InvalidFieldError, match="ins_oid"):
        dataclasses.replace(samples.PATIENT, ins_oid="1.2.3")


def test_author_national_id_is_8_plus_rpps() -> None:
    assert samples.AUTHOR.national_id == "810001234565"


def test_author_rpps_failing_luhn_is_refused() -> None:
    with pytest.raises(InvalidFieldError, match="Luhn"):
        Author.from_rpps("10001234566", family_name="X", given_name="Y")


def test_author_adeli_is_accepted() -> None:
    author = Author(national_id="0751234567", family_name="X", given_name="Y")
    assert author.national_id.startswith("0")


def test_institution_needs_finess_or_siret() -> None:
    assert Institution.with_siret("Cabinet", "73282932000074").structure_id[0] == "3"
    with pytest.raises(InvalidFieldError, match="structure_id"):
        Institution("Cabinet", "2123")


def test_pdf_without_magic_raises_not_a_pdf() -> None:
    with pytest.raises(NotAPdfError):
        Document.pdf(b"<html>not a pdf</html>", filename="x.pdf")


def test_cda_reads_title_and_codes_from_header() -> None:
    doc = samples.discharge_letter()
    assert doc.kind is DocumentKind.CDA
    assert doc.title == "Lettre de liaison à la sortie"
    assert doc.xds is not None
    assert doc.xds.type_code.code == "34133-9"
    assert doc.xds.practice_setting.code == "ETABLISSEMENT"
    assert doc.xds.facility_type.code == "SA01"
    assert [c.code for c in doc.xds.confidentiality] == ["N"]


def test_cda_header_code_wins_over_given_code() -> None:
    doc = Document.cda(
        samples.DISCHARGE_LETTER.read_bytes(), facility_type=samples.FACILITY_TYPE
    )
    assert doc.xds is not None
    assert doc.xds.facility_type.code == "SA01"


def test_cda_without_facility_type_needs_one() -> None:
    with pytest.raises(InvalidFieldError, match="facility_type"):
        Document.cda(samples.LAB_REPORT.read_bytes())


def test_masking_codes_join_confidentiality() -> None:
    doc = Document.cda(
        samples.DISCHARGE_LETTER.read_bytes(),
        masking=[Masking.INVISIBLE_PATIENT, Masking.MASQUE_PS],
    )
    assert doc.masking == (Masking.MASQUE_PS, Masking.INVISIBLE_PATIENT)
    assert doc.xds is not None
    assert {c.scheme for c in doc.xds.confidentiality[1:]} == {"1.2.250.1.213.1.1.4.13"}


def test_report_with_two_patients_raises_multiple_patients() -> None:
    with pytest.raises(MultiplePatientsError):
        samples.report(patient=samples.OTHER_PATIENT)


def test_report_with_cda_and_no_patient_raises_missing_ins() -> None:
    with pytest.raises(MissingInsError):
        samples.report(patient=None)


def test_cda_without_ins_raises_missing_ins() -> None:
    cda = samples.DISCHARGE_LETTER.read_bytes().replace(
        b'root="1.2.250.1.213.1.4.10" extension="280017512345610"',
        b'root="1.2.250.1.999.9" extension="IPP-1"',
    )
    with pytest.raises(MissingInsError):
        samples.report(documents=(Document.cda(cda),))


def test_patient_without_cda_is_refused() -> None:
    with pytest.raises(InvalidFieldError, match="patient"):
        samples.report(documents=(samples.rendition(),), subject="Courrier")


def test_letter_without_cda_needs_a_subject() -> None:
    with pytest.raises(InvalidFieldError, match="subject"):
        samples.report(documents=(), patient=None)


def test_report_puts_cda_first_and_normalises_body() -> None:
    report = samples.report(
        documents=(samples.rendition(), samples.discharge_letter()), body="a\r\nb"
    )
    assert [d.kind for d in report.documents] == [DocumentKind.CDA, DocumentKind.PDF]
    assert report.body == "a\nb\n"


def test_every_model_error_is_a_message_error() -> None:
    with pytest.raises(MessageError):
        Patient(
            ins="",
            birth_name="X",
            first_names=("Y",),
            sex=Sex.UNKNOWN,
            birth_date=dt.date(2000, 1, 1),
        )


def test_header_injection_in_subject_is_refused() -> None:
    with pytest.raises(InvalidFieldError, match="subject"):
        samples.report(subject="x\r\nBcc: evil@example.org")


def test_patient_traits_must_match_the_cda() -> None:
    import dataclasses

    import pytest

    from mssante.message import InvalidFieldError
    from tests.message import samples

    wrong = dataclasses.replace(samples.PATIENT, birth_name="DURAND")
    with pytest.raises(InvalidFieldError, match=r"report\.patient\.birth_name"):
        samples.report(patient=wrong)
    wrong_date = dataclasses.replace(
        samples.PATIENT, birth_date=samples.PATIENT.birth_date.replace(day=16)
    )
    with pytest.raises(InvalidFieldError, match="birth_date"):
        samples.report(patient=wrong_date)
