"""Synthetic samples for the message profile tests: people, codes, a tiny PDF.

Everyone here is invented: the INS uses the test OID (1.2.250.1.213.1.4.10),
the RPPS and FINESS numbers pass their checks but belong to no one. The CDA
samples in ``tests/data/cda/`` name the same patient and author.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from mssante.message import (
    OID_INS_NIR_TEST,
    Author,
    Code,
    Document,
    Institution,
    Patient,
    Report,
    Sex,
    Software,
)

CDA_DIR = Path(__file__).resolve().parent.parent / "data" / "cda"
DISCHARGE_LETTER = CDA_DIR / "discharge-letter.xml"
LAB_REPORT = CDA_DIR / "lab-report.xml"
CDA_N1_PDF = CDA_DIR / "cda-n1-pdf.xml"
RENDITION_TEXT = "Compte rendu de sortie - patiente de test"

NOW = dt.datetime(2025, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
UID = uuid.UUID("6f1e7c1a-2b1f-4c39-9d0e-1a2b3c4d5e6f")
SOFTWARE = Software(product="mssante-tests/1.0", source_oid="1.2.250.1.999.1.1")
MESSAGE_ID = "<6f1e7c1a.report@mssante.example>"

PATIENT = Patient(
    ins="280017512345610",
    ins_oid=OID_INS_NIR_TEST,
    birth_name="DUPONT-ESSAI",
    first_names=("MARIE", "CLAIRE"),
    sex=Sex.FEMALE,
    birth_date=dt.date(1980, 1, 15),
    birth_place="75056",
    qualified=True,
)
OTHER_PATIENT = Patient(
    ins="155069912300108",
    ins_oid=OID_INS_NIR_TEST,
    birth_name="MARTIN",
    first_names=("PAUL",),
    sex=Sex.MALE,
    birth_date=dt.date(1955, 6, 20),
)
AUTHOR = Author.from_rpps(
    "10001234565",
    family_name="MEDECIN",
    given_name="Jeanne",
    role=Code("10", "Médecin", "1.2.250.1.71.1.2.7"),
    specialty=Code("SM54", "Médecine générale", "1.2.250.1.71.4.2.5"),
    institution=Institution.with_finess("Clinique Exemple", "750000001"),
)
SENDER = "jeanne.medecin@clinique.mssante.example"
COLLEAGUE = "paul.confrere@cabinet.mssante.example"
PATIENT_ADDRESS = "280017512345610@patient.mssante.example"
PRACTICE_SETTING = Code(
    "ETABLISSEMENT", "Etablissement de santé", "1.2.250.1.213.1.1.4.9"
)
FACILITY_TYPE = Code("SA01", "Etablissement Public de santé", "1.2.250.1.71.4.2.4")


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF 1.4 showing ``text`` (ASCII), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def discharge_letter() -> Document:
    return Document.cda(DISCHARGE_LETTER.read_bytes())


def lab_report() -> Document:
    return Document.cda(LAB_REPORT.read_bytes(), facility_type=FACILITY_TYPE)


def cda_n1() -> Document:
    return Document.cda(CDA_N1_PDF.read_bytes(), facility_type=FACILITY_TYPE)


def rendition() -> Document:
    return Document.pdf(tiny_pdf(RENDITION_TEXT), filename="compte-rendu.pdf")


def report(**changes: Any) -> Report:  # noqa: ANN401 - dataclasses.replace fields
    """A discharge letter with its PDF rendition, to a colleague."""
    base = Report(
        sender=SENDER,
        sender_name="Dr Jeanne MEDECIN",
        to=(COLLEAGUE,),
        author=AUTHOR,
        patient=PATIENT,
        documents=(discharge_letter(), rendition()),
        body="Bonjour,\n\nVeuillez trouver le compte rendu de sortie.\n\nDr MEDECIN\n",
    )
    return dataclasses.replace(base, **changes)
