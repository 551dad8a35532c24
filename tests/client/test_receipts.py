"""Receipts and the inbox over IMAP, against a real relay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from mssante import TraceLog
from mssante.message import (
    Disposition,
    DispositionType,
    IntegrationError,
    IntegrationErrorCode,
    compose_mdn,
)
from tests.client.helpers import connect
from tests.message import samples
from tests.support.relay_fixtures import DOCTOR, URGENCES

if TYPE_CHECKING:
    from pathlib import Path

    from mssante.crypto.testpki import TestPKI
    from tests.support.relay_fixtures import Harness

# aioimaplib formats received bytes into a debug message ("%s" % bytes)
# before the logger filters by level: a BytesWarning, an error under -bb.
pytestmark = pytest.mark.filterwarnings("ignore::BytesWarning")


async def test_dsn_and_mdn_come_back_and_are_correlated(relay: Harness) -> None:
    report = samples.report(
        sender=DOCTOR.address, to=(URGENCES.address,), read_receipt=True
    )
    async with connect(relay, DOCTOR.address) as doctor:
        sent = await doctor.send(report)
        await relay.delivered()
        # The colleague's software integrates the document and says so (RFC 8098),
        # and refuses a second one with an MSSanté integration error code.
        async with connect(relay, URGENCES.address) as colleague:
            [item] = await colleague.inbox()
            received = (await colleague.open(item.uid)).raw
            for n, disposition in enumerate(
                [
                    Disposition(type=DispositionType.PROCESSED),
                    Disposition(
                        type=DispositionType.PROCESSED,
                        error=IntegrationError.of(
                            IntegrationErrorCode.E902_UNKNOWN_PATIENT
                        ),
                    ),
                ]
            ):
                mdn = compose_mdn(
                    original=received,
                    final_recipient=URGENCES.address,
                    disposition=disposition,
                    reporting_ua="LPS test",
                    from_address=URGENCES.address,
                    message_id=f"<mdn{n}@ch-paris-1.mssante.fr>",
                    now=datetime.now(UTC),
                )
                await colleague.submit(
                    mdn, sender=URGENCES.address, recipients=[DOCTOR.address]
                )
        await relay.delivered()
        [receipts] = await doctor.receipts([sent])
    assert receipts.message_id == sent.message_id
    assert receipts.delivery == {URGENCES.address: ("delivered", "2.0.0")}
    assert receipts.dispositions[URGENCES.address].type is DispositionType.PROCESSED
    assert receipts.mdn_requested
    assert not receipts.mdn_overdue


async def test_receipts_and_deletions_are_traced(
    relay: Harness, tmp_path: Path
) -> None:
    traces = TraceLog(tmp_path / "traces.jsonl")
    report = samples.report(sender=DOCTOR.address, to=(URGENCES.address,))
    async with connect(relay, DOCTOR.address, traces=traces) as doctor:
        sent = await doctor.send(report)
        await relay.delivered()
        await doctor.receipts([sent])
        [dsn] = await doctor.inbox()
        await doctor.delete(dsn.uid)
        assert await doctor.inbox() == []
    events = [t["event"] for t in traces.export()]
    assert events == ["send.accepted", "receipt.received", "message.deleted"]
    assert "Veuillez" not in (tmp_path / "traces.jsonl").read_text()


async def test_missing_mdn_is_flagged_after_the_delay(relay: Harness) -> None:
    report = samples.report(
        sender=DOCTOR.address, to=(URGENCES.address,), read_receipt=True
    )
    later = datetime.now(UTC) + timedelta(days=8)
    async with connect(relay, DOCTOR.address) as doctor:
        sent = await doctor.send(report)
        await relay.delivered()
        [now_receipts] = await doctor.receipts([sent])
        doctor.clock = lambda: later
        [later_receipts] = await doctor.receipts([sent])
    assert not now_receipts.mdn_overdue
    assert later_receipts.mdn_overdue
    assert later_receipts.delivery[URGENCES.address][0] == "delivered"


async def test_inbox_lists_without_marking_seen_and_opens_signed_mail(
    relay: Harness, pki: TestPKI
) -> None:
    from mssante.crypto.certs import TrustStore

    signer = pki.practitioner(DOCTOR.address)
    async with connect(relay, DOCTOR.address, signer=signer) as doctor:
        await doctor.send(samples.report(sender=DOCTOR.address, to=(URGENCES.address,)))
    await relay.delivered()
    trust = TrustStore.from_pem(pki.root_pem, pki.intermediates_pem, pki.crls())
    async with connect(relay, URGENCES.address) as colleague:
        [item] = await colleague.inbox()
        assert "\\Seen" not in item.flags
        assert item.subject.startswith("XDM/1.0/DDM+")
        opened = await colleague.open(item.uid, trust=trust)
        [again] = await colleague.inbox()
    assert opened.verification is not None
    assert opened.verification.ok
    assert b"X-MSS-NIL" in opened.message
    assert "\\Seen" not in again.flags
