"""The typed model of an MSSanté message: patient, author, documents, report.

Owns the rules a message must satisfy before any byte is built, checked in
``__post_init__`` so that no invalid object exists, whether it was built by
practice software or read back from a received message:

- a patient has a 15-character INS whose key is 97 - (NIR mod 97), with an
  INS OID; a *qualified* INS carries its five traits (birth name, first names,
  sex, birth date, birth place code);
- an author has a national practitioner id ``8<RPPS>`` (Luhn) or ``0<ADELI>``;
- a PDF starts with ``%PDF-``; a CDA is well-formed and is a ClinicalDocument;
- a report carrying CDA documents names exactly one patient, the one of every
  CDA header (one patient per message), and an author.

Names and identifiers never hold an HL7 delimiter (``^&~|\\``) nor a line
break, so that METADATA.XML values and mail headers need no escaping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mssante.message._cda import CdaHeader, parse_cda
from mssante.message._codes import (
    CONFIDENTIALITY_NORMAL,
    FORMAT_MIME_SUFFICIENT,
    FORMAT_XDS_SD_PDF,
    HL7_DELIMITERS,
    INS_OIDS,
    OID_INS_NIR,
    Code,
    Masking,
)
from mssante.message._errors import (
    InvalidFieldError,
    MissingInsError,
    MultiplePatientsError,
    NotAPdfError,
)

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence

INS_LENGTH = 15
RPPS_LENGTH = 11
ADELI_LENGTH = 9
FINESS_LENGTH = 9
SIRET_LENGTH = 14
BIRTH_PLACE_LENGTH = 5  # INSEE "code officiel géographique" of a commune
PDF_MAGIC = b"%PDF-"  # ISO 32000-1 §7.5.2: the file header
MIME_CDA = "text/xml"
MIME_PDF = "application/pdf"
# ANS JDV_J07-XdsClassCode-CISIS: "Compte rendu", the class of most reports.
CLASS_REPORT = Code("10", "Compte rendu", "1.2.250.1.213.1.1.4.1")


def _check_text(field_name: str, value: str, *, allow_space: bool = True) -> None:
    if not value or not value.strip():
        raise InvalidFieldError(field_name, "must not be empty")
    if HL7_DELIMITERS & set(value):
        raise InvalidFieldError(field_name, "must not hold ^ & ~ | or \\")
    if any(c in value for c in "\r\n\t"):
        raise InvalidFieldError(field_name, "must not hold a line break or tab")
    if not allow_space and " " in value:
        raise InvalidFieldError(field_name, "must not hold a space")
    if value != value.strip():
        raise InvalidFieldError(field_name, "must not start or end with a space")


def _check_header_text(field_name: str, value: str) -> None:
    # RFC 5322 §2.2: a header field body holds no bare CR or LF.
    if "\r" in value or "\n" in value:
        raise InvalidFieldError(field_name, "must not hold a line break")


def luhn_valid(digits: str) -> bool:
    """The Luhn check (ISO/IEC 7812-1 Annex B) over a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def ins_key(nir: str) -> int:
    """The key of a 13-character NIR: 97 - (n mod 97), 2A/2B read as 19/18."""
    return 97 - int(nir.replace("2A", "19").replace("2B", "18")) % 97


def check_ins(value: str) -> None:
    """Raise :class:`InvalidFieldError` unless ``value`` is an INS matricule."""
    if not value:
        raise MissingInsError("patient.ins", "the patient has no INS")
    nir, key = value[:13], value[13:]
    nir_digits = nir[:5] + nir[7:] if nir[5:7] in ("2A", "2B") else nir
    if (
        len(value) != INS_LENGTH
        or not nir_digits.isascii()
        or not nir_digits.isdigit()
        or not key.isdigit()
        or value[0] not in "123478"
    ):
        raise InvalidFieldError(
            "patient.ins", "must be a 13-character NIR (2A/2B allowed) + 2-digit key"
        )
    if int(key) != ins_key(nir):
        raise InvalidFieldError("patient.ins", "key is not 97 - (NIR mod 97)")


class Sex(enum.Enum):
    """Administrative sex as the INS gives it (HL7 AdministrativeGender)."""

    MALE = "M"
    FEMALE = "F"
    UNKNOWN = "U"


