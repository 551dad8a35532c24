"""A report from a CDA document: patient and author taken from its header.

Practice software usually has the CDA R2 document it produced; the patient's
INS traits and the author are in its header (``recordTarget``, ``author``).
:func:`report_from_cda` builds the :class:`~mssante.message.Report` from it,
so that what the message says about the patient is what the document says.
Every missing or contradictory field raises a
:class:`~mssante.message.InvalidFieldError` naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mssante.message import (
    Author,
    Document,
    InvalidFieldError,
    MissingInsError,
    Patient,
    Report,
    Sex,
    parse_cda,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


def report_from_cda(
    cda: bytes,
    *,
    sender: str,
    to: Sequence[str],
    pdf: bytes | None = None,
    pdf_name: str = "compte-rendu.pdf",
    patient_ins: str | None = None,
    qualified: bool = False,
    body: str = "",
    read_receipt: bool = False,
    end_of_thread: bool = False,
    sender_name: str | None = None,
    copy_treating_doctor: bool = False,
) -> Report:
    """The report carrying ``cda`` (and its PDF rendition) to ``to``.

    Args:
        patient_ins: when given, must be the INS of the CDA's patient (a
            guard against attaching the wrong patient's document).
        qualified: the INS was checked against the national teleservice
            (``X-MSS-INS: O``); needs the birth place in the CDA.
        copy_treating_doctor: ask the patient's relay to copy the report to
            the patient's declared treating doctor.
    """
    header = parse_cda(cda)
    if len(header.patients) != 1:
        raise InvalidFieldError("cda.recordTarget", "exactly one patient per document")
    cda_patient = header.patients[0]
    if not cda_patient.ins or not cda_patient.ins_oid:
        raise MissingInsError("cda.patient.ins", "the CDA header has no INS")
    if patient_ins is not None and patient_ins != cda_patient.ins:
        raise InvalidFieldError(
            "patient_ins", f"{patient_ins} is not the CDA's patient ({cda_patient.ins})"
        )
    for name in ("birth_name", "sex", "birth_date"):
        if getattr(cda_patient, name) is None:
            raise InvalidFieldError(
                f"cda.patient.{name}", "missing from the CDA header"
            )
    assert cda_patient.birth_name is not None  # noqa: S101 - checked above
    assert cda_patient.birth_date is not None  # noqa: S101
    try:
        sex = Sex(cda_patient.sex)
    except ValueError:
        raise InvalidFieldError(
            "cda.patient.sex", f"{cda_patient.sex!r} is not M, F or U"
        ) from None
    patient = Patient(
        ins=cda_patient.ins,
        ins_oid=cda_patient.ins_oid,
        birth_name=cda_patient.birth_name,
        first_names=cda_patient.first_names,
        sex=sex,
        birth_date=cda_patient.birth_date,
        birth_place=cda_patient.birth_place,
        qualified=qualified,
    )
    cda_author = header.author
    if cda_author is None or not cda_author.national_id:
        raise InvalidFieldError("cda.author", "the CDA header names no author")
    author = Author(
        national_id=cda_author.national_id,
        family_name=cda_author.family_name or "",
        given_name=cda_author.given_name or "",
    )
    documents = [Document.cda(cda)]
    if pdf is not None:
        documents.append(Document.pdf(pdf, filename=pdf_name))
    return Report(
        sender=sender,
        sender_name=sender_name,
        to=tuple(to),
        author=author,
        patient=patient,
        documents=tuple(documents),
        body=body,
        read_receipt=read_receipt,
        end_of_thread=end_of_thread,
        copy_treating_doctor=copy_treating_doctor,
    )
