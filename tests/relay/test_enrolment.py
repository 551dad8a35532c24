"""Patient enrolment, activation and recovery, end to end (issue 10).

A real relay on loopback serves the HTTPS forms (``[web]``) and IMAP; the
tests enrol with the same :class:`relay.enrolment.Enrolment` an admin
command uses, post with stdlib ``urllib`` over TLS checked against the test
CA, and log in with ``imaplib``. The ordinary contact is the one boundary
we do not run: a small recording notifier stands in for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from directory.model import Patient, ProxyGrant, ProxyScope
from relay import generated
from relay.accounts import (
    AccountKind,
    AccountStore,
    CodePurpose,
    CodeResult,
    WeakPasswordError,
    normalize_code,
)
from relay.app import load_master_key, run_relay
from relay.contact import ContactNotice, NoticeKind
from relay.enrolment import (
    AlreadyActivatedError,
    CaregiverError,
    Delivery,
    Enrolment,
    InactiveState,
    NotEnrollableError,
    NoticeFailedError,
    inactive_accounts,
    notifier_for,
)
from relay.notify import texts
from relay.queue.spool import Spool
from tests.support.clock import MovingClock as Clock
from tests.support.relay_fixtures import (
    PASSWORD,
    PATIENT,
    PATIENT_2,
    Harness,
    TlsFiles,
    patient_address,
    relay_config,
    seed_data_dir,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from relay.config import Config

NEW_PASSWORD = "Nouveau-mot-2-passe!"
OTHER_PASSWORD = "Autre-mot-3-passe?"
CODE = re.compile(r"[0-9A-Z]{4}(?:-[0-9A-Z]{4}){3}")
LOGIN = patient_address(PATIENT_2)  # enrolled by the tests
CAREGIVER = patient_address(PATIENT)  # has an account and a box of its own
CONTACT = "marie.dupont@example.org"


class RecordingNotifier:
    """The ordinary contact's channels: records what it is given."""

    def __init__(self) -> None:
        self.sent: list[tuple[Patient, ContactNotice]] = []
        self._arrived = asyncio.Condition()

    async def notify(self, patient: Patient, notice: ContactNotice) -> list[str]:
        async with self._arrived:
            self.sent.append((patient, notice))
            self._arrived.notify_all()
        return ["email"] if patient.contact_email else []

    async def wait(self, count: int) -> ContactNotice:
        """The ``count``-th notice, once it has come."""
        async with asyncio.timeout(10), self._arrived:
            await self._arrived.wait_for(lambda: len(self.sent) >= count)
        return self.sent[count - 1][1]


@dataclass
class Web:
    h: Harness
    notifier: RecordingNotifier
    clock: Clock
    admin: Enrolment  # what `mssante patient ...` uses, on the relay's stores

    def post(
        self, path: str, fields: dict[str, str], *, as_json: bool = False
    ) -> tuple[int, str]:
        """POST ``fields`` (form-encoded or JSON); the status and body."""
        _, port = self.h.address("web")
        data = (
            json.dumps(fields).encode()
            if as_json
            else urllib.parse.urlencode(fields).encode()
        )
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}{path}",
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json"
                if as_json
                else "application/x-www-form-urlencoded"
            },
        )
        return _fetch(request, self.h)

    def get(self, path: str) -> tuple[int, str]:
        _, port = self.h.address("web")
        return _fetch(urllib.request.Request(f"https://127.0.0.1:{port}{path}"), self.h)

    def imap_login(self, login: str, password: str) -> bool:
        return self.h.imap_login(login, password)

    def audit_text(self) -> str:
        return self.h.running.audit.path.read_text(encoding="utf-8")


def _fetch(request: urllib.request.Request, h: Harness) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(  # noqa: S310 - https only, built above
            request, context=h.client_context(), timeout=10
        ) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def web_config(tmp_path: Path, files: TlsFiles, **web: Any) -> Config:  # noqa: ANN401
    return relay_config(
        tmp_path,
        files.directory,
        None,
        extra={
            "web": {"host": "127.0.0.1", "port": 0, **web},
            "enrolment": {"activation_code_days": 14, "max_code_failures": 5},
        },
    )