@dataclass(frozen=True, slots=True, kw_only=True)
class Patient:
    """A patient identified by INS, with the INS traits.

    ``qualified`` is True only for an INS checked against the national
    teleservice; it then needs ``birth_place`` (the fifth trait).
    """

    ins: str
    ins_oid: str = OID_INS_NIR
    birth_name: str
    first_names: tuple[str, ...]
    sex: Sex
    birth_date: dt.date
    birth_place: str | None = None
    qualified: bool = False

    def __post_init__(self) -> None:
        check_ins(self.ins)
        if self.ins_oid not in INS_OIDS:
            raise InvalidFieldError(
                "patient.ins_oid", f"{self.ins_oid} is not an INS OID"
            )
        _check_text("patient.birth_name", self.birth_name)
        if not self.first_names:
            raise InvalidFieldError("patient.first_names", "at least one first name")
        for name in self.first_names:
            _check_text("patient.first_names", name, allow_space=False)
        if self.birth_place is not None and (
            len(self.birth_place) != BIRTH_PLACE_LENGTH
            or not self.birth_place.isascii()
            or not self.birth_place.isalnum()
        ):
            raise InvalidFieldError(
                "patient.birth_place", "must be a 5-character INSEE code"
            )
        if self.qualified and self.birth_place is None:
            raise InvalidFieldError(
                "patient.qualified", "a qualified INS comes with its birth place code"
            )

    @property
    def first_name(self) -> str:
        """The first of the first names (the one the subject line shows)."""
        return self.first_names[0]


@dataclass(frozen=True, slots=True)
class Institution:
    """A health structure: its name and idNatStruct (``1``+FINESS or ``3``+SIRET)."""

    name: str
    structure_id: str

    def __post_init__(self) -> None:
        _check_text("institution.name", self.name)
        kind, number = self.structure_id[:1], self.structure_id[1:]
        finess = kind == "1" and len(number) == FINESS_LENGTH and number.isalnum()
        siret = kind == "3" and len(number) == SIRET_LENGTH and number.isdigit()
        if not (finess or siret) or not number.isascii():
            raise InvalidFieldError(
                "institution.structure_id", "must be 1 + FINESS (9) or 3 + SIRET (14)"
            )

    @classmethod
    def with_finess(cls, name: str, finess: str) -> Institution:
        """An institution identified by its FINESS number."""
        return cls(name, "1" + finess)

    @classmethod
    def with_siret(cls, name: str, siret: str) -> Institution:
        """An institution identified by its SIRET number."""
        return cls(name, "3" + siret)


@dataclass(frozen=True, slots=True, kw_only=True)
class Author:
    """The health professional who writes: national id ``8<RPPS>`` or ``0<ADELI>``."""

    national_id: str
    family_name: str
    given_name: str
    role: Code | None = None
    specialty: Code | None = None
    institution: Institution | None = None

    def __post_init__(self) -> None:
        kind, number = self.national_id[:1], self.national_id[1:]
        rpps = kind == "8" and len(number) == RPPS_LENGTH
        adeli = kind == "0" and len(number) == ADELI_LENGTH
        if not (rpps or adeli) or not number.isascii() or not number.isdigit():
            raise InvalidFieldError(
                "author.national_id", "must be 8 + RPPS (11 digits) or 0 + ADELI (9)"
            )
        if rpps and not luhn_valid(number):
            raise InvalidFieldError("author.national_id", "RPPS fails its Luhn check")
        _check_text("author.family_name", self.family_name)
        _check_text("author.given_name", self.given_name)

    @classmethod
    def from_rpps(
        cls,
        rpps: str,
        *,
        family_name: str,
        given_name: str,
        role: Code | None = None,
        specialty: Code | None = None,
        institution: Institution | None = None,
    ) -> Author:
        """An author identified by RPPS; the national id is ``8`` + RPPS."""
        return cls(
            national_id="8" + rpps,
            family_name=family_name,
            given_name=given_name,
            role=role,
            specialty=specialty,
            institution=institution,
        )


class DocumentKind(enum.Enum):
    """What a document is: it decides where it travels in the message."""

    CDA = "cda"  # inside IHE_XDM.ZIP, described in METADATA.XML
    PDF = "pdf"  # attached next to the ZIP (the human-readable rendition)
    OTHER = "other"  # attached as is (images, scans, ...)


