"""Issue 10, retention and withdrawal: a patient deleting a message removes it
from their mailbox (its encrypted record leaves the disk); the professional's
copy and the audit trail stay."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.app import STORE_DIR_NAME
from tests.relay.imap.conftest import imaps
from tests.relay.test_smtp import message
from tests.support.relay_fixtures import DOCTOR, PATIENT, Harness, patient_address
from tests.support.store_layout import Record, freed, records

if TYPE_CHECKING:
    from pathlib import Path

PATIENT_ADDR = patient_address(PATIENT)


def _root(h: Harness) -> Path:
    return h.config.relay.data_dir / STORE_DIR_NAME


def _records(h: Harness) -> list[Record]:
    return records(_root(h))


async def test_a_patient_deleting_a_message_keeps_the_professionals_copy(
    imap_relay: Harness,
) -> None:
    h = imap_relay
    data = message(DOCTOR.address, PATIENT_ADDR, message_id="<w1@medecin.mssante.fr>")

    def send() -> None:
        with h.submission() as c:
            c.sendmail(DOCTOR.address, [PATIENT_ADDR], data)

    await h.run(send)
    await h.delivered()
    before = _records(h)
    assert len(before) == 2  # the patient's INBOX copy, the doctor's Sent copy

    def delete() -> None:
        client = imaps(h, PATIENT_ADDR)
        client.select("INBOX")
        client.uid("STORE", "1", "+FLAGS.SILENT", r"(\Deleted)")
        assert client.expunge()[0] == "OK"
        client.logout()

    await h.run(delete)
    assert h.messages(PATIENT_ADDR) == []
    [left] = _records(h)
    [gone] = [r for r in before if r != left]
    # The patient's encrypted copy, and only it, left the disk.
    assert freed(_root(h), gone)
    assert not freed(_root(h), left)
    [kept] = h.messages(DOCTOR.address, "Sent")
    assert b"<w1@medecin.mssante.fr>" in kept
    [deleted] = [r for r in h.audit_events() if r["event"] == "message.deleted"]
    assert deleted["actor"] == PATIENT_ADDR
    assert deleted["mailbox"] == PATIENT_ADDR
    assert deleted["via"] == "owner"
    # The trail of the exchange is kept.
    assert any(
        r["event"] == "message.delivered" and r.get("recipient") == PATIENT_ADDR
        for r in h.audit_events()
    )
