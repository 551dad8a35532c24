"""Model invariants and the JSON record codec."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from directory.errors import InvalidFieldError
from directory.model import (
    BalType,
    Entry,
    Kind,
    OwnerKind,
    canonical_key,
    content_digest,
    from_record,
    key_of,
    to_record,
)
from tests.directory import samples
from tests.directory.test_contract import all_samples


@pytest.mark.parametrize("entry", all_samples(), ids=lambda e: type(e).__name__)
def test_record_round_trip(entry: Entry) -> None:
    assert from_record(to_record(entry)) == entry


def test_digest_ignores_status_and_source_only() -> None:
    m = samples.mailbox()
    assert content_digest(m) == content_digest(dataclasses.replace(m, source="mssante"))
    assert content_digest(m) != content_digest(dataclasses.replace(m, display_name="x"))


def test_per_mailbox_must_belong_to_a_practitioner() -> None:
    with pytest.raises(InvalidFieldError, match="owner_kind"):
        samples.mailbox(
            owner_kind=OwnerKind.ORGANISATION, owner_id="1" + samples.FINESS_1
        )


def test_org_mailbox_must_belong_to_an_organisation() -> None:
    with pytest.raises(InvalidFieldError, match="owner_kind"):
        samples.org_mailbox(
            owner_kind=OwnerKind.PRACTITIONER, owner_id="8" + samples.RPPS_1
        )


def test_mailbox_with_unknown_bal_type_refused() -> None:
    with pytest.raises(ValueError, match="XYZ"):
        samples.mailbox(bal_type="XYZ")


def test_only_a_qualified_ins_gets_a_mailbox() -> None:
    with pytest.raises(InvalidFieldError, match="qualified"):
        samples.patient(
            qualified=False, address=f"{samples.INS_1}@patient.mssante.example"
        )


def test_patient_address_is_matricule_at_patient_domain() -> None:
    with pytest.raises(InvalidFieldError, match="patient"):
        samples.patient(address=f"{samples.INS_1}@mssante.example")
    with pytest.raises(InvalidFieldError, match="patient"):
        samples.patient(address=f"{samples.INS_2}@patient.mssante.example")


def test_times_must_be_aware() -> None:
    with pytest.raises(InvalidFieldError, match="time zone"):
        samples.delegation(expires=datetime(2027, 1, 1))  # noqa: DTZ001 - the point of the test


def test_prefers_pgp_needs_a_key() -> None:
    with pytest.raises(InvalidFieldError, match="OpenPGP"):
        samples.mailbox(prefers_pgp=True)


def test_operator_allows_listed_dn_in_any_spelling() -> None:
    op = samples.operator()
    assert op.allows("cn=mx.hopital-b.example, o=Hopital B, c=FR")
    assert not op.allows("CN=mx.evil.example,O=Hopital B,C=FR")


def test_operator_certificates_deduplicated_and_sorted() -> None:
    op = samples.operator()
    twice = samples.operator(certificates=op.certificates[::-1] + op.certificates)
    assert twice.certificates == op.certificates


def test_canonical_keys() -> None:
    assert canonical_key(Kind.PRACTITIONER, samples.RPPS_1) == "8" + samples.RPPS_1
    assert canonical_key(Kind.MAILBOX, "A@B.FR") == "A@b.fr"
    assert canonical_key(Kind.OPERATOR, "Hopital-B.Example.") == "hopital-b.example"
    assert canonical_key(Kind.DELEGATION, "sec|Z@X.FR") == "sec|Z@x.fr"
    with pytest.raises(InvalidFieldError, match="account\\|mailbox"):
        canonical_key(Kind.DELEGATION, "no-bar")
    d = samples.delegation()
    assert key_of(d) == "secretaire-1|zoe.moreau@medecin.mssante.fr"


def test_bal_types_are_the_four_of_the_format() -> None:
    assert [t.value for t in BalType] == ["PER", "ORG", "APP", "CAB"]