async def _start(cfg: Config, files: TlsFiles) -> AsyncIterator[Web]:
    await seed_data_dir(cfg, files)
    notifier = RecordingNotifier()
    clock = Clock()
    async with run_relay(
        cfg, drain_timeout=5, notifier=notifier, clock=clock
    ) as running:
        # The enrolled patient declares a contact and a caregiver (another
        # patient of this relay, with a mailbox of their own).
        grant = ProxyGrant(
            account=CAREGIVER,
            scope=ProxyScope.READ,
            granted_at=datetime.now(UTC) - timedelta(days=1),
        )
        await running.directory.replace(
            dataclasses.replace(PATIENT_2, contact_email=CONTACT, proxies=(grant,))
        )
        tls = files.directory
        h = Harness(
            running=running,
            config=cfg,
            ca_file=tls / "ca.pem",
            operator_cert=tls / "op.pem",
            operator_key=tls / "op.key",
            other_operator_cert=tls / "other.pem",
            other_operator_key=tls / "other.key",
            untrusted_cert=tls / "untrusted.pem",
            untrusted_key=tls / "untrusted.key",
        )
        admin = Enrolment(
            accounts=running.accounts,
            directory=running.directory,
            audit=running.audit,
            notifier=notifier,
            settings=cfg.enrolment,
            web=cfg.web,
            patient_domain=cfg.relay.patient_domain,
            site="https://localhost",
            clock=clock,
        )
        yield Web(h=h, notifier=notifier, clock=clock, admin=admin)


@pytest.fixture
async def web(tmp_path: Path, tls_files: TlsFiles) -> AsyncIterator[Web]:
    async for w in _start(web_config(tmp_path, tls_files), tls_files):
        yield w


async def enrol_printed(w: Web) -> str:
    enrolled = await w.admin.enrol(PATIENT_2.ins, Delivery.PRINT)
    assert enrolled.code is not None
    return enrolled.code


async def activate(w: Web, code: str, password: str = NEW_PASSWORD) -> tuple[int, str]:
    fields = {"login": LOGIN, "code": code, "password": password}
    return await asyncio.to_thread(lambda: w.post("/activate", fields))


# -- enrolment and activation ---------------------------------------------------------


