"""IHE_XDM.ZIP and METADATA.XML against the XDS.b ebRIM structure."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from typing import TYPE_CHECKING

import defusedxml.ElementTree
import pytest

from mssante.message import (
    IntegrityError,
    MalformedXdmError,
    MultiplePatientsError,
    Report,
    build_metadata,
    build_xdm,
    parse_metadata,
    read_xdm,
)
from tests.message import samples

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NS = {"lcm": LCM, "rim": RIM}

# IHE ITI TF-3 §4.2.5, as listed in the project reference.
DE_OBJECT_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SS_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_SCHEMES = {
    "author": "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d",
    "classCode": "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",
    "confidentialityCode": "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",
    "formatCode": "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d",
    "healthcareFacilityTypeCode": "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",
    "practiceSettingCode": "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",
    "typeCode": "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983",
}
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
PATIENT_ID = "280017512345610^^^&1.2.250.1.213.1.4.10&ISO^NH"
AUTHOR_PERSON = "810001234565^MEDECIN^Jeanne^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^^IDNPS"


def _report_two_cdas() -> Report:
    return samples.report(
        documents=(
            samples.discharge_letter(),
            samples.lab_report(),
            samples.rendition(),
        )
    )


def _metadata() -> Element:
    xml = build_metadata(
        _report_two_cdas(),
        now=samples.NOW,
        uid=samples.UID,
        source_id="1.2.250.1.999.1.1",
    )
    root: Element = defusedxml.ElementTree.fromstring(xml)
    return root


def _slot(parent: Element, name: str) -> list[str]:
    for slot in parent.findall("rim:Slot", NS):
        if slot.get("name") == name:
            return [v.text or "" for v in slot.findall("rim:ValueList/rim:Value", NS)]
    raise AssertionError(f"no slot {name}")


def _classified(parent: Element, scheme: str) -> list[Element]:
    return [
        c
        for c in parent.findall("rim:Classification", NS)
        if c.get("classificationScheme") == scheme
    ]


def _external(parent: Element, scheme: str) -> str:
    (found,) = [
        e
        for e in parent.findall("rim:ExternalIdentifier", NS)
        if e.get("identificationScheme") == scheme
    ]
    return found.get("value") or ""


def test_metadata_root_is_submit_objects_request_in_lcm() -> None:
    root = _metadata()
    assert root.tag == f"{{{LCM}}}SubmitObjectsRequest"
    assert root.find("rim:RegistryObjectList", NS) is not None


def test_one_document_entry_per_cda_with_stable_object_type() -> None:
    entries = _metadata().findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
    assert len(entries) == 2
    assert {e.get("objectType") for e in entries} == {DE_OBJECT_TYPE}
    assert {e.get("mimeType") for e in entries} == {"text/xml"}


def test_document_entry_slots_hash_size_and_patient() -> None:
    entry = _metadata().findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)[0]
    content = samples.DISCHARGE_LETTER.read_bytes()
    assert _slot(entry, "hash") == [
        hashlib.sha1(content, usedforsecurity=False).hexdigest()
    ]
    assert _slot(entry, "size") == [str(len(content))]
    assert _slot(entry, "creationTime") == ["20250314091500"]
    assert _slot(entry, "languageCode") == ["fr-FR"]
    assert _slot(entry, "sourcePatientId") == [PATIENT_ID]
    assert _slot(entry, "sourcePatientInfo") == [
        f"PID-3|{PATIENT_ID}",
        "PID-5|DUPONT-ESSAI^MARIE^CLAIRE^^^^L",
        "PID-7|19800115",
        "PID-8|F",
        "PID-11|^^^^^^BDL^^75056",
    ]
    assert _slot(entry, "URI") == ["DOC0001.XML"]
    name = entry.find("rim:Name/rim:LocalizedString", NS)
    assert name is not None
    assert name.get("value") == "Lettre de liaison à la sortie"


def test_document_entry_classifications_use_the_xds_schemes() -> None:
    entry = _metadata().findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)[0]
    for scheme in DE_SCHEMES.values():
        nodes = _classified(entry, scheme)
        assert len(nodes) == 1, scheme
        assert nodes[0].get("classifiedObject") == entry.get("id")
    type_code = _classified(entry, DE_SCHEMES["typeCode"])[0]
    assert type_code.get("nodeRepresentation") == "34133-9"
    assert _slot(type_code, "codingScheme") == ["2.16.840.1.113883.6.1"]
    author = _classified(entry, DE_SCHEMES["author"])[0]
    assert author.get("nodeRepresentation") == ""
    assert _slot(author, "authorPerson") == [AUTHOR_PERSON]
    assert _slot(author, "authorInstitution") == [
        "Clinique Exemple^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1750000001"
    ]
    assert _slot(author, "authorRole") == ["10^Médecin^1.2.250.1.71.1.2.7"]
    assert _slot(author, "authorSpecialty") == [
        "SM54^Médecine générale^1.2.250.1.71.4.2.5"
    ]


def test_document_entry_external_identifiers() -> None:
    entry = _metadata().findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)[0]
    assert _external(entry, DE_PATIENT_ID) == PATIENT_ID
    assert _external(entry, DE_UNIQUE_ID) == "1.2.250.1.999.2.1^LDL-2025-0001"


def test_submission_set_identifiers_and_classification_node() -> None:
    objects = _metadata().find("rim:RegistryObjectList", NS)
    assert objects is not None
    (package,) = objects.findall("rim:RegistryPackage", NS)
    assert _external(package, SS_UNIQUE_ID) == f"2.25.{samples.UID.int}"
    assert _external(package, SS_SOURCE_ID) == "1.2.250.1.999.1.1"
    assert _external(package, SS_PATIENT_ID) == PATIENT_ID
    assert _slot(package, "submissionTime") == ["20250314092653"]
    assert _slot(package, "intendedRecipient") == [f"^^Internet^{samples.COLLEAGUE}"]
    assert len(_classified(package, SS_AUTHOR)) == 1
    assert len(_classified(package, SS_CONTENT_TYPE)) == 1
    nodes = [
        c
        for c in objects.findall("rim:Classification", NS)
        if c.get("classificationNode") == SS_NODE
    ]
    assert [n.get("classifiedObject") for n in nodes] == [package.get("id")]


def test_has_member_association_per_document() -> None:
    objects = _metadata().find("rim:RegistryObjectList", NS)
    assert objects is not None
    ss_id = objects.findall("rim:RegistryPackage", NS)[0].get("id")
    doc_ids = [e.get("id") for e in objects.findall("rim:ExtrinsicObject", NS)]
    associations = objects.findall("rim:Association", NS)
    assert [
        (a.get("associationType"), a.get("sourceObject")) for a in associations
    ] == [(HAS_MEMBER, ss_id)] * 2
    assert [a.get("targetObject") for a in associations] == doc_ids
    assert [_slot(a, "SubmissionSetStatus") for a in associations] == [["Original"]] * 2


def test_every_id_is_unique() -> None:
    ids = [e.get("id") for e in _metadata().iter() if e.get("id")]
    assert len(ids) == len(set(ids))
    assert all(i and i.startswith("urn:uuid:") for i in ids)


def _zip() -> bytes:
    return build_xdm(
        _report_two_cdas(),
        now=samples.NOW,
        uid=samples.UID,
        source_id="1.2.250.1.999.1.1",
        product="mssante-tests/1.0",
    )


def test_zip_layout_follows_ihe_xdm() -> None:
    with zipfile.ZipFile(io.BytesIO(_zip())) as archive:
        assert archive.namelist() == [
            "README.TXT",
            "INDEX.HTM",
            "IHE_XDM/SUBSET01/METADATA.XML",
            "IHE_XDM/SUBSET01/DOC0001.XML",
            "IHE_XDM/SUBSET01/DOC0002.XML",
        ]
        assert (
            archive.read("IHE_XDM/SUBSET01/DOC0002.XML")
            == samples.LAB_REPORT.read_bytes()
        )
        assert b"DOC0001.XML" in archive.read("INDEX.HTM")


def test_zip_is_reproducible() -> None:
    assert _zip() == _zip()


def test_read_xdm_returns_verified_documents() -> None:
    package = read_xdm(_zip())
    assert package.contents == (
        samples.DISCHARGE_LETTER.read_bytes(),
        samples.LAB_REPORT.read_bytes(),
    )
    submission = package.submission
    assert submission.author == samples.AUTHOR
    assert submission.patient_id == PATIENT_ID
    assert submission.recipients == (samples.COLLEAGUE,)
    assert [e.patient for e in submission.entries] == [
        dataclasses.replace(samples.PATIENT, qualified=False)
    ] * 2


def _rezip(data: bytes, replace: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, replace.get(info.filename, src.read(info)))
    return out.getvalue()


def test_tampered_document_raises_integrity_error() -> None:
    original = samples.DISCHARGE_LETTER.read_bytes()
    tampered = original.replace(b"Parac\xc3\xa9tamol 1 g", b"Parac\xc3\xa9tamol 9 g")
    assert tampered != original
    assert len(tampered) == len(original)
    data = _rezip(_zip(), {"IHE_XDM/SUBSET01/DOC0001.XML": tampered})
    with pytest.raises(IntegrityError, match="SHA-1"):
        read_xdm(data)


def test_truncated_document_raises_integrity_error_on_size() -> None:
    data = _rezip(_zip(), {"IHE_XDM/SUBSET01/DOC0002.XML": b"<x/>"})
    with pytest.raises(IntegrityError, match="size"):
        read_xdm(data)


def test_missing_metadata_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("README.TXT", b"x")
    with pytest.raises(MalformedXdmError, match=r"METADATA\.XML"):
        read_xdm(out.getvalue())


def test_not_a_zip_is_refused() -> None:
    with pytest.raises(MalformedXdmError, match="not a ZIP"):
        read_xdm(b"PK\x03\x04 but not really")


def test_archive_inflating_beyond_limit_is_refused() -> None:
    with pytest.raises(MalformedXdmError, match="inflates"):
        read_xdm(_zip(), max_size=1000)


def test_uri_leaving_the_subset_is_refused() -> None:
    data = _zip()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        metadata = archive.read("IHE_XDM/SUBSET01/METADATA.XML")
    forged = metadata.replace(b"<rim:Value>DOC0001.XML", b"<rim:Value>../README.TXT")
    with pytest.raises(MalformedXdmError, match="leaves the subset"):
        read_xdm(_rezip(data, {"IHE_XDM/SUBSET01/METADATA.XML": forged}))


def test_entries_naming_two_patients_raise_multiple_patients() -> None:
    metadata = build_metadata(
        _report_two_cdas(), now=samples.NOW, uid=samples.UID, source_id="1.2.3"
    )
    other = b"155069912300108^^^&amp;1.2.250.1.213.1.4.10&amp;ISO^NH"
    # sourcePatientId, PID-3 and the patientId identifier of the first entry.
    first = metadata.replace(PATIENT_ID.replace("&", "&amp;").encode(), other, 3)
    with pytest.raises(MultiplePatientsError, match="different patients"):
        parse_metadata(first)


def test_metadata_parse_round_trip_keeps_codes() -> None:
    report = _report_two_cdas()
    submission = parse_metadata(
        build_metadata(report, now=samples.NOW, uid=samples.UID, source_id="1.2.3")
    )
    assert [e.xds for e in submission.entries] == [d.xds for d in report.cda_documents]
    assert [e.unique_id for e in submission.entries] == [
        "1.2.250.1.999.2.1^LDL-2025-0001",
        "1.2.250.1.999.2.2^CRBIO-2025-0042",
    ]