@dataclass(frozen=True, slots=True)
class XdsCodes:
    """The XDS.b document entry codes of a CDA document, resolved."""

    class_code: Code
    type_code: Code
    format_code: Code
    practice_setting: Code
    facility_type: Code
    confidentiality: tuple[Code, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """One document of a message. Build it with :meth:`cda`, :meth:`pdf` or :meth:`other`.

    A CDA document carries its resolved :class:`XdsCodes` and its parsed
    header (not compared). ``filename`` is the attachment name; a CDA's
    name inside the XDM archive is chosen by the packer.
    """

    kind: DocumentKind
    content: bytes
    mime_type: str
    title: str
    filename: str | None = None
    xds: XdsCodes | None = None
    header: CdaHeader | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_header_text("document.title", self.title)
        if self.filename is not None:
            _check_header_text("document.filename", self.filename)
        if self.kind is DocumentKind.PDF:
            if not self.content.startswith(PDF_MAGIC):
                raise NotAPdfError(
                    f"{self.filename or self.title}: not a PDF (no %PDF-)"
                )
            if self.mime_type != MIME_PDF:
                raise InvalidFieldError("document.mime_type", f"a PDF is {MIME_PDF}")
        if self.kind is DocumentKind.CDA:
            if self.xds is None:
                raise InvalidFieldError(
                    "document.xds", "a CDA document needs XDS codes"
                )
            header = self.header or parse_cda(self.content)
            if self.header is None:
                object.__setattr__(self, "header", header)
            if header.non_xml_media_type == MIME_PDF and not (
                header.non_xml_content or b""
            ).startswith(PDF_MAGIC):
                raise NotAPdfError("CDA nonXMLBody declares a PDF that is not a PDF")

    @classmethod
    def cda(
        cls,
        content: bytes,
        *,
        class_code: Code = CLASS_REPORT,
        format_code: Code | None = None,
        practice_setting: Code | None = None,
        facility_type: Code | None = None,
        masking: Sequence[Masking] = (),
    ) -> Document:
        """A CDA R2 document; XDS codes come from its header where it has them.

        Args:
            content: the CDA bytes.
            class_code: XDS classCode (the CDA header has none).
            format_code: XDS formatCode; by default XDS-SD PDF for a CDA
                wrapping a PDF, "mime type sufficient" otherwise.
            practice_setting: used when the header has no
                ``representedOrganization/standardIndustryClassCode``.
            facility_type: used when the header has no ``healthCareFacility/code``.
            masking: French masking codes added to the confidentiality codes.

        Raises:
            MalformedCdaError: the CDA is not well-formed or not a CDA.
            NotAPdfError: a CDA N1 whose embedded PDF is not a PDF.
            InvalidFieldError: a code the header lacks was not given.
        """
        header = parse_cda(content)
        practice = header.practice_setting or practice_setting
        facility = header.facility_type or facility_type
        if practice is None:
            raise InvalidFieldError(
                "document.practice_setting", "not in the CDA header and not given"
            )
        if facility is None:
            raise InvalidFieldError(
                "document.facility_type", "not in the CDA header and not given"
            )
        if format_code is None:
            wraps_pdf = header.non_xml_media_type == MIME_PDF
            format_code = FORMAT_XDS_SD_PDF if wraps_pdf else FORMAT_MIME_SUFFICIENT
        confidentiality = (
            header.confidentiality or CONFIDENTIALITY_NORMAL,
            *(m.code for m in sorted(set(masking), key=lambda m: m.value)),
        )
        return cls(
            kind=DocumentKind.CDA,
            content=content,
            mime_type=MIME_CDA,
            title=header.title,
            xds=XdsCodes(
                class_code=class_code,
                type_code=header.type_code,
                format_code=format_code,
                practice_setting=practice,
                facility_type=facility,
                confidentiality=confidentiality,
            ),
            header=header,
        )

    @classmethod
    def pdf(
        cls, content: bytes, *, filename: str, title: str | None = None
    ) -> Document:
        """A PDF (the rendition of a report, or a scan). Raises NotAPdfError."""
        return cls(
            kind=DocumentKind.PDF,
            content=content,
            mime_type=MIME_PDF,
            title=title or filename,
            filename=filename,
        )

    @classmethod
    def other(
        cls, content: bytes, *, filename: str, mime_type: str, title: str | None = None
    ) -> Document:
        """Any other attachment (an image, a scan in another format)."""
        return cls(
            kind=DocumentKind.OTHER,
            content=content,
            mime_type=mime_type,
            title=title or filename,
            filename=filename,
        )

    @property
    def masking(self) -> tuple[Masking, ...]:
        """The French masking codes among the confidentiality codes."""
        if self.xds is None:
            return ()
        values = {c.code for c in self.xds.confidentiality}
        return tuple(m for m in Masking if m.value in values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """A message: a report about one patient, or a plain letter or reply.

    With CDA documents it is a report: ``patient`` and ``author`` are
    required, every CDA names that patient, and the subject defaults to the
    MSSanté form. Without CDA documents ``patient`` must be None (the patient
    travels only in METADATA.XML) and ``subject`` is required.
    """

    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    sender_name: str | None = None
    author: Author | None = None
    patient: Patient | None = None
    documents: tuple[Document, ...] = ()
    body: str = ""
    subject: str | None = None
    read_receipt: bool = False
    end_of_thread: bool = False
    # Ask the patient's relay to copy the message to the patient's declared
    # treating doctor (X-MSSante-Copy-Treating); the relay decides who that is.
    copy_treating_doctor: bool = False
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("to", "cc", "references"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        # Canonical form, so that a parsed message equals the report composed:
        # CDA documents first (they travel in IHE_XDM.ZIP, the first
        # attachment), LF line ends, a final newline on a body that is not blank
        # (a blank body is empty).
        object.__setattr__(
            self,
            "documents",
            tuple(sorted(self.documents, key=lambda d: d.kind is not DocumentKind.CDA)),
        )
        body = self.body.replace("\r\n", "\n").replace("\r", "\n")
        if not body.strip("\n"):
            body = ""
        elif not body.endswith("\n"):
            body += "\n"
        object.__setattr__(self, "body", body)
        # RFC 5322 §3.2.5: spaces in a display name (a phrase) are folding
        # white space, one space in meaning.
        if self.sender_name is not None:
            object.__setattr__(
                self, "sender_name", " ".join(self.sender_name.split()) or None
            )
        if not self.to:
            raise InvalidFieldError("report.to", "at least one recipient")
        for address in (self.sender, *self.to, *self.cc):
            _check_address(address)
        for name in ("sender_name", "subject", "in_reply_to"):
            value = getattr(self, name)
            if value is not None:
                _check_header_text(f"report.{name}", value)
        for ref in self.references:
            _check_header_text("report.references", ref)
        cdas = self.cda_documents
        if not cdas:
            if self.patient is not None:
                raise InvalidFieldError(
                    "report.patient", "a patient travels with a CDA document only"
                )
            if self.subject is None:
                raise InvalidFieldError("report.subject", "required without a CDA")
            return
        if self.patient is None:
            raise MissingInsError(
                "report.patient", "a report with a CDA needs its patient"
            )
        if self.author is None:
            raise InvalidFieldError(
                "report.author", "a report with a CDA needs its author"
            )
        for doc in cdas:
            _check_cda_patient(doc, self.patient)

    @property
    def cda_documents(self) -> tuple[Document, ...]:
        """The CDA documents, in order (they go into IHE_XDM.ZIP)."""
        return tuple(d for d in self.documents if d.kind is DocumentKind.CDA)


def _check_address(address: str) -> None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c in address for c in " <>\r\n,"):
        raise InvalidFieldError("report.address", f"not a mail address: {address!r}")


def _check_cda_patient(doc: Document, patient: Patient) -> None:
    header = doc.header or parse_cda(doc.content)
    if len(header.patients) > 1:
        raise MultiplePatientsError("document.recordTarget", "a CDA names two patients")
    if not header.patients or header.patients[0].ins is None:
        raise MissingInsError("document.recordTarget", f"{header.title}: no INS")
    cda_patient = header.patients[0]
    if (cda_patient.ins, cda_patient.ins_oid) != (patient.ins, patient.ins_oid):
        raise MultiplePatientsError(
            "document.recordTarget",
            f"{header.title}: CDA patient is not the report's patient",
        )
    # The INS traits the CDA states must be the report's (identity
    # vigilance: one INS with another person's traits is a wrong patient).
    traits: dict[str, tuple[object, object]] = {
        "birth_name": (cda_patient.birth_name, patient.birth_name),
        "sex": (cda_patient.sex, patient.sex.value),
        "birth_date": (cda_patient.birth_date, patient.birth_date),
    }
    if cda_patient.first_names:
        traits["first_names"] = (
            tuple(n.upper() for n in cda_patient.first_names),
            tuple(n.upper() for n in patient.first_names),
        )
    for name, (in_cda, in_report) in traits.items():
        if in_cda is not None and in_cda != in_report:
            raise InvalidFieldError(
                f"report.patient.{name}",
                f"{header.title}: the CDA says {in_cda!r}, the report {in_report!r}",
            )