async def test_enrolled_patient_activates_over_https_then_logs_in_over_imap(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code = await enrol_printed(web)
    account = web.h.running.accounts.require(LOGIN)
    assert account.kind is AccountKind.PATIENT
    assert account.mailboxes == (LOGIN,)
    assert not await asyncio.to_thread(lambda: web.imap_login(LOGIN, NEW_PASSWORD))

    status, body = await activate(web, code.lower())  # typed in any case
    assert (status, "Compte activé" in body) == (200, True)
    assert await asyncio.to_thread(lambda: web.imap_login(LOGIN, NEW_PASSWORD))
    usage = web.h.running.accounts.usage_of(LOGIN)
    assert usage is not None
    assert usage.activated is not None
    assert usage.last_login is not None  # the IMAP login was noted

    # The code worked once.
    status, _ = await activate(web, code, OTHER_PASSWORD)
    assert status == 400
    events = [r["event"] for r in web.h.audit_events()]
    assert "patient.enrolled" in events
    assert "account.activated" in events
    for secret in (code, normalize_code(code), NEW_PASSWORD, OTHER_PASSWORD):
        assert secret not in web.audit_text()
        assert secret not in caplog.text


async def test_activation_accepts_the_ins_as_login_and_json(web: Web) -> None:
    code = await enrol_printed(web)
    fields = {"login": PATIENT_2.ins, "code": code, "password": NEW_PASSWORD}
    status, body = await asyncio.to_thread(
        lambda: web.post("/activate", fields, as_json=True)
    )
    assert status == 200
    assert json.loads(body) == {
        "status": "Compte activé : connectez-vous avec votre nouveau mot de passe."
    }


async def test_enrolment_by_contact_sends_the_code_to_the_contact_only(
    web: Web,
) -> None:
    enrolled = await web.admin.enrol(PATIENT_2.ins, Delivery.CONTACT)
    assert enrolled.code is None
    assert enrolled.channels == ("email",)
    notice = await web.notifier.wait(1)
    assert notice.kind is NoticeKind.ACTIVATION_CODE
    match = CODE.search(notice.text)
    assert match is not None
    assert match.group() in notice.short
    assert len(notice.short) <= 160
    status, _ = await activate(web, match.group())
    assert status == 200


async def test_weak_password_is_refused_with_the_policy_message_and_the_code_kept(
    web: Web,
) -> None:
    code = await enrol_printed(web)
    status, body = await activate(web, code, "court")
    assert status == 400
    assert "at least 12 characters" in body
    assert "a digit" in body
    status, _ = await activate(web, code)
    assert status == 200


async def test_five_wrong_codes_void_the_activation_code(web: Web) -> None:
    code = await enrol_printed(web)
    wrong = (
        "AAAA-BBBB-CCCC-DDDD"
        if code != "AAAA-BBBB-CCCC-DDDD"
        else "0000-0000-0000-0000"
    )
    for _ in range(5):
        status, body = await activate(web, wrong)
        assert status == 400
        assert "erroné, expiré ou déjà utilisé" in body
    status, _ = await activate(web, code)
    assert status == 400
    reasons = [
        r.get("reason") for r in web.h.audit_events() if r["event"] == "auth.failed"
    ]
    assert reasons.count("code wrong") == 4
    assert "code voided" in reasons
    assert reasons[-1] == "code absent"


async def test_activation_code_expires(web: Web) -> None:
    code = await enrol_printed(web)
    web.clock.offset = timedelta(days=14, minutes=1)
    status, _ = await activate(web, code)
    assert status == 400
    assert any(
        r.get("reason") == "code expired"
        for r in web.h.audit_events()
        if r["event"] == "auth.failed"
    )


async def test_re_enrolment_voids_the_previous_code(web: Web) -> None:
    first = await enrol_printed(web)
    again = await web.admin.enrol(PATIENT_2.ins, Delivery.PRINT)
    assert not again.created
    assert again.code is not None
    assert again.code != first
    assert (await activate(web, first))[0] == 400
    assert (await activate(web, again.code))[0] == 200


async def test_enrolment_refuses_an_activated_account(web: Web) -> None:
    with pytest.raises(AlreadyActivatedError, match="already activated"):
        await web.admin.enrol(PATIENT.ins, Delivery.PRINT)


async def test_enrolment_names_the_missing_field(web: Web) -> None:
    unqualified = dataclasses.replace(PATIENT_2, qualified=False, address=None)
    await web.h.running.directory.replace(unqualified)
    with pytest.raises(NotEnrollableError, match=r"^qualified: "):
        await web.admin.enrol(PATIENT_2.ins, Delivery.PRINT)


async def test_wrong_codes_from_one_address_are_throttled_and_audited(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    cfg = web_config(tmp_path, tls_files, code_failures_per_peer=3)
    async for w in _start(cfg, tls_files):
        code = await enrol_printed(w)
        statuses = [(await activate(w, "0000-0000-0000-000X"))[0] for _ in range(3)]
        assert statuses == [400, 400, 400]
        status, body = await activate(w, code)
        assert status == 429
        assert "trop de tentatives" in body
        locked = [r for r in w.h.audit_events() if r["event"] == "auth.locked"]
        assert locked
        assert locked[-1]["protocol"] == "https"


# -- recovery --------------------------------------------------------------------------


async def activated(w: Web) -> None:
    code = await enrol_printed(w)
    assert (await activate(w, code))[0] == 200


async def test_recovery_by_contact_then_reset_replaces_the_password(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await activated(web)
    status, body = await asyncio.to_thread(
        lambda: web.post("/recover", {"login": LOGIN}, as_json=True)
    )
    assert status == 202
    assert "contact déclaré" in json.loads(body)["status"]
    notice = await web.notifier.wait(1)
    assert notice.kind is NoticeKind.RECOVERY_CODE
    match = CODE.search(notice.text)
    assert match is not None
    fields = {"login": LOGIN, "code": match.group(), "password": OTHER_PASSWORD}
    status, _ = await asyncio.to_thread(
        lambda: web.post("/reset", fields, as_json=True)
    )
    assert status == 200
    assert not await asyncio.to_thread(lambda: web.imap_login(LOGIN, NEW_PASSWORD))
    assert await asyncio.to_thread(lambda: web.imap_login(LOGIN, OTHER_PASSWORD))
    events = [r["event"] for r in web.h.audit_events()]
    assert "account.recovery.requested" in events
    assert "account.recovered" in events
    for secret in (match.group(), NEW_PASSWORD, OTHER_PASSWORD):
        assert secret not in web.audit_text()
        assert secret not in caplog.text


async def test_recover_answers_the_same_for_an_unknown_login(web: Web) -> None:
    await activated(web)
    known = await asyncio.to_thread(lambda: web.post("/recover", {"login": LOGIN}))
    unknown = await asyncio.to_thread(
        lambda: web.post("/recover", {"login": "personne@patient.mssante.example"})
    )
    assert known == unknown
    assert known[0] == 202
    await web.notifier.wait(1)
    await web.admin.close()
    await asyncio.sleep(0.1)
    assert len(web.notifier.sent) == 1


async def test_recovery_requests_are_rate_limited_per_login(web: Web) -> None:
    statuses = [
        (await asyncio.to_thread(lambda: web.post("/recover", {"login": LOGIN})))[0]
        for _ in range(4)
    ]
    assert statuses == [202, 202, 202, 429]
    assert any(
        r["event"] == "auth.locked" and r.get("mechanism") == "recovery-request"
        for r in web.h.audit_events()
    )


async def test_recovery_by_caregiver_lands_in_the_caregiver_inbox(web: Web) -> None:
    await activated(web)
    data_dir = web.h.config.relay.data_dir
    spool = Spool.open(
        data_dir, load_master_key(web.h.config).derive("spool"), clean=False
    )
    sent = await web.admin.recover_via_caregiver(
        PATIENT_2.ins,
        CAREGIVER,
        lambda box, message: generated.spool_generated(
            spool, box, message, web.clock()
        ),
        sender="postmaster@mssante.example",
        hostname="localhost",
        is_local=lambda address: address.endswith(".mssante.example"),
    )
    assert sent.mailbox == CAREGIVER
    assert web.notifier.sent == []

    def read_inbox() -> bytes | None:
        host, port = web.h.address("imaps")
        with imaplib.IMAP4_SSL(
            host, port, ssl_context=web.h.client_context(), timeout=10
        ) as client:
            client.login(CAREGIVER, PASSWORD)
            client.select("INBOX")
            _, found = client.search(None, "ALL")
            uids = found[0].split()
            if not uids:
                client.logout()
                return None
            _, parts = client.fetch(uids[-1], "(BODY.PEEK[])")
            client.logout()
            item = parts[0]
            assert isinstance(item, tuple)
            return item[1]

    # The relay looks at the spool every second.
    raw = None
    for _ in range(50):
        raw = await asyncio.to_thread(read_inbox)
        if raw is not None:
            break
        await asyncio.sleep(0.2)
    assert raw is not None
    text = raw.decode()
    match = CODE.search(text)
    assert match is not None
    assert "Auto-Submitted: auto-generated" in text
    fields = {"login": LOGIN, "code": match.group(), "password": OTHER_PASSWORD}
    status, _ = await asyncio.to_thread(lambda: web.post("/reset", fields))
    assert status == 200
    assert match.group() not in web.audit_text()


async def test_caregiver_without_an_active_grant_is_refused(web: Web) -> None:
    await activated(web)
    with pytest.raises(CaregiverError, match="holds no active proxy grant"):
        await web.admin.recover_via_caregiver(
            PATIENT_2.ins,
            "zoe.moreau@medecin.mssante.fr",
            lambda box, message: "never",
            sender="postmaster@mssante.example",
            hostname="localhost",
            is_local=lambda address: True,
        )


async def test_get_shows_a_plain_html_form(web: Web) -> None:
    for path in ("/activate", "/recover", "/reset"):
        status, body = await asyncio.to_thread(web.get, path)
        assert status == 200
        assert f'<form method="post" action="{path}">' in body
        assert "<script" not in body


# -- last use and the inactive report --------------------------------------------------


def test_last_login_is_written_at_most_once_a_day(tmp_path: Path) -> None:
    now = [datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()]
    store = AccountStore(tmp_path / "a.sqlite3", wall_clock=lambda: now[0])
    try:
        store.create("p@patient.mssante.example", AccountKind.PATIENT, None)
        assert store.usage_of("p@patient.mssante.example").last_login is None  # type: ignore[union-attr]
        store.record_login("p@patient.mssante.example")
        first = now[0]
        assert store.login_recorded_today("p@patient.mssante.example")
        now[0] += 3600
        store.record_login("p@patient.mssante.example")
        usage = store.usage_of("p@patient.mssante.example")
        assert usage is not None
        assert usage.last_login == first
        now[0] += 86_400
        assert not store.login_recorded_today("p@patient.mssante.example")
        store.record_login("p@patient.mssante.example")
        usage = store.usage_of("p@patient.mssante.example")
        assert usage is not None
        assert usage.last_login == now[0]
    finally:
        store.close()


def test_inactive_report_lists_never_activated_never_used_and_unused(
    tmp_path: Path,
) -> None:
    t0 = datetime(2025, 1, 10, 8, 0, tzinfo=UTC)
    now = [t0.timestamp()]
    store = AccountStore(tmp_path / "a.sqlite3", wall_clock=lambda: now[0])
    try:
        for name in ("jamais", "active", "muette", "ancienne", "recente"):
            store.create(f"{name}@patient.x", AccountKind.PATIENT, None)
        store.create("medecin@x", AccountKind.PRACTITIONER, PASSWORD)
        for name in ("active", "muette", "ancienne", "recente"):
            issued = store.issue_code(
                f"{name}@patient.x", CodePurpose.ACTIVATION, expires=now[0] + 60
            )
            result = store.redeem_code(
                f"{name}@patient.x",
                CodePurpose.ACTIVATION,
                issued.code,
                NEW_PASSWORD,
                now=now[0],
            )
            assert result is CodeResult.REDEEMED
        store.record_login("ancienne@patient.x")
        now[0] += 200 * 86_400
        store.record_login("active@patient.x")
        store.record_login("recente@patient.x")
        later = t0 + timedelta(days=400)
        found = inactive_accounts(store.usage(AccountKind.PATIENT), now=later, days=365)
        assert {i.login: i.state for i in found} == {
            "jamais@patient.x": InactiveState.NEVER_ACTIVATED,
            "muette@patient.x": InactiveState.NEVER_USED,
            "ancienne@patient.x": InactiveState.UNUSED,
        }
        [old] = [i for i in found if i.login == "ancienne@patient.x"]
        assert old.last_login == t0
        assert old.activated == t0
    finally:
        store.close()


def test_a_weak_password_counts_no_wrong_try(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "a.sqlite3")
    try:
        store.create("zq@patient.x", AccountKind.PATIENT, None)
        issued = store.issue_code("zq@patient.x", CodePurpose.RECOVERY, expires=2e9)
        for _ in range(6):
            with pytest.raises(WeakPasswordError):
                store.redeem_code(
                    "zq@patient.x", CodePurpose.RECOVERY, "x", "weak", now=1e9
                )
        assert store.code_expiry("zq@patient.x", CodePurpose.RECOVERY) == 2e9
        assert (
            store.redeem_code(
                "zq@patient.x", CodePurpose.RECOVERY, issued.code, NEW_PASSWORD, now=1e9
            )
            is CodeResult.REDEEMED
        )
    finally:
        store.close()


def test_codes_are_crockford_base32_in_groups_and_read_leniently() -> None:
    code = "ABCD-EFGH-JKMN-PQRS"
    notice = texts.activation_code(code, valid_for=14 * 86400, url="https://x/activate")
    assert code in notice.text
    assert "https://x/activate" in notice.text
    recovery = texts.recovery_code(code, valid_for=86400, url="https://x/reset")
    assert texts.gsm7_septets(recovery.short) <= texts.SMS_MAX_SEPTETS
    assert normalize_code(" abcd efgh-ijkl-mnop ") == "ABCDEFGH1JK1MN0P"


async def test_without_a_contact_channel_enrolment_by_contact_fails_and_voids_the_code(
    web: Web,
) -> None:
    service = Enrolment(
        accounts=web.h.running.accounts,
        directory=web.h.running.directory,
        audit=web.h.running.audit,
        notifier=notifier_for(web.h.config),
        settings=web.h.config.enrolment,
        web=web.h.config.web,
        patient_domain="patient.mssante.example",
        site="https://localhost",
    )
    with pytest.raises(NoticeFailedError, match=r"^contact: "):
        await service.enrol(PATIENT_2.ins, Delivery.CONTACT)
    assert web.h.running.accounts.code_expiry(LOGIN, CodePurpose.ACTIVATION) is None


def test_web_and_enrolment_tables_are_validated(tmp_path: Path) -> None:
    from relay.config import ConfigError, parse

    base = {"relay": {"data_dir": "d", "domain": "mssante.example"}}
    cfg = parse({**base, "web": {"port": 8443}}, tmp_path)
    assert cfg.web.listener.enabled
    assert cfg.enrolment.activation_code_days == 14.0
    assert not parse(base, tmp_path).web.listener.enabled
    with pytest.raises(ConfigError, match=r"^web\.public_url: "):
        parse({**base, "web": {"public_url": "http://x"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^enrolment\.max_code_failures: "):
        parse({**base, "enrolment": {"max_code_failures": 0}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^enrolment\.recovery_code_hours: "):
        parse({**base, "enrolment": {"recovery_code_hours": 0}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^web\.colour: unknown key"):
        parse({**base, "web": {"colour": "blue"}}, tmp_path)
