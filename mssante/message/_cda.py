"""Reading the header of a CDA R2 document.

Owns :func:`parse_cda`: bytes of a ``ClinicalDocument`` in, a
:class:`CdaHeader` out. The XML goes through ``defusedxml`` (no entity
expansion, no external reference) and is read by element path, never by
pattern matching on the text. Only the header is read, plus the embedded file
of a CDA "N1" (``nonXMLBody``), whose bytes are decoded from base64.

What must stay true: a document that is not well-formed, or whose root is not
``{urn:hl7-org:v3}ClinicalDocument``, raises :class:`MalformedCdaError`; a
header element that is absent gives ``None``, never a guess.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree

from mssante.message._codes import INS_OIDS, Code
from mssante.message._errors import MalformedCdaError

NS = {"hl7": "urn:hl7-org:v3"}
_ROOT_TAG = "{urn:hl7-org:v3}ClinicalDocument"


@dataclass(frozen=True, slots=True)
class CdaPatient:
    """The patient of ``recordTarget/patientRole`` as the CDA header states it."""

    ins: str | None
    ins_oid: str | None
    birth_name: str | None
    first_names: tuple[str, ...]
    sex: str | None
    birth_date: dt.date | None
    birth_place: str | None


@dataclass(frozen=True, slots=True)
class CdaAuthor:
    """The first ``author/assignedAuthor`` of the header."""

    national_id: str | None
    family_name: str | None
    given_name: str | None
    institution_name: str | None
    institution_id: str | None


@dataclass(frozen=True, slots=True)
class CdaHeader:
    """What the message profile takes from a CDA header.

    ``document_id`` is ``root`` or ``root^extension`` (the XDS uniqueId form).
    ``effective_time`` is the XDS ``creationTime`` form: UTC ``YYYYMMDDhhmmss``
    (or shorter when the CDA gives less precision and no offset).
    """

    document_id: str
    type_code: Code
    title: str
    effective_time: str
    confidentiality: Code | None
    language: str | None
    patients: tuple[CdaPatient, ...]
    author: CdaAuthor | None
    practice_setting: Code | None
    facility_type: Code | None
    non_xml_media_type: str | None
    non_xml_content: bytes | None


def parse_cda(content: bytes) -> CdaHeader:
    """Parse the header of a CDA R2 document.

    Args:
        content: the document bytes (any encoding its XML declaration names).

    Returns:
        The header fields the message profile uses.

    Raises:
        MalformedCdaError: not well-formed, forbidden XML constructs (entities,
            DTD), not a ``ClinicalDocument``, or a mandatory header element
            (``id``, ``code``, ``title``, ``effectiveTime``) missing.
    """
    try:
        root = defusedxml.ElementTree.fromstring(content)
    except ParseError as exc:
        raise MalformedCdaError(f"CDA is not well-formed XML: {exc}") from exc
    except defusedxml.DefusedXmlException as exc:
        raise MalformedCdaError(f"CDA uses a forbidden XML construct: {exc}") from exc
    if root.tag != _ROOT_TAG:
        raise MalformedCdaError(f"root element is {root.tag}, not {_ROOT_TAG}")
    # HL7 CDA R2 §4.2.1: id, code, title (optional in R2, required by CI-SIS),
    # effectiveTime and confidentialityCode open the header.
    doc_id = _required(root, "hl7:id")
    id_root = doc_id.get("root")
    if not id_root:
        raise MalformedCdaError("ClinicalDocument/id has no root")
    extension = doc_id.get("extension")
    title_el = _required(root, "hl7:title")
    title = "".join(title_el.itertext()).strip()
    if not title:
        raise MalformedCdaError("ClinicalDocument/title is empty")
    type_code = _code(_required(root, "hl7:code"))
    if type_code is None:
        raise MalformedCdaError("ClinicalDocument/code has no code or codeSystem")
    effective = _required(root, "hl7:effectiveTime").get("value")
    if not effective:
        raise MalformedCdaError("ClinicalDocument/effectiveTime has no value")
    confidentiality_el = root.find("hl7:confidentialityCode", NS)
    media_type, embedded = _non_xml_body(root)
    language_el = root.find("hl7:languageCode", NS)
    return CdaHeader(
        document_id=f"{id_root}^{extension}" if extension else id_root,
        type_code=type_code,
        title=title,
        effective_time=hl7_time_to_utc(effective),
        confidentiality=None
        if confidentiality_el is None
        else _code(confidentiality_el),
        language=None if language_el is None else language_el.get("code"),
        patients=tuple(
            _patient(role)
            for role in root.iterfind("hl7:recordTarget/hl7:patientRole", NS)
        ),
        author=_author(root.find("hl7:author/hl7:assignedAuthor", NS)),
        # ANS CI-SIS "Volet structuration minimale" §practiceSettingCode and
        # §healthcareFacilityTypeCode: where the XDS codes come from.
        practice_setting=_optional_code(
            root,
            "hl7:documentationOf/hl7:serviceEvent/hl7:performer/hl7:assignedEntity"
            "/hl7:representedOrganization/hl7:standardIndustryClassCode",
        ),
        facility_type=_optional_code(
            root,
            "hl7:componentOf/hl7:encompassingEncounter/hl7:location"
            "/hl7:healthCareFacility/hl7:code",
        ),
        non_xml_media_type=media_type,
        non_xml_content=embedded,
    )


def hl7_time_to_utc(value: str) -> str:
    """An HL7 TS (``YYYYMMDD[hhmm[ss]][+ZZZZ]``) as a UTC XDS DTM.

    Without an offset the value is kept as written (XDS DTM allows any
    precision). With one, it is converted to UTC to the second.

    Raises:
        MalformedCdaError: not an HL7 TS.
    """
    stamp, sign, offset = value, "", ""
    for candidate in ("+", "-"):
        if candidate in value:
            stamp, _, offset = value.partition(candidate)
            sign = candidate
    stamp = stamp.split(".")[0]
    if not stamp.isdigit() or len(stamp) not in (4, 6, 8, 10, 12, 14):
        raise MalformedCdaError(f"not an HL7 time stamp: {value!r}")
    if not sign:
        return stamp
    if not offset.isdigit() or len(offset) != 4:
        raise MalformedCdaError(f"not an HL7 time zone offset: {value!r}")
    padded = (stamp + "0101000000"[len(stamp) - 4 :]) if len(stamp) < 14 else stamp
    delta = dt.timedelta(hours=int(offset[:2]), minutes=int(offset[2:]))
    try:
        zone = dt.timezone(delta if sign == "+" else -delta)
        local = dt.datetime(
            int(padded[:4]),
            int(padded[4:6]),
            int(padded[6:8]),
            int(padded[8:10]),
            int(padded[10:12]),
            int(padded[12:14]),
            tzinfo=zone,
        )
    except ValueError as exc:
        raise MalformedCdaError(f"not an HL7 time stamp: {value!r}") from exc
    utc = local.astimezone(dt.UTC)
    return utc.strftime("%Y%m%d%H%M%S")


def _required(parent: Element, path: str) -> Element:
    found = parent.find(path, NS)
    if found is None:
        raise MalformedCdaError(f"ClinicalDocument has no {path.replace('hl7:', '')}")
    return found


def _code(element: Element) -> Code | None:
    code, scheme = element.get("code"), element.get("codeSystem")
    if not code or not scheme:
        return None
    return Code(code, element.get("displayName") or "", scheme)


def _optional_code(parent: Element, path: str) -> Code | None:
    found = parent.find(path, NS)
    return None if found is None else _code(found)


def _text(parent: Element, path: str) -> str | None:
    found = parent.find(path, NS)
    if found is None:
        return None
    text = "".join(found.itertext()).strip()
    return text or None


def _patient(role: Element) -> CdaPatient:
    ins = ins_oid = None
    for identifier in role.iterfind("hl7:id", NS):
        # ANS CI-SIS §recordTarget: the INS is the id whose root is an INS OID.
        if identifier.get("root") in INS_OIDS and identifier.get("extension"):
            ins, ins_oid = identifier.get("extension"), identifier.get("root")
            break
    patient = role.find("hl7:patient", NS)
    if patient is None:
        return CdaPatient(ins, ins_oid, None, (), None, None, None)
    birth_name = None
    for family in patient.iterfind("hl7:name/hl7:family", NS):
        # The birth name carries qualifier BR (HL7 v3 EntityNamePartQualifier).
        if family.get("qualifier") == "BR" or birth_name is None:
            birth_name = "".join(family.itertext()).strip() or birth_name
    first_names = tuple(
        text
        for given in patient.iterfind("hl7:name/hl7:given", NS)
        if given.get("qualifier") != "CL"
        if (text := "".join(given.itertext()).strip())
    )
    gender = patient.find("hl7:administrativeGenderCode", NS)
    birth = patient.find("hl7:birthTime", NS)
    return CdaPatient(
        ins=ins,
        ins_oid=ins_oid,
        birth_name=birth_name,
        first_names=first_names,
        sex=None if gender is None else gender.get("code"),
        birth_date=_date(None if birth is None else birth.get("value")),
        # ANS CI-SIS: the INSEE code of the birth place is in addr/censusTract.
        birth_place=_text(patient, "hl7:birthplace/hl7:place/hl7:addr/hl7:censusTract"),
    )


def _date(value: str | None) -> dt.date | None:
    if value is None or len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def _author(assigned: Element | None) -> CdaAuthor | None:
    if assigned is None:
        return None
    identifier = assigned.find("hl7:id", NS)
    organisation = assigned.find("hl7:representedOrganization", NS)
    org_id = None if organisation is None else organisation.find("hl7:id", NS)
    return CdaAuthor(
        national_id=None if identifier is None else identifier.get("extension"),
        family_name=_text(assigned, "hl7:assignedPerson/hl7:name/hl7:family"),
        given_name=_text(assigned, "hl7:assignedPerson/hl7:name/hl7:given"),
        institution_name=None
        if organisation is None
        else _text(organisation, "hl7:name"),
        institution_id=None if org_id is None else org_id.get("extension"),
    )


def _non_xml_body(root: Element) -> tuple[str | None, bytes | None]:
    text = root.find("hl7:component/hl7:nonXMLBody/hl7:text", NS)
    if text is None:
        return None, None
    # HL7 CDA R2 §4.3.3: ED with representation B64 carries base64 content.
    if text.get("representation") != "B64":
        raise MalformedCdaError("nonXMLBody/text must have representation B64")
    payload = "".join(text.itertext())
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error as exc:
        raise MalformedCdaError(f"nonXMLBody/text is not base64: {exc}") from exc
    return text.get("mediaType"), data
