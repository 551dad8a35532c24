"""A patient opens a message in any IMAP client; the relay sends its MDN (RFC 8098).

The patient's client is stdlib ``imaplib``, which never answers an MDN
request itself: the ``displayed`` receipt comes from the relay, once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from mssante import parse_mdn
from tests.relay.imap.conftest import imaps
from tests.support.relay_fixtures import DOCTOR, PATIENT, patient_address

if TYPE_CHECKING:
    from tests.support.relay_fixtures import Harness


def _report(dnt: str | None, message_id: str) -> bytes:
    patient = patient_address(PATIENT)
    lines = [
        f"From: {DOCTOR.address}",
        f"To: {patient}",
        "Subject: Resultats",
        f"Message-ID: {message_id}",
    ]
    if dnt is not None:
        lines.append(f"Disposition-Notification-To: {dnt}")
    return ("\r\n".join([*lines, "", "Vos resultats sont disponibles.", ""])).encode()


async def _send(h: Harness, data: bytes) -> None:
    def run() -> None:
        with h.submission() as client:
            client.sendmail(DOCTOR.address, [patient_address(PATIENT)], data)

    await h.run(run)
    await h.delivered()


def _read_all(h: Harness) -> list[bytes]:
    client = imaps(h, patient_address(PATIENT))
    try:
        client.select("INBOX")
        client.fetch("1:*", "(BODY[])")  # not PEEK: sets \Seen
        typ, flags = client.fetch("1:*", "(FLAGS)")
        assert typ == "OK"
        return [f for f in flags if isinstance(f, bytes)]
    finally:
        client.logout()


def _mdns(h: Harness) -> list[bytes]:
    return [m for m in h.messages(DOCTOR.address) if b"disposition-notification" in m]


async def _settle(h: Harness) -> None:
    # The receipt goes through the spool and local delivery.
    for _ in range(100):
        await asyncio.sleep(0.05)
        await h.delivered()
        if not h.running.spool.pending():
            return


async def test_opening_a_message_sends_one_displayed_receipt(
    imap_relay: Harness,
) -> None:
    h = imap_relay
    await _send(h, _report(DOCTOR.address, "<r1@medecin.mssante.fr>"))
    flags = await h.run(lambda: _read_all(h))
    await _settle(h)
    [receipt] = _mdns(h)
    mdn = parse_mdn(receipt)
    assert mdn.final_recipient == patient_address(PATIENT)
    assert mdn.original_message_id == "<r1@medecin.mssante.fr>"
    assert mdn.disposition.field_value() == (
        "manual-action/MDN-sent-automatically; displayed"
    )
    assert b"Return-Path: <>" in receipt
    [sent] = [r for r in h.audit_events() if r.get("event") == "mdn.sent"]
    assert sent["on_behalf_of"] == patient_address(PATIENT)
    # RFC 3503: the keyword tells every client the receipt went.
    await h.run(lambda: _read_all(h))
    flags = await h.run(lambda: _read_all(h))
    assert any(b"$MDNSent" in f for f in flags), flags
    await _settle(h)
    assert len(_mdns(h)) == 1


@pytest.mark.parametrize(
    "dnt",
    [None, "someone.else@medecin.mssante.fr"],
    ids=["no receipt asked", "receipt asked for another address"],
)
async def test_no_receipt_unless_asked_by_the_return_path(
    imap_relay: Harness, dnt: str | None
) -> None:
    h = imap_relay
    await _send(h, _report(dnt, "<r2@medecin.mssante.fr>"))
    await h.run(lambda: _read_all(h))
    await _settle(h)
    assert _mdns(h) == []
    assert [r for r in h.audit_events() if r.get("event") == "mdn.sent"] == []
