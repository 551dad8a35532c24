"""Issue 10, retention and withdrawal: a patient deleting a message removes it
from their mailbox (its encrypted file goes); the professional's copy and the
audit trail stay."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.app import STORE_DIR_NAME
from tests.relay.imap.conftest import imaps
from tests.relay.test_smtp import message
from tests.support.relay_fixtures import DOCTOR, PATIENT, Harness, patient_address

if TYPE_CHECKING:
    from pathlib import Path

PATIENT_ADDR = patient_address(PATIENT)


def _files(h: Harness) -> set[Path]:
    root = h.config.relay.data_dir / STORE_DIR_NAME / "messages"
    return {p for p in root.rglob("*") if p.is_file()}


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
    before = _files(h)

    def delete() -> None:
        client = imaps(h, PATIENT_ADDR)
        client.select("INBOX")
        client.uid("STORE", "1", "+FLAGS.SILENT", r"(\Deleted)")
        assert client.expunge()[0] == "OK"
        client.logout()

    await h.run(delete)
    assert h.messages(PATIENT_ADDR) == []
    gone = before - _files(h)
    assert len(gone) == 1  # the patient's encrypted copy, and only it
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
