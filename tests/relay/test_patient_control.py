"""Patient control end to end, through SMTP and IMAP on loopback (issue 10):
opt-out and blocks as the relay applies them, proxies and their limits,
break-glass from the CLI against the running relay, a minor's mailbox.

Consent changes go through ``Directory.change_consent`` (as the CLI does);
``tests/relay/imap/test_sections.py`` covers a read proxy's SELECT, FETCH,
STORE and its ``message.read`` audit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import io
import json
import smtplib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cli.main import EXIT_OK, main
from directory.consent import (
    Block,
    GrantProxy,
    OptIn,
    OptOut,
    RevokeProxy,
    Unblock,
)
from directory.model import BreakGlassGrant, Patient, ProxyScope
from relay.accounts import AccountKind
from tests.relay.test_smtp import message
from tests.support.relay_fixtures import (
    COLLEAGUE,
    DOCTOR,
    PASSWORD,
    PATIENT,
    PATIENT_2,
    URGENCES,
    patient_address,
)

if TYPE_CHECKING:
    from directory.consent import ConsentChange
    from tests.support.relay_fixtures import Harness

PATIENT_ADDR = patient_address(PATIENT)
MINOR_ADDR = patient_address(PATIENT_2)
UNKNOWN_ADDR = "123456789012345@patient.mssante.example"


def _rcpt(h: Harness, to: str, login: str = DOCTOR.address) -> tuple[int, bytes]:
    with h.submission(login=login) as client:
        client.mail(login)
        return client.rcpt(to)


def _send(h: Harness, login: str, sender: str, to: str, data: bytes) -> Any:  # noqa: ANN401
    """The refused recipients of one submission, or the SMTP error raised."""
    try:
        with h.submission(login=login) as client:
            return client.sendmail(sender, [to], data)
    except smtplib.SMTPException as exc:
        return exc


def _imaps(h: Harness, login: str) -> imaplib.IMAP4_SSL:
    host, port = h.address("imaps")
    client = imaplib.IMAP4_SSL(host, port, ssl_context=h.client_context(), timeout=10)
    client.login(login, PASSWORD)
    return client


async def _change(h: Harness, ins: str, change: ConsentChange) -> None:
    outcome = await h.running.directory.change_consent(
        ins, change, actor="test", now=datetime.now(UTC)
    )
    assert outcome.record is not None


async def test_opted_out_patient_looks_unknown_and_opt_in_restores(
    relay: Harness,
) -> None:
    h = relay
    unknown = await h.run(lambda: _rcpt(h, UNKNOWN_ADDR))
    await _change(h, PATIENT.ins, OptOut())
    refused = await h.run(lambda: _rcpt(h, PATIENT_ADDR))
    assert refused == unknown
    assert refused[0] == 550
    sent = await h.run(
        lambda: _send(
            h, DOCTOR.address, DOCTOR.address, PATIENT_ADDR,
            message(DOCTOR.address, PATIENT_ADDR),
        )
    )  # fmt: skip
    assert isinstance(sent, smtplib.SMTPRecipientsRefused)
    await h.delivered()
    assert h.messages(PATIENT_ADDR) == []
    await _change(h, PATIENT.ins, OptIn())
    sent = await h.run(
        lambda: _send(
            h, DOCTOR.address, DOCTOR.address, PATIENT_ADDR,
            message(DOCTOR.address, PATIENT_ADDR),
        )
    )  # fmt: skip
    assert sent == {}
    await h.delivered()
    assert len(h.messages(PATIENT_ADDR)) == 1
    reasons = [
        e["reason"] for e in h.audit_events() if e["event"] == "smtp.recipient.rejected"
    ]
    assert "patient opted out" in reasons


async def test_blocking_a_practitioner_or_an_organisation(relay: Harness) -> None:
    h = relay
    h.running.accounts.create(
        COLLEAGUE.address, AccountKind.PRACTITIONER, PASSWORD, [COLLEAGUE.address]
    )
    unknown = await h.run(lambda: _rcpt(h, UNKNOWN_ADDR))
    # The practitioner (national id) who owns the doctor's mailbox.
    await _change(h, PATIENT.ins, Block(DOCTOR.owner_id))
    assert await h.run(lambda: _rcpt(h, PATIENT_ADDR)) == unknown
    assert (await h.run(lambda: _rcpt(h, PATIENT_ADDR, COLLEAGUE.address)))[0] == 250
    await _change(h, PATIENT.ins, Unblock(DOCTOR.owner_id))
    assert (await h.run(lambda: _rcpt(h, PATIENT_ADDR)))[0] == 250
    # A whole organisation, by its structure id: its own mailboxes and those
    # of the practitioners working there.
    await _change(h, PATIENT.ins, Block(URGENCES.owner_id))
    for login in (URGENCES.address, DOCTOR.address):
        assert await h.run(
            lambda login=login: _rcpt(h, PATIENT_ADDR, login)  # type: ignore[misc]
        ) == await h.run(
            lambda login=login: _rcpt(h, UNKNOWN_ADDR, login)  # type: ignore[misc]
        )
    assert (await h.run(lambda: _rcpt(h, PATIENT_ADDR, COLLEAGUE.address)))[0] == 250
    reasons = {
        e["reason"] for e in h.audit_events() if e["event"] == "smtp.recipient.rejected"
    }
    assert "patient blocked the sender" in reasons


async def test_read_proxy_reads_but_never_writes_nor_sends(relay: Harness) -> None:
    h = relay
    h.running.accounts.create("aidant-1", AccountKind.PROXY, PASSWORD)
    await _change(h, PATIENT.ins, GrantProxy("aidant-1", ProxyScope.READ))
    sent = await h.run(
        lambda: _send(
            h, DOCTOR.address, DOCTOR.address, PATIENT_ADDR,
            message(DOCTOR.address, PATIENT_ADDR),
        )
    )  # fmt: skip
    assert sent == {}
    await h.delivered()

    def session() -> dict[str, Any]:
        c = _imaps(h, "aidant-1")
        name = f"Shared/{PATIENT_ADDR}/INBOX"
        c.select(name, readonly=True)
        out = {
            "fetch": c.fetch("1", "(BODY.PEEK[])"),
            "store": c.uid("STORE", "1", "+FLAGS", "(\\Deleted)"),
            "append": c.append(name, "", None, message(PATIENT_ADDR, DOCTOR.address)),
        }
        c.logout()
        return out

    out = await h.run(session)
    assert out["fetch"][0] == "OK"
    assert out["store"][0] == "NO"
    assert out["append"][0] == "NO"
    reply = message(
        PATIENT_ADDR, DOCTOR.address, message_id="<r1@patient.mssante.example>"
    )
    refused = await h.run(
        lambda: _send(h, "aidant-1", PATIENT_ADDR, DOCTOR.address, reply)
    )
    assert isinstance(refused, smtplib.SMTPSenderRefused)
    assert [e["via"] for e in h.audit_events() if e["event"] == "message.read"] == [
        "proxy"
    ]


async def test_reply_proxy_answers_with_sender_and_revoke_ends_access(
    relay: Harness,
) -> None:
    h = relay
    h.running.accounts.create("aidant-2", AccountKind.PROXY, PASSWORD)
    await _change(h, PATIENT.ins, GrantProxy("aidant-2", ProxyScope.READ_REPLY))
    first = message(DOCTOR.address, PATIENT_ADDR, message_id="<t1@medecin.mssante.fr>")
    assert (
        await h.run(
            lambda: _send(h, DOCTOR.address, DOCTOR.address, PATIENT_ADDR, first)
        )
        == {}
    )
    await h.delivered()
    reply = message(
        PATIENT_ADDR,
        DOCTOR.address,
        subject="Re: Compte rendu",
        message_id="<r1@patient.mssante.example>",
        in_reply_to="<t1@medecin.mssante.fr>",
        references="<t1@medecin.mssante.fr>",
    )
    sent = await h.run(
        lambda: _send(h, "aidant-2", PATIENT_ADDR, DOCTOR.address, reply)
    )
    assert sent == {}, sent
    await h.delivered()
    [got] = h.messages(DOCTOR.address)
    assert b"Sender: aidant-2" in got
    assert b"From: " + PATIENT_ADDR.encode() in got
    # The trail says who sent, for whom, and in what capacity.
    [accepted] = [
        r
        for r in h.audit_events()
        if r["event"] == "message.accepted" and r["sender"] == PATIENT_ADDR
    ]
    assert accepted["actor"] == "aidant-2"
    assert accepted["via"] == "proxy"

    def select() -> str:
        c = _imaps(h, "aidant-2")
        try:
            return c.select(f"Shared/{PATIENT_ADDR}/INBOX", readonly=True)[0]
        finally:
            c.logout()

    assert await h.run(select) == "OK"

    def revoked_mid_session() -> tuple[str, str]:
        c = _imaps(h, "aidant-2")
        name = f"Shared/{PATIENT_ADDR}/INBOX"
        before = c.select(name, readonly=True)[0]
        asyncio.run_coroutine_threadsafe(
            _change(h, PATIENT.ins, RevokeProxy("aidant-2")), loop
        ).result(timeout=10)
        after = c.select(name, readonly=True)[0]  # same login, no new one
        c.logout()
        return before, after

    loop = asyncio.get_running_loop()
    assert await h.run(revoked_mid_session) == ("OK", "NO")
    again = await h.run(
        lambda: _send(
            h, "aidant-2", PATIENT_ADDR, DOCTOR.address,
            message(PATIENT_ADDR, DOCTOR.address, message_id="<r2@patient.mssante.example>",
                    in_reply_to="<t1@medecin.mssante.fr>"),
        )
    )  # fmt: skip
    assert isinstance(again, smtplib.SMTPSenderRefused)


async def test_expired_proxy_reaches_nothing(relay: Harness) -> None:
    h = relay
    h.running.accounts.create("aidant-3", AccountKind.PROXY, PASSWORD)
    past = datetime.now(UTC) - timedelta(days=1)
    entry = await h.running.directory.patient(PATIENT.ins)
    assert entry is not None
    from directory.model import ProxyGrant

    grant = ProxyGrant(
        account="aidant-3",
        scope=ProxyScope.READ_REPLY,
        granted_at=past - timedelta(days=30),
        expires=past,
    )
    await h.running.directory.replace(dataclasses.replace(entry, proxies=(grant,)))

    def select() -> str:
        c = _imaps(h, "aidant-3")
        try:
            return c.select(f"Shared/{PATIENT_ADDR}/INBOX", readonly=True)[0]
        finally:
            c.logout()

    assert await h.run(select) == "NO"
    sent = await h.run(
        lambda: _send(
            h, "aidant-3", PATIENT_ADDR, DOCTOR.address,
            message(PATIENT_ADDR, DOCTOR.address),
        )
    )  # fmt: skip
    assert isinstance(sent, smtplib.SMTPSenderRefused)


def _cli(h: Harness, *argv: str) -> tuple[int, str]:
    """``mssante`` against the running relay's data directory."""
    path = h.config.relay.data_dir.parent / "relay.toml"
    path.write_text(
        f'[relay]\ndata_dir = "{h.config.relay.data_dir}"\ndomain = "mssante.example"\n',
        encoding="utf-8",
    )
    out = io.StringIO()
    status = main(["--config", str(path), *argv], out=out)
    return status, out.getvalue()


