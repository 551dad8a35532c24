"""Valid sample entries and identifiers for directory tests."""

from __future__ import annotations

from datetime import UTC, date, datetime

from directory import identifiers as ids
from directory.model import (
    Activity,
    BalType,
    CareKind,
    CareRelationship,
    Certificate,
    CertificateUsage,
    Delegation,
    DelegationScope,
    Mailbox,
    Operator,
    OperatorCertificate,
    Organisation,
    OwnerKind,
    Patient,
    Practitioner,
    ProxyGrant,
    ProxyScope,
    Sex,
)

T0 = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)


def luhn_complete(stem: str) -> str:
    """Append the Luhn key digit to a string of digits."""
    for d in "0123456789":
        if ids.luhn_valid(stem + d):
            return stem + d
    raise AssertionError(stem)  # pragma: no cover


def ins_of(nir: str) -> str:
    return f"{nir}{ids.ins_key(nir):02d}"


RPPS_1 = "10285900311"
RPPS_2 = "10878017598"
FINESS_1 = "755623014"
FINESS_CORSICA = "2A6131864"
INS_1 = ins_of("1800175123456")
INS_2 = ins_of("2850299012345")


def practitioner(rpps: str = RPPS_1, **kw: object) -> Practitioner:
    fields: dict[str, object] = {
        "national_id": "8" + rpps,
        "last_name": "MOREAU",
        "first_name": "Zoé",
        "civility": "DR",
        "profession_code": "10",
        "profession": "Médecin",
        "activities": (
            Activity(
                structure_id="1" + FINESS_1, structure_name="CH PARIS 1", mode="S"
            ),
        ),
    }
    fields.update(kw)
    return Practitioner(**fields)  # type: ignore[arg-type]


def organisation(finess: str = FINESS_1, **kw: object) -> Organisation:
    fields: dict[str, object] = {
        "structure_id": "1" + finess,
        "name": "CENTRE HOSPITALIER PARIS 1",
    }
    fields.update(kw)
    return Organisation(**fields)  # type: ignore[arg-type]


def mailbox(address: str = "zoe.moreau@medecin.mssante.fr", **kw: object) -> Mailbox:
    fields: dict[str, object] = {
        "address": address,
        "bal_type": BalType.PER,
        "owner_kind": OwnerKind.PRACTITIONER,
        "owner_id": "8" + RPPS_1,
        "display_name": "DR MOREAU Zoé",
        "structure_id": "1" + FINESS_1,
        "profession": "Médecin",
    }
    fields.update(kw)
    return Mailbox(**fields)  # type: ignore[arg-type]


def org_mailbox(
    address: str = "urgences@ch-paris-1.mssante.fr", **kw: object
) -> Mailbox:
    fields: dict[str, object] = {
        "address": address,
        "bal_type": BalType.ORG,
        "owner_kind": OwnerKind.ORGANISATION,
        "owner_id": "1" + FINESS_1,
        "display_name": "Urgences CH PARIS 1",
        "service": "Urgences",
    }
    fields.update(kw)
    return Mailbox(**fields)  # type: ignore[arg-type]


def certificate(der: bytes = b"\x30\x03\x02\x01\x01", **kw: object) -> Certificate:
    fields: dict[str, object] = {
        "usage": CertificateUsage.SIGNATURE,
        "der": der,
        "subject": "CN=zoe.moreau",
        "not_after": datetime(2027, 1, 1, tzinfo=UTC),
        "email": "zoe.moreau@medecin.mssante.fr",
    }
    fields.update(kw)
    return Certificate(**fields)  # type: ignore[arg-type]


def patient(ins: str = INS_1, *, qualified: bool = True, **kw: object) -> Patient:
    fields: dict[str, object] = {
        "ins": ins,
        "ins_oid": ids.INS_NIR_TEST_OID,
        "birth_name": "DUPONT",
        "first_names": "Marie Anne",
        "sex": Sex.F,
        "birth_date": date(1980, 1, 17),
        "birth_place": "75056",
        "qualified": qualified,
        "address": f"{ins}@patient.mssante.example" if qualified else None,
        "blocked_senders": ("spam@medecin.mssante.fr",),
        "care_relationships": (
            CareRelationship(
                party="zoe.moreau@medecin.mssante.fr",
                kind=CareKind.WROTE_FIRST,
                since=T0,
            ),
        ),
        "proxies": (
            ProxyGrant(account="aidant-1", scope=ProxyScope.READ, granted_at=T0),
        ),
    }
    fields.update(kw)
    return Patient(**fields)  # type: ignore[arg-type]


def operator(domain: str = "hopital-b.example", **kw: object) -> Operator:
    fields: dict[str, object] = {
        "domain": domain,
        "certificates": (
            OperatorCertificate(subject_dn="CN=mx.hopital-b.example,O=Hopital B,C=FR"),
            OperatorCertificate(subject_dn="CN=mx2.hopital-b.example,O=Hopital B,C=FR"),
        ),
        "description": "Opérateur B",
        "contacts": ("admin@hopital-b.example",),
        "updated": date(2026, 11, 20),
    }
    fields.update(kw)
    return Operator(**fields)  # type: ignore[arg-type]


def delegation(account: str = "secretaire-1", **kw: object) -> Delegation:
    fields: dict[str, object] = {
        "account": account,
        "mailbox": "zoe.moreau@medecin.mssante.fr",
        "scope": DelegationScope.READ_SEND,
        "granted_by": "8" + RPPS_1,
        "expires": datetime(2027, 6, 30, tzinfo=UTC),
    }
    fields.update(kw)
    return Delegation(**fields)  # type: ignore[arg-type]
