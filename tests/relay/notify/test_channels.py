"""The channels: the smarthost session (STARTTLS, AUTH, refusals), the HTTPS
SMS gateway, and the dispatcher over an SMS gateway double."""

from __future__ import annotations

import contextlib
import dataclasses
import email.policy
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import TYPE_CHECKING

import pytest

from directory.config import DirectoryConfig, open_directory
from relay.audit import AuditTrail, records
from relay.contact import ContactError, NoticeKind
from relay.notify import texts
from relay.notify.dispatch import NoticeDispatcher
from relay.notify.errors import ChannelError
from relay.notify.notifier import Notifier
from relay.notify.outbox import NoticeOutbox
from relay.notify.settings import NoticeSettings, SmarthostSettings, SmsSettings
from relay.notify.smarthost import SmarthostChannel
from relay.notify.sms import HttpsSmsGateway
from relay.queue.spool import Envelope, Recipient
from tests.relay.notify.conftest import CONTACT_EMAIL, CONTACT_PHONE, NOTICE_FROM
from tests.support.relay_fixtures import DOCTOR, PATIENT, TlsFiles, patient_address
from tests.support.smarthost import (
    SMARTHOST_LOGIN,
    SMARTHOST_PASSWORD,
    free_port,
    smarthost,
)
from tests.support.sms import RecordingSmsGateway, https_gateway

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

NOTICE = texts.new_message(read_url="https://patient.mssante.example/lire")
NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
PATIENT_ADDR = patient_address(PATIENT)
WITH_CONTACT = dataclasses.replace(
    PATIENT, contact_email=CONTACT_EMAIL, contact_phone=CONTACT_PHONE
)


def channel(tls: Path, port: int, **settings: object) -> SmarthostChannel:
    s = SmarthostSettings(
        host="127.0.0.1",
        port=port,
        ca_file=tls / "ca.pem",
        from_address=NOTICE_FROM,
        timeout=5.0,
    )
    return SmarthostChannel(
        dataclasses.replace(s, **settings),  # type: ignore[arg-type]
        hostname="relay.test",
        password=SMARTHOST_PASSWORD,
    )


async def test_email_notice_goes_through_starttls_and_auth(tls_files: TlsFiles) -> None:
    tls = tls_files.directory
    async with smarthost(tls, auth=True) as host:
        ch = channel(tls, host.port, username=SMARTHOST_LOGIN)
        await ch.send(CONTACT_EMAIL, NOTICE, now=NOW)
    [got] = host.received
    assert got.tls
    assert got.login == SMARTHOST_LOGIN
    msg = BytesParser(policy=email.policy.default).parsebytes(got.content)
    assert msg["From"].addresses[0].addr_spec == NOTICE_FROM
    assert msg["Subject"] == NOTICE.subject
    assert msg["Date"]


