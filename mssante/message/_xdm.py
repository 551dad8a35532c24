"""IHE XDM packing: ``IHE_XDM.ZIP`` and its ``METADATA.XML`` (XDS.b ebRIM).

Owns the archive layout and the ebRIM vocabulary:

- :func:`build_xdm` packs the CDA documents of a :class:`Report` as
  ``README.TXT``, ``INDEX.HTM``, ``IHE_XDM/SUBSET01/METADATA.XML`` and
  ``IHE_XDM/SUBSET01/DOCnnnn.XML`` (IHE ITI TF-1 §16, ITI TF-3 §4.2.4);
- :func:`build_metadata` writes the ``lcm:SubmitObjectsRequest``: one
  submission set (``rim:RegistryPackage``), one document entry
  (``rim:ExtrinsicObject``) per CDA, one ``HasMember`` association each;
- :func:`read_xdm` and :func:`parse_metadata` read them back, and every
  document's SHA-1 and size is checked against METADATA.XML.

What must stay true: the same inputs give the same bytes (ids derive from
the ``uid`` passed in, time stamps from ``now``); entry UUIDs are unique in a
submission; every scheme UUID is one of the constants below, from IHE ITI
TF-3 §4.2.5; the archive is read with a size limit and without trusting its
paths.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import io
import uuid
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element, ParseError, SubElement

import defusedxml
import defusedxml.ElementTree

from mssante.message._codes import (
    OID_NATIONAL_PRACTITIONER_ID,
    OID_NATIONAL_STRUCTURE_ID,
    OID_UUID_ARC,
    Code,
    Masking,
)
from mssante.message._errors import (
    IntegrityError,
    InvalidFieldError,
    MalformedXdmError,
    MultiplePatientsError,
)
from mssante.message._model import (
    Author,
    Document,
    Institution,
    Patient,
    Report,
    Sex,
    XdsCodes,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

NS_LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
NS_RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NS_RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
NS = {"lcm": NS_LCM, "rim": NS_RIM, "rs": NS_RS}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

# IHE ITI TF-3 §4.2.5.1 (DocumentEntry) and §4.2.5.3 (SubmissionSet).
DOCUMENT_ENTRY_OBJECT_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY_CODE = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_EVENT_CODE_LIST = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY_TYPE_CODE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING_CODE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE_CODE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
ASSOCIATION_HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
CLASSIFICATION_OBJECT_TYPE = (
    "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
)

XDM_ZIP_NAME = "IHE_XDM.ZIP"
SUBSET_DIR = "IHE_XDM/SUBSET01/"
METADATA_PATH = SUBSET_DIR + "METADATA.XML"
# A received archive is refused beyond this many bytes once inflated: the
# relay's default message limit (25 MB) times a generous deflate ratio.
DEFAULT_MAX_XDM_SIZE = 256 * 1024 * 1024
DEFAULT_LANGUAGE = "fr-FR"


@dataclass(frozen=True, slots=True)
class XdmEntry:
    """One document entry of METADATA.XML, as read back."""

    entry_uuid: str
    unique_id: str
    uri: str
    mime_type: str
    sha1: str
    size: int
    creation_time: str
    language: str
    title: str
    patient: Patient
    author: Author
    xds: XdsCodes


@dataclass(frozen=True, slots=True)
class XdmSubmission:
    """The submission set of METADATA.XML and its document entries."""

    submission_uuid: str
    unique_id: str
    source_id: str
    submission_time: str
    author: Author
    patient_id: str
    recipients: tuple[str, ...]
    entries: tuple[XdmEntry, ...]


@dataclass(frozen=True, slots=True)
class XdmPackage:
    """An IHE_XDM.ZIP read back: its metadata and each entry's verified bytes."""

    submission: XdmSubmission
    contents: tuple[bytes, ...]  # in the order of ``submission.entries``


def xds_time(moment: dt.datetime) -> str:
    """A time as an XDS DTM in UTC (``YYYYMMDDhhmmss``); ``moment`` must be aware."""
    if moment.tzinfo is None:
        raise InvalidFieldError("now", "needs a time zone")
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S")


