"""The client library against a real relay on loopback."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from mssante import (
    AuthenticationError,
    Document,
    MessageTooLargeError,
    RecipientsRefusedError,
    TLSConfig,
    TLSVerificationError,
    TraceLog,
    parse_dsn,
    parse_message,
)
from mssante.message import NotAPdfError
from tests.client.helpers import connect
from tests.directory import samples as directory_samples
from tests.message import samples
from tests.support.relay_fixtures import DOCTOR, PASSWORD, URGENCES

if TYPE_CHECKING:
    from pathlib import Path

    from mssante.crypto.testpki import TestPKI
    from tests.support.relay_fixtures import Harness

PATIENT_ADDRESS = samples.PATIENT_ADDRESS  # 280017512345610@patient.mssante.example


async def _add_report_patient(relay: Harness) -> None:
    await relay.running.directory.add(
        directory_samples.patient(
            samples.PATIENT.ins, blocked_senders=(), care_relationships=(), proxies=()
        )
    )


def _tls(relay: Harness, **kw: object) -> TLSConfig:
    return TLSConfig(ca_file=relay.ca_file, **kw)  # type: ignore[arg-type]


async def test_report_reaches_a_colleague_and_the_patient_intact(
    relay: Harness, tmp_path: Path
) -> None:
    await _add_report_patient(relay)
    traces = TraceLog(tmp_path / "traces.jsonl")
    report = samples.report(
        sender=DOCTOR.address, to=(URGENCES.address, PATIENT_ADDRESS)
    )
    async with connect(relay, DOCTOR.address, traces=traces) as client:
        sent = await client.send(report)
    assert sent.accepted == (URGENCES.address, PATIENT_ADDRESS)
    assert sent.refused == {}
    assert sent.reply.code == 250
    await relay.delivered()

    # The colleague reads it with a foreign client (stdlib imaplib).
    def read_with_imaplib() -> bytes:
        import imaplib

        imap_host, imap_port = relay.address("imaps")
        with imaplib.IMAP4_SSL(
            imap_host, imap_port, ssl_context=relay.client_context(), timeout=10
        ) as imap:
            imap.login(URGENCES.address, PASSWORD)
            imap.select("INBOX")
            _, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
            first = data[0]
            assert isinstance(first, tuple)
            body: bytes = first[1]
            return body

    by_imap = await relay.run(read_with_imaplib)
    xdm = parse_message(by_imap)
    assert xdm.report.patient == samples.PATIENT
    for mailbox in (URGENCES.address, PATIENT_ADDRESS):
        [stored] = relay.messages(mailbox)
        received = parse_message(stored)
        assert received.message_id == sent.message_id
        assert received.report.patient == samples.PATIENT
        assert [d.content for d in received.report.documents] == [
            d.content for d in report.documents
        ]
    # The relay's success DSN comes back to the sender, ENVID = Message-ID.
    [dsn_bytes] = relay.messages(DOCTOR.address)
    dsn = parse_dsn(dsn_bytes)
    assert dsn.original_envelope_id == sent.message_id
    assert {r.final_recipient for r in dsn.recipients} == {
        URGENCES.address,
        PATIENT_ADDRESS,
    }
    # Traces: who, when, to whom; never the content.
    [trace] = traces.export()
    assert trace["event"] == "send.accepted"
    assert trace["recipients"] == [URGENCES.address, PATIENT_ADDRESS]
    assert "Veuillez" not in json.dumps(trace)


async def test_malformed_report_is_refused_before_anything_is_sent(
    relay: Harness,
) -> None:
    with pytest.raises(NotAPdfError, match="pdf"):
        Document.pdf(b"<html>not a pdf</html>", filename="cr.pdf")
    assert relay.running.spool.pending() == []


async def test_message_over_the_server_size_is_refused_locally(
    relay: Harness, tmp_path: Path
) -> None:
    traces = TraceLog(tmp_path / "traces.jsonl")
    big = samples.tiny_pdf("x") + b"%" + b"y" * 300_000
    report = samples.report(
        sender=DOCTOR.address,
        to=(URGENCES.address,),
        documents=(samples.discharge_letter(), Document.pdf(big, filename="big.pdf")),
    )
    async with connect(relay, DOCTOR.address, traces=traces) as client:
        with pytest.raises(MessageTooLargeError, match="at most 200000"):
            await client.send(report)
    assert [t["event"] for t in traces.export()] == ["send.refused"]
    assert not any(
        e["event"] == "smtp.recipient.accepted" for e in relay.audit_events()
    )


async def test_refused_recipients_raise_with_each_reply(relay: Harness) -> None:
    report = samples.report(sender=DOCTOR.address, to=("inconnu@medecin.mssante.fr",))
    async with connect(relay, DOCTOR.address) as client:
        with pytest.raises(RecipientsRefusedError) as caught:
            await client.send(report)
    assert str(caught.value.refused["inconnu@medecin.mssante.fr"]).startswith(
        "550 5.1.1"
    )


async def test_partial_acceptance_is_reported_per_recipient(relay: Harness) -> None:
    report = samples.report(
        sender=DOCTOR.address, to=(URGENCES.address, "inconnu@medecin.mssante.fr")
    )
    async with connect(relay, DOCTOR.address) as client:
        sent = await client.send(report)
    assert sent.accepted == (URGENCES.address,)
    assert sent.refused["inconnu@medecin.mssante.fr"].code == 550


async def test_wrong_password_is_an_authentication_error(relay: Harness) -> None:
    with pytest.raises(AuthenticationError, match="535"):
        async with connect(relay, DOCTOR.address, password="Wrong-pw-123!"):
            pass


async def test_untrusted_server_certificate_is_refused(
    relay: Harness, tmp_path: Path
) -> None:
    from mssante.crypto.testpki import TestPKI

    other = tmp_path / "other-ca.pem"
    other.write_bytes(TestPKI(datetime.now(UTC)).root_pem)
    with pytest.raises(TLSVerificationError, match="certificate"):
        async with connect(relay, DOCTOR.address, tls=TLSConfig(ca_file=other)):
            pass


async def test_strict_mssante_profile_negotiates_tls12_and_implicit_tls_works(
    relay: Harness,
) -> None:
    async with connect(
        relay, DOCTOR.address, tls=_tls(relay, mssante_strict=True)
    ) as client:
        assert client.tls_version == "TLSv1.2"
    async with connect(relay, DOCTOR.address, listener="submissions") as client:
        assert client.tls_version == "TLSv1.3"
        assert client.capabilities.has("DSN")


async def test_signed_report_verifies_at_the_recipient(
    relay: Harness, pki: TestPKI
) -> None:
    from mssante.crypto import smime
    from mssante.crypto.certs import TrustStore

    signer = pki.practitioner(DOCTOR.address)
    report = samples.report(sender=DOCTOR.address, to=(URGENCES.address,))
    async with connect(relay, DOCTOR.address, signer=signer) as client:
        await client.send(report)
    await relay.delivered()
    [stored] = relay.messages(URGENCES.address)
    trust = TrustStore.from_pem(pki.root_pem, pki.intermediates_pem, pki.crls())
    verification = smime.verify(
        stored, trust, at=datetime.now(UTC), sender=DOCTOR.address
    )
    assert verification.ok, verification.detail