async def _until_stored(h: Harness, address: str, count: int) -> list[bytes]:
    for _ in range(100):
        found = h.messages(address)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    return h.messages(address)


async def test_break_glass_opens_read_only_access_and_tells_the_patient(
    relay: Harness,
) -> None:
    h = relay
    h.running.accounts.create("admin-1", AccountKind.STAFF, PASSWORD)
    sent = await h.run(
        lambda: _send(
            h, DOCTOR.address, DOCTOR.address, PATIENT_ADDR,
            message(DOCTOR.address, PATIENT_ADDR),
        )
    )  # fmt: skip
    assert sent == {}
    await h.delivered()

    def refused_before() -> str:
        c = _imaps(h, "admin-1")
        try:
            return c.select(f"Shared/{PATIENT_ADDR}/INBOX", readonly=True)[0]
        finally:
            c.logout()

    assert await h.run(refused_before) == "NO"
    status, text = await h.run(
        lambda: _cli(
            h, "--json", "patient", "break-glass", PATIENT.ins, "--account", "admin-1",
            "--reason", "réquisition judiciaire n° 42", "--actor", "dpo",
        )
    )  # fmt: skip
    assert status == EXIT_OK, text
    done = json.loads(text)
    assert done["notice"]["via"] == "spool"  # the relay holds the store
    # The relay picks the notice up from its spool and delivers it.
    stored = await _until_stored(h, PATIENT_ADDR, 2)
    assert len(stored) == 2
    assert any(b"Auto-Submitted: auto-generated" in m for m in stored)

    def session() -> dict[str, Any]:
        c = _imaps(h, "admin-1")
        name = f"Shared/{PATIENT_ADDR}/INBOX"
        try:
            c.select(name)  # asks read-write
            answered_read_only = False
        except c.readonly:  # the server answered [READ-ONLY]
            answered_read_only = True
        out = {
            "read_only": answered_read_only,
            "select": c.select(name, readonly=True)[0],
            "fetch": c.fetch("1", "(BODY[])"),
            "store": c.uid("STORE", "1", "+FLAGS", "(\\Deleted)"),
            "append": c.append(name, "", None, b"Subject: x\r\n\r\nx\r\n"),
            "expunge": c.expunge(),
        }
        c.logout()
        return out

    out = await h.run(session)
    assert out["read_only"]
    assert out["select"] == "OK"
    assert out["fetch"][0] == "OK"
    assert out["store"][0] == "NO"
    assert out["append"][0] == "NO"
    assert out["expunge"][0] == "NO"
    sent = await h.run(
        lambda: _send(
            h, "admin-1", PATIENT_ADDR, DOCTOR.address,
            message(PATIENT_ADDR, DOCTOR.address),
        )
    )  # fmt: skip
    assert isinstance(sent, smtplib.SMTPSenderRefused)  # never sends
    events = h.audit_events()
    reads = [e for e in events if e["event"] == "message.read"]
    assert [(e["actor"], e["mailbox"], e["via"]) for e in reads] == [
        ("admin-1", PATIENT_ADDR, "break-glass")
    ]
    [opened] = [e for e in events if e["event"] == "patient.access.break_glass"]
    assert opened["reason"] == "réquisition judiciaire n° 42"
    assert opened["account"] == "admin-1"
    # Nothing changed in the patient's mailbox: flags, messages.
    assert all(not m.flags for m in h.running.store.messages(PATIENT_ADDR, "INBOX"))

    # Expired: the next SELECT is refused (same answer as no access).
    entry = await h.running.directory.patient(PATIENT.ins)
    assert isinstance(entry, Patient)
    [grant] = entry.break_glass
    now = datetime.now(UTC)
    expired = BreakGlassGrant(
        account=grant.account,
        reason=grant.reason,
        opened_at=now - timedelta(hours=2),
        expires=now - timedelta(seconds=1),
    )
    await h.running.directory.replace(
        dataclasses.replace(entry, break_glass=(expired,))
    )
    assert await h.run(refused_before) == "NO"


async def test_minors_mail_lands_in_their_own_mailbox_parent_reads_by_proxy(
    relay: Harness,
) -> None:
    h = relay
    h.running.accounts.create("parent-1", AccountKind.PROXY, PASSWORD)
    sent = await h.run(
        lambda: _send(
            h, DOCTOR.address, DOCTOR.address, MINOR_ADDR,
            message(DOCTOR.address, MINOR_ADDR),
        )
    )  # fmt: skip
    assert sent == {}
    await h.delivered()
    assert len(h.messages(MINOR_ADDR)) == 1

    def select() -> str:
        c = _imaps(h, "parent-1")
        try:
            return c.select(f"Shared/{MINOR_ADDR}/INBOX", readonly=True)[0]
        finally:
            c.logout()

    assert await h.run(select) == "NO"  # no grant: the parent sees nothing
    await _change(h, PATIENT_2.ins, GrantProxy("parent-1", ProxyScope.READ))
    assert await h.run(select) == "OK"
    # The parent has no mailbox of their own where the minor's mail could land.
    assert h.running.accounts.get("parent-1") is not None
    assert [m for m in h.running.store.mailboxes() if "parent" in m] == []
