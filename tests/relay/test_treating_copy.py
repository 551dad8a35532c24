"""Issue 10: a result sent to a patient is copied to the patient's declared
treating doctor when the sender asks for it (``X-MSSante-Copy-Treating``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from directory.model import CareKind, CareRelationship, Patient
from relay.policy import COPY_TREATING_HEADER
from tests.directory import samples
from tests.relay.test_smtp import message
from tests.support.relay_fixtures import (
    COLLEAGUE,
    DOCTOR,
    PATIENT,
    SUSPENDED,
    Harness,
    patient_address,
)

PATIENT_ADDR = patient_address(PATIENT)
SINCE = datetime(2025, 1, 6, tzinfo=UTC)


async def _declare_treating(h: Harness, party: str) -> None:
    entry = await h.running.directory.patient(PATIENT.ins)
    assert isinstance(entry, Patient)
    treating = CareRelationship(party=party, kind=CareKind.TREATING, since=SINCE)
    await h.running.directory.replace(
        dataclasses.replace(entry, care_relationships=(treating,))
    )


async def _send_result(h: Harness, *, ask: bool = True) -> None:
    extra = {COPY_TREATING_HEADER.replace("-", "_"): "yes"} if ask else {}
    data = message(DOCTOR.address, PATIENT_ADDR, **extra)

    def send() -> None:
        with h.submission() as c:
            assert c.sendmail(DOCTOR.address, [PATIENT_ADDR], data) == {}

    await h.run(send)
    await h.delivered()


def _copy_records(h: Harness) -> list[dict[str, object]]:
    return [r for r in h.audit_events() if r.get("copy") == "treating-doctor"]


async def test_the_declared_treating_doctor_gets_a_copy_when_asked(
    relay: Harness,
) -> None:
    await _declare_treating(relay, COLLEAGUE.address)
    await _send_result(relay)
    assert len(relay.messages(PATIENT_ADDR)) == 1
    [copy] = relay.messages(COLLEAGUE.address)
    assert b"Compte rendu" in copy
    [record] = _copy_records(relay)
    assert record["event"] == "smtp.recipient.accepted"
    assert record["recipient"] == COLLEAGUE.address
    assert record["patient"] == PATIENT_ADDR
    [accepted] = [r for r in relay.audit_events() if r["event"] == "message.accepted"]
    assert accepted["recipients"] == [PATIENT_ADDR, COLLEAGUE.address]


async def test_a_doctor_declared_by_national_id_gets_it_in_the_active_mailbox(
    relay: Harness,
) -> None:
    # RPPS_2 owns COLLEAGUE (active) and SUSPENDED: the active one is chosen.
    await _declare_treating(relay, "8" + samples.RPPS_2)
    await _send_result(relay)
    assert len(relay.messages(COLLEAGUE.address)) == 1
    assert relay.messages(SUSPENDED.address) == []


async def test_no_copy_unless_the_sender_asks(relay: Harness) -> None:
    await _declare_treating(relay, COLLEAGUE.address)
    await _send_result(relay, ask=False)
    assert len(relay.messages(PATIENT_ADDR)) == 1
    assert relay.messages(COLLEAGUE.address) == []
    assert _copy_records(relay) == []


async def test_without_a_treating_doctor_the_patient_alone_gets_it(
    relay: Harness,
) -> None:
    await _send_result(relay)
    assert len(relay.messages(PATIENT_ADDR)) == 1
    [record] = _copy_records(relay)
    assert record["event"] == "smtp.recipient.rejected"
    assert record["reason"] == "no treating doctor"


async def test_a_suspended_treating_doctor_gets_no_copy(relay: Harness) -> None:
    await _declare_treating(relay, SUSPENDED.address)
    await _send_result(relay)
    assert len(relay.messages(PATIENT_ADDR)) == 1
    assert relay.messages(SUSPENDED.address) == []
    [record] = _copy_records(relay)
    assert record["event"] == "smtp.recipient.rejected"
    assert record["reason"] == "recipient suspended"