def uuid_oid(value: uuid.UUID) -> str:
    """A UUID as an OID (ITU-T X.667 §6.3: ``2.25.<integer>``)."""
    return f"{OID_UUID_ARC}.{value.int}"


def patient_id(patient: Patient) -> str:
    """The XDS patient id (HL7 CX): ``<INS>^^^&<OID>&ISO^NH``."""
    return f"{patient.ins}^^^&{patient.ins_oid}&ISO^NH"


def author_person(author: Author) -> str:
    """The XDS authorPerson (HL7 XCN) of an author, ANS form with IDNPS."""
    return (
        f"{author.national_id}^{author.family_name}^{author.given_name}^^^^^^"
        f"&{OID_NATIONAL_PRACTITIONER_ID}&ISO^D^^^^IDNPS"
    )


def author_institution(institution: Institution) -> str:
    """The XDS authorInstitution (HL7 XON) with the idNatStruct, type IDNST."""
    return (
        f"{institution.name}^^^^^&{OID_NATIONAL_STRUCTURE_ID}&ISO"
        f"^IDNST^^^{institution.structure_id}"
    )


def source_patient_info(patient: Patient) -> list[str]:
    """The sourcePatientInfo values (HL7 PID fields) carrying the INS traits."""
    first, *others = patient.first_names
    values = [
        f"PID-3|{patient_id(patient)}",
        # HL7 v2 XPN: family^given^further given names^^^^type (L: legal name).
        f"PID-5|{patient.birth_name}^{first}^{' '.join(others)}^^^^L",
        f"PID-7|{patient.birth_date.strftime('%Y%m%d')}",
        f"PID-8|{patient.sex.value}",
    ]
    if patient.birth_place is not None:
        # HL7 v2 XAD: address type BDL (birth delivery location), component 9
        # (county/parish code) holds the INSEE code of the birth place.
        values.append(f"PID-11|^^^^^^BDL^^{patient.birth_place}")
    return values


def build_metadata(
    report: Report, *, now: dt.datetime, uid: uuid.UUID, source_id: str
) -> bytes:
    """METADATA.XML for the CDA documents of ``report``.

    Args:
        report: a report with at least one CDA document (validated by Report).
        now: the submission time (aware).
        uid: the seed of every id: entry UUIDs are UUID5 names under it, the
            submission set uniqueId is ``2.25.<uid>``.
        source_id: the OID of the sending software (XDS sourceId).

    Returns:
        The UTF-8 XML bytes of an ``lcm:SubmitObjectsRequest``.

    Raises:
        InvalidFieldError: no CDA document, or ``now`` is naive.
    """
    cdas = report.cda_documents
    if not cdas or report.patient is None or report.author is None:
        raise InvalidFieldError("report.documents", "METADATA.XML needs a CDA report")
    patient, author = report.patient, report.author
    root = Element(f"{{{NS_LCM}}}SubmitObjectsRequest")
    objects = SubElement(root, _rim("RegistryObjectList"))
    ids = _Ids(uid)
    ss_id = ids.next("submission-set")
    for index, doc in enumerate(cdas, start=1):
        doc_id = ids.next(f"document-{index}")
        _document_entry(objects, doc, index, doc_id, patient, author, ids)
    package = SubElement(objects, _rim("RegistryPackage"), id=ss_id)
    _slot(package, "submissionTime", [xds_time(now)])
    # IHE ITI TF-3 §4.2.3.3.9 (XDM): intendedRecipient as XTN with an address.
    _slot(
        package, "intendedRecipient", [f"^^Internet^{a}" for a in report.to + report.cc]
    )
    _author_classification(package, SS_AUTHOR, ss_id, author, ids)
    # The submission's content type is the type of its first document.
    first = cdas[0].xds
    if first is not None:  # always, for a CDA document
        _code_classification(package, SS_CONTENT_TYPE_CODE, ss_id, first.type_code, ids)
    _identifier(
        package, SS_UNIQUE_ID, ss_id, uuid_oid(uid), "uniqueId", ids, "SubmissionSet"
    )
    _identifier(
        package, SS_SOURCE_ID, ss_id, source_id, "sourceId", ids, "SubmissionSet"
    )
    _identifier(
        package,
        SS_PATIENT_ID,
        ss_id,
        patient_id(patient),
        "patientId",
        ids,
        "SubmissionSet",
    )
    SubElement(
        objects,
        _rim("Classification"),
        id=ids.next("submission-set-node"),
        classifiedObject=ss_id,
        classificationNode=SUBMISSION_SET_NODE,
        objectType=CLASSIFICATION_OBJECT_TYPE,
    )
    for index in range(1, len(cdas) + 1):
        association = SubElement(
            objects,
            _rim("Association"),
            id=ids.next(f"association-{index}"),
            associationType=ASSOCIATION_HAS_MEMBER,
            sourceObject=ss_id,
            targetObject=ids.get(f"document-{index}"),
        )
        # IHE ITI TF-3 §4.2.2.2.1: SubmissionSetStatus Original for a new member.
        _slot(association, "SubmissionSetStatus", ["Original"])
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