async def test_a_smarthost_with_an_untrusted_certificate_gets_nothing(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other.pem"
    other_ca.write_bytes((tls_files.directory / "untrusted.pem").read_bytes())
    async with smarthost(tls_files.directory) as host:
        ch = channel(tls_files.directory, host.port, ca_file=other_ca)
        with pytest.raises(ChannelError) as caught:
            await ch.send(CONTACT_EMAIL, NOTICE, now=NOW)
    assert caught.value.reason == "tls"
    assert host.received == []


async def test_a_refused_contact_address_is_a_permanent_failure_without_the_reply(
    tls_files: TlsFiles,
) -> None:
    async with smarthost(tls_files.directory) as host:
        host.refuse_rcpt = f"550 5.1.1 <{CONTACT_EMAIL}> unknown"
        with pytest.raises(ChannelError) as caught:
            await channel(tls_files.directory, host.port).send(
                CONTACT_EMAIL, NOTICE, now=NOW
            )
    assert caught.value.permanent
    assert caught.value.reason == "smtp-rcpt-550"
    assert CONTACT_EMAIL not in str(caught.value)


async def test_an_unreachable_smarthost_is_a_temporary_failure(
    tls_files: TlsFiles,
) -> None:
    with pytest.raises(ChannelError) as caught:
        await channel(tls_files.directory, free_port()).send(
            CONTACT_EMAIL, NOTICE, now=NOW
        )
    assert caught.value.reason == "unreachable"
    assert not caught.value.permanent


async def test_https_gateway_posts_json_with_the_bearer_token(
    tls_files: TlsFiles,
) -> None:
    tls = tls_files.directory
    with https_gateway(tls) as server:
        settings = SmsSettings(
            url=server.url,
            token_file=tls / "unused",
            ca_file=tls / "ca.pem",
            sender="MSSANTE",
        )
        await HttpsSmsGateway(settings, token="tok-123").send(
            CONTACT_PHONE, NOTICE.short
        )
        server.status = 503
        with pytest.raises(ChannelError) as temporary:
            await HttpsSmsGateway(settings, token="tok-123").send(CONTACT_PHONE, "x")
        server.status = 400
        with pytest.raises(ChannelError) as permanent:
            await HttpsSmsGateway(settings, token="tok-123").send(CONTACT_PHONE, "x")
    headers, body = server.requests[0]
    assert headers["Authorization"] == "Bearer tok-123"
    assert body == {"to": CONTACT_PHONE, "text": NOTICE.short, "sender": "MSSANTE"}
    assert (temporary.value.reason, temporary.value.permanent) == ("http-503", False)
    assert (permanent.value.reason, permanent.value.permanent) == ("http-400", True)


async def test_notifier_sends_by_every_declared_channel(tls_files: TlsFiles) -> None:
    sms = RecordingSmsGateway()
    async with smarthost(tls_files.directory) as host:
        notifier = Notifier(email=channel(tls_files.directory, host.port), sms=sms)
        assert await notifier.notify(WITH_CONTACT, NOTICE) == ["email", "sms"]
    assert sms.sent == [(CONTACT_PHONE, NOTICE.short)]
    assert len(host.received) == 1


async def test_notifier_without_contact_sends_nothing_and_raises_when_all_fail() -> (
    None
):
    sms = RecordingSmsGateway()
    notifier = Notifier(sms=sms)
    assert await notifier.notify(PATIENT, NOTICE) == []
    sms.fail = ChannelError("http-503")
    with pytest.raises(ContactError):
        await notifier.notify(WITH_CONTACT, NOTICE)
    assert sms.sent == []


@contextlib.asynccontextmanager
async def dispatching(
    tmp_path: Path, sms: RecordingSmsGateway
) -> AsyncIterator[tuple[NoticeDispatcher, AuditTrail]]:
    """A dispatcher over a real sqlite directory, outbox and audit trail."""
    directory = await open_directory(
        DirectoryConfig(sqlite_path=tmp_path / "d.sqlite3")
    )
    await directory.add(dataclasses.replace(PATIENT, contact_phone=CONTACT_PHONE))
    audit = AuditTrail(tmp_path / "audit.jsonl", b"k" * 32)
    dispatcher = NoticeDispatcher(
        outbox=NoticeOutbox.open(tmp_path),
        notifier=Notifier(sms=sms),
        directory=directory,
        audit=audit,
        settings=NoticeSettings(
            enabled=True, imap_host="imap.mssante.example", minimal_backoff=0.0
        ),
        is_patient_address=lambda a: a.endswith("@patient.mssante.example"),
        clock=lambda: datetime.now(UTC),
    )
    try:
        yield dispatcher, audit
    finally:
        dispatcher.close()
        audit.close()
        await directory.close()


def envelope(sender: str, to: str) -> Envelope:
    return Envelope(
        sender=sender,
        recipients=(Recipient(address=to),),
        received_at=NOW,
        channel="submission",
    )


async def test_dispatcher_sends_the_short_text_to_the_sms_double(
    tmp_path: Path,
) -> None:
    sms = RecordingSmsGateway()
    async with dispatching(tmp_path, sms) as (dispatcher, audit):
        message = b"Subject: Compte rendu\r\n\r\ntexte\r\n"
        dispatcher.delivered(
            [
                (envelope(DOCTOR.address, PATIENT_ADDR), message, [PATIENT_ADDR]),
                # The patient's own message, and a DSN: no notice.
                (envelope(PATIENT_ADDR, PATIENT_ADDR), message, [PATIENT_ADDR]),
                (envelope("", PATIENT_ADDR), message, [PATIENT_ADDR]),
            ]
        )
        assert await dispatcher.run_once() == 1
        assert sms.sent == [
            (CONTACT_PHONE, texts.new_message(imap_host="imap.mssante.example").short)
        ]
        assert await dispatcher.run_once() == 0
    [event] = [
        r for r in records(audit.path) if r["event"] == "patient.contact.notified"
    ]
    assert event["channels"] == ["sms"]
    assert event["kind"] == NoticeKind.NEW_MESSAGE.value
    assert CONTACT_PHONE not in audit.path.read_text(encoding="utf-8")


async def test_dispatcher_retries_a_failed_sms_then_gives_up_when_refused(
    tmp_path: Path,
) -> None:
    sms = RecordingSmsGateway(fail=ChannelError("http-503"))
    async with dispatching(tmp_path, sms) as (dispatcher, audit):
        dispatcher.delivered(
            [(envelope(DOCTOR.address, PATIENT_ADDR), b"\r\n", [PATIENT_ADDR])]
        )
        assert await dispatcher.run_once() == 1
        [waiting] = dispatcher.outbox.pending(PATIENT_ADDR)
        assert waiting.attempts == 1
        sms.fail = ChannelError("http-400", permanent=True)
        assert await dispatcher.run_once() == 1
        assert dispatcher.outbox.pending(PATIENT_ADDR) == []
    failed = [r for r in records(audit.path) if r["event"] == "patient.contact.failed"]
    assert [(r["reason"], r["will_retry"]) for r in failed] == [
        ("http-503", True),
        ("http-400", False),
    ]