def document_file_name(index: int) -> str:
    """The name of the ``index``-th (from 1) CDA in the subset directory."""
    return f"DOC{index:04d}.XML"


def build_xdm(
    report: Report,
    *,
    now: dt.datetime,
    uid: uuid.UUID,
    source_id: str,
    product: str,
) -> bytes:
    """IHE_XDM.ZIP for the CDA documents of ``report``.

    Args: as :func:`build_metadata`, plus ``product`` named in README.TXT.

    Returns:
        The ZIP bytes; entries are dated ``now`` so the bytes are reproducible.
    """
    metadata = build_metadata(report, now=now, uid=uid, source_id=source_id)
    cdas = report.cda_documents
    stamp = now.astimezone(dt.UTC).timetuple()[:6]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)

        # IHE ITI TF-1 §16.1.1 / TF-3 §4.2.4: README.TXT and INDEX.HTM at the root.
        add("README.TXT", _readme(product, now).encode("utf-8"))
        add("INDEX.HTM", _index(cdas).encode("utf-8"))
        add(METADATA_PATH, metadata)
        for index, doc in enumerate(cdas, start=1):
            add(SUBSET_DIR + document_file_name(index), doc.content)
    return buffer.getvalue()


def read_xdm(data: bytes, *, max_size: int = DEFAULT_MAX_XDM_SIZE) -> XdmPackage:
    """Read an IHE_XDM.ZIP, checking every document against METADATA.XML.

    Raises:
        MalformedXdmError: not a ZIP, no METADATA.XML, a missing document, an
            archive inflating beyond ``max_size``, or METADATA.XML unusable.
        IntegrityError: a document's SHA-1 or size differs from METADATA.XML.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise MalformedXdmError(f"{XDM_ZIP_NAME} is not a ZIP archive: {exc}") from exc
    with archive:
        infos = {info.filename.upper(): info for info in archive.infolist()}
        if sum(info.file_size for info in infos.values()) > max_size:
            raise MalformedXdmError(f"{XDM_ZIP_NAME} inflates beyond {max_size} bytes")

        def member(name: str) -> bytes:
            info = infos.get(name.upper())
            if info is None:
                raise MalformedXdmError(f"{XDM_ZIP_NAME} has no {name}")
            try:
                return archive.read(info)
            except (zipfile.BadZipFile, OSError) as exc:  # CRC error, bad header
                raise MalformedXdmError(f"{name}: {exc}") from exc

        submission = parse_metadata(member(METADATA_PATH))
        contents = []
        for entry in submission.entries:
            if "/" in entry.uri or "\\" in entry.uri or entry.uri in ("", ".", ".."):
                raise MalformedXdmError(f"document URI {entry.uri!r} leaves the subset")
            content = member(SUBSET_DIR + entry.uri)
            # IHE ITI TF-3 §4.2.3.2.18/§4.2.3.2.19: hash is SHA-1 hex, size in bytes.
            if len(content) != entry.size:
                raise IntegrityError(
                    f"{entry.uri}: size {len(content)} differs from METADATA.XML {entry.size}"
                )
            digest = hashlib.sha1(content, usedforsecurity=False).hexdigest()
            if digest != entry.sha1.lower():
                raise IntegrityError(f"{entry.uri}: SHA-1 differs from METADATA.XML")
            contents.append(content)
    return XdmPackage(submission, tuple(contents))


def parse_metadata(data: bytes) -> XdmSubmission:
    """Read a METADATA.XML ``SubmitObjectsRequest`` into typed objects.

    Raises:
        MalformedXdmError: not well-formed, not a SubmitObjectsRequest, a
            required slot, classification or identifier missing or malformed.
        MultiplePatientsError: entries with different patient ids.
    """
    try:
        root = defusedxml.ElementTree.fromstring(data)
    except ParseError as exc:
        raise MalformedXdmError(f"METADATA.XML is not well-formed: {exc}") from exc
    except defusedxml.DefusedXmlException as exc:
        raise MalformedXdmError(
            f"METADATA.XML uses a forbidden construct: {exc}"
        ) from exc
    if root.tag != f"{{{NS_LCM}}}SubmitObjectsRequest":
        raise MalformedXdmError(f"METADATA.XML root is {root.tag}")
    objects = root.find("rim:RegistryObjectList", NS)
    if objects is None:
        raise MalformedXdmError("METADATA.XML has no RegistryObjectList")
    packages = objects.findall("rim:RegistryPackage", NS)
    if len(packages) != 1:
        raise MalformedXdmError("METADATA.XML must hold exactly one submission set")
    package = packages[0]
    ss_id = _attr(package, "id")
    try:
        entries = tuple(
            _read_entry(eo)
            for eo in objects.findall("rim:ExtrinsicObject", NS)
            if eo.get("objectType") == DOCUMENT_ENTRY_OBJECT_TYPE
        )
        author = _read_author(_classification(package, SS_AUTHOR))
    except InvalidFieldError as exc:
        raise MalformedXdmError(f"METADATA.XML: {exc}") from exc
    if not entries:
        raise MalformedXdmError("METADATA.XML has no document entry")
    members = {
        a.get("targetObject")
        for a in objects.findall("rim:Association", NS)
        if a.get("associationType") == ASSOCIATION_HAS_MEMBER
        and a.get("sourceObject") == ss_id
    }
    for entry in entries:
        if entry.entry_uuid not in members:
            raise MalformedXdmError(
                f"{entry.entry_uuid} is not a member of the submission"
            )
    ss_patient = _identifier_value(package, SS_PATIENT_ID)
    if any(patient_id(e.patient) != ss_patient for e in entries):
        raise MultiplePatientsError(
            "metadata.patientId", "entries name different patients"
        )
    return XdmSubmission(
        submission_uuid=ss_id,
        unique_id=_identifier_value(package, SS_UNIQUE_ID),
        source_id=_identifier_value(package, SS_SOURCE_ID),
        submission_time=_slot_value(package, "submissionTime"),
        author=author,
        patient_id=ss_patient,
        recipients=tuple(
            v.split("^")[3] if v.count("^") >= 3 else v
            for v in _slot_values(package, "intendedRecipient")
        ),
        entries=entries,
    )


def document_from_entry(entry: XdmEntry, content: bytes) -> Document:
    """Rebuild the :class:`Document` of an entry; its CDA must agree with METADATA.XML.

    Raises:
        MalformedCdaError, NotAPdfError: the document itself is bad.
        MalformedXdmError: the CDA header contradicts METADATA.XML.
    """
    masking = tuple(m for m in _masking_of(entry.xds.confidentiality))
    doc = Document.cda(
        content,
        class_code=entry.xds.class_code,
        format_code=entry.xds.format_code,
        practice_setting=entry.xds.practice_setting,
        facility_type=entry.xds.facility_type,
        masking=masking,
    )
    if doc.xds != entry.xds:
        raise MalformedXdmError(
            f"{entry.uri}: CDA header contradicts METADATA.XML codes"
        )
    if doc.title != entry.title:
        raise MalformedXdmError(f"{entry.uri}: CDA title differs from METADATA.XML")
    return doc


# --- building -------------------------------------------------------------


class _Ids:
    """Entry UUIDs derived from one seed: stable names, unique values."""

    def __init__(self, seed: uuid.UUID) -> None:
        self._seed = seed
        self._given: dict[str, str] = {}

    def next(self, name: str) -> str:
        value = f"urn:uuid:{uuid.uuid5(self._seed, name)}"
        self._given[name] = value
        return value

    def get(self, name: str) -> str:
        return self._given[name]


def _rim(name: str) -> str:
    return f"{{{NS_RIM}}}{name}"


def _slot(parent: Element, name: str, values: Iterable[str]) -> None:
    slot = SubElement(parent, _rim("Slot"), name=name)
    value_list = SubElement(slot, _rim("ValueList"))
    for value in values:
        SubElement(value_list, _rim("Value")).text = value


def _name(parent: Element, text: str) -> None:
    name = SubElement(parent, _rim("Name"))
    SubElement(name, _rim("LocalizedString"), value=text)


def _code_classification(
    parent: Element, scheme: str, classified: str, code: Code, ids: _Ids
) -> None:
    # IHE ITI TF-3 §4.2.3.1.2: a coded attribute is a Classification whose
    # nodeRepresentation is the code, with a codingScheme slot and a Name.
    node = SubElement(
        parent,
        _rim("Classification"),
        id=ids.next(f"{classified}/{scheme}/{code.scheme}/{code.code}"),
        classificationScheme=scheme,
        classifiedObject=classified,
        nodeRepresentation=code.code,
        objectType=CLASSIFICATION_OBJECT_TYPE,
    )
    _slot(node, "codingScheme", [code.scheme])
    _name(node, code.display)


def _author_classification(
    parent: Element, scheme: str, classified: str, author: Author, ids: _Ids
) -> None:
    node = SubElement(
        parent,
        _rim("Classification"),
        id=ids.next(f"{classified}/{scheme}"),
        classificationScheme=scheme,
        classifiedObject=classified,
        nodeRepresentation="",
        objectType=CLASSIFICATION_OBJECT_TYPE,
    )
    _slot(node, "authorPerson", [author_person(author)])
    if author.institution is not None:
        _slot(node, "authorInstitution", [author_institution(author.institution)])
    if author.role is not None:
        _slot(node, "authorRole", [author.role.hl7()])
    if author.specialty is not None:
        _slot(node, "authorSpecialty", [author.specialty.hl7()])


def _identifier(
    parent: Element,
    scheme: str,
    registry_object: str,
    value: str,
    name: str,
    ids: _Ids,
    owner: str,
) -> None:
    node = SubElement(
        parent,
        _rim("ExternalIdentifier"),
        id=ids.next(f"{registry_object}/{scheme}"),
        identificationScheme=scheme,
        registryObject=registry_object,
        value=value,
    )
    _name(node, f"XDS{owner}.{name}")


def _document_entry(
    objects: Element,
    doc: Document,
    index: int,
    doc_id: str,
    patient: Patient,
    author: Author,
    ids: _Ids,
) -> None:
    header, xds = doc.header, doc.xds
    if header is None or xds is None:  # Document guarantees both for a CDA
        raise InvalidFieldError("document", "CDA document without header")
    entry = SubElement(
        objects,
        _rim("ExtrinsicObject"),
        id=doc_id,
        mimeType=doc.mime_type,
        objectType=DOCUMENT_ENTRY_OBJECT_TYPE,
    )
    # IHE ITI TF-3 §4.2.3.2: the document entry slots.
    _slot(entry, "creationTime", [header.effective_time])
    _slot(entry, "hash", [hashlib.sha1(doc.content, usedforsecurity=False).hexdigest()])
    _slot(entry, "languageCode", [header.language or DEFAULT_LANGUAGE])
    _slot(entry, "size", [str(len(doc.content))])
    _slot(entry, "sourcePatientId", [patient_id(patient)])
    _slot(entry, "sourcePatientInfo", source_patient_info(patient))
    # IHE ITI TF-3 §4.2.3.2.24 (XDM): URI names the file in the subset directory.
    _slot(entry, "URI", [document_file_name(index)])
    _name(entry, header.title)
    _author_classification(entry, DE_AUTHOR, doc_id, author, ids)
    _code_classification(entry, DE_CLASS_CODE, doc_id, xds.class_code, ids)
    for code in xds.confidentiality:
        _code_classification(entry, DE_CONFIDENTIALITY_CODE, doc_id, code, ids)
    _code_classification(entry, DE_FORMAT_CODE, doc_id, xds.format_code, ids)
    _code_classification(entry, DE_FACILITY_TYPE_CODE, doc_id, xds.facility_type, ids)
    _code_classification(
        entry, DE_PRACTICE_SETTING_CODE, doc_id, xds.practice_setting, ids
    )
    _code_classification(entry, DE_TYPE_CODE, doc_id, xds.type_code, ids)
    _identifier(
        entry,
        DE_PATIENT_ID,
        doc_id,
        patient_id(patient),
        "patientId",
        ids,
        "DocumentEntry",
    )
    _identifier(
        entry,
        DE_UNIQUE_ID,
        doc_id,
        header.document_id,
        "uniqueId",
        ids,
        "DocumentEntry",
    )


def _readme(product: str, now: dt.datetime) -> str:
    return (
        "IHE XDM media (IHE ITI TF-1 §16)\r\n"
        f"Created by: {product}\r\n"
        f"Created on: {now.astimezone(dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}\r\n"
        "Content: IHE_XDM/SUBSET01/METADATA.XML and the documents it lists.\r\n"
    )


def _index(cdas: tuple[Document, ...]) -> str:
    items = "".join(
        f'<li><a href="{SUBSET_DIR}{document_file_name(i)}">'
        f"{html.escape(doc.title)}</a></li>\r\n"
        for i, doc in enumerate(cdas, start=1)
    )
    return (
        '<!DOCTYPE html>\r\n<html lang="fr"><head><meta charset="utf-8">'
        "<title>IHE XDM</title></head>\r\n<body><ul>\r\n"
        f"{items}</ul></body></html>\r\n"
    )


# --- reading --------------------------------------------------------------


def _attr(element: Element, name: str) -> str:
    value = element.get(name)
    if not value:
        raise MalformedXdmError(f"{element.tag} has no {name}")
    return value


def _slot_values(parent: Element, name: str) -> list[str]:
    for slot in parent.findall("rim:Slot", NS):
        if slot.get("name") == name:
            return [v.text or "" for v in slot.findall("rim:ValueList/rim:Value", NS)]
    return []


def _slot_value(parent: Element, name: str) -> str:
    values = _slot_values(parent, name)
    if len(values) != 1 or not values[0]:
        raise MalformedXdmError(f"slot {name} must hold one value")
    return values[0]


def _classifications(parent: Element, scheme: str) -> list[Element]:
    return [
        c
        for c in parent.findall("rim:Classification", NS)
        if c.get("classificationScheme") == scheme
    ]


def _classification(parent: Element, scheme: str) -> Element:
    found = _classifications(parent, scheme)
    if len(found) != 1:
        raise MalformedXdmError(
            f"expected one classification {scheme}, got {len(found)}"
        )
    return found[0]


def _read_code(node: Element) -> Code:
    name = node.find("rim:Name/rim:LocalizedString", NS)
    return Code(
        node.get("nodeRepresentation") or "",
        "" if name is None else name.get("value") or "",
        _slot_value(node, "codingScheme"),
    )


def _identifier_value(parent: Element, scheme: str) -> str:
    for node in parent.findall("rim:ExternalIdentifier", NS):
        if node.get("identificationScheme") == scheme:
            return _attr(node, "value")
    raise MalformedXdmError(f"no external identifier {scheme}")


def _read_author(node: Element) -> Author:
    person = _slot_value(node, "authorPerson").split("^")
    if len(person) < 3:
        raise MalformedXdmError("authorPerson is not an HL7 XCN")
    institution = None
    institutions = _slot_values(node, "authorInstitution")
    if institutions:
        parts = institutions[0].split("^")
        if len(parts) < 10:
            raise MalformedXdmError("authorInstitution is not an HL7 XON with an id")
        institution = Institution(parts[0], parts[9])
    return Author(
        national_id=person[0],
        family_name=person[1],
        given_name=person[2],
        role=_optional_ce(node, "authorRole"),
        specialty=_optional_ce(node, "authorSpecialty"),
        institution=institution,
    )


def _optional_ce(node: Element, slot: str) -> Code | None:
    values = _slot_values(node, slot)
    if not values:
        return None
    parts = values[0].split("^")
    if len(parts) != 3:
        raise MalformedXdmError(f"{slot} is not code^display^scheme")
    return Code(*parts)


def _read_patient(entry: Element) -> Patient:
    fields: dict[str, str] = {}
    for value in _slot_values(entry, "sourcePatientInfo"):
        key, _, rest = value.partition("|")
        fields[key] = rest
    pid = _slot_value(entry, "sourcePatientId")
    ins, _, authority = pid.partition("^^^&")
    oid = authority.split("&")[0]
    names = fields.get("PID-5", "").split("^")
    birth = fields.get("PID-7", "")
    if len(names) < 3 or len(birth) < 8 or not birth[:8].isdigit():
        raise MalformedXdmError("sourcePatientInfo lacks PID-5 or PID-7")
    place = fields.get("PID-11", "").split("^")
    try:
        sex = Sex(fields.get("PID-8", ""))
        birth_date = dt.date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
    except ValueError as exc:
        raise MalformedXdmError(f"sourcePatientInfo: {exc}") from exc
    return Patient(
        ins=ins,
        ins_oid=oid,
        birth_name=names[0],
        first_names=(names[1], *names[2].split()),
        sex=sex,
        birth_date=birth_date,
        birth_place=place[8] if len(place) > 8 and place[8] else None,
    )


def _read_entry(entry: Element) -> XdmEntry:
    doc_id = _attr(entry, "id")
    name = entry.find("rim:Name/rim:LocalizedString", NS)
    size = _slot_value(entry, "size")
    if not size.isdigit():
        raise MalformedXdmError(f"{doc_id}: size is not a number")
    patient = _read_patient(entry)
    if _identifier_value(entry, DE_PATIENT_ID) != patient_id(patient):
        raise MultiplePatientsError(
            "metadata.patientId", "patientId differs from sourcePatientInfo"
        )
    return XdmEntry(
        entry_uuid=doc_id,
        unique_id=_identifier_value(entry, DE_UNIQUE_ID),
        uri=_slot_value(entry, "URI"),
        mime_type=_attr(entry, "mimeType"),
        sha1=_slot_value(entry, "hash"),
        size=int(size),
        creation_time=_slot_value(entry, "creationTime"),
        language=_slot_value(entry, "languageCode"),
        title="" if name is None else name.get("value") or "",
        patient=patient,
        author=_read_author(_classification(entry, DE_AUTHOR)),
        xds=XdsCodes(
            class_code=_read_code(_classification(entry, DE_CLASS_CODE)),
            type_code=_read_code(_classification(entry, DE_TYPE_CODE)),
            format_code=_read_code(_classification(entry, DE_FORMAT_CODE)),
            practice_setting=_read_code(
                _classification(entry, DE_PRACTICE_SETTING_CODE)
            ),
            facility_type=_read_code(_classification(entry, DE_FACILITY_TYPE_CODE)),
            confidentiality=tuple(
                _read_code(c) for c in _classifications(entry, DE_CONFIDENTIALITY_CODE)
            ),
        ),
    )


def _masking_of(codes: tuple[Code, ...]) -> list[Masking]:
    return [Masking(c.code) for c in codes if c.code in {m.value for m in Masking}]
