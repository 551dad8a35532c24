"""The patient's self-service over HTTPS, end to end (issue 10).

A real relay on loopback serves ``/compte`` on its ``[web]`` listener with
the test CA's certificate; the tests are a browser made of stdlib
``urllib.request`` and an ``http.cookiejar`` (HTML forms, the CSRF token
read from the page) or an app (JSON). What a change does is checked where
it matters: a professional's SMTP submission, a proxy's IMAP session, the
consent ledger, the audit trail. The relay's clock is moved by the tests to
expire sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import http.cookiejar
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

from directory.config import Backend, DirectoryConfig
from directory.devpki import make_server_pki
from directory.model import ConsentAction, ProxyScope
from directory.slapd import Slapd
from relay.accounts import AccountKind
from relay.app import run_relay
from relay.selfservice import SESSION_IDLE, SESSION_MAX
from tests.directory import samples
from tests.relay.test_smtp import message
from tests.support.clock import MovingClock as Clock
from tests.support.relay_fixtures import (
    DOCTOR,
    PASSWORD,
    PATIENT,
    URGENCES,
    Harness,
    TlsFiles,
    patient_address,
    relay_config,
    seed_data_dir,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.support.ldap_fixtures import SlapdServer

PATIENT_ADDR = patient_address(PATIENT)
UNKNOWN_ADDR = "123456789012345@patient.mssante.example"
ORGANISATION = samples.organisation()  # CENTRE HOSPITALIER PARIS 1, 1 + FINESS_1
UNLISTED = samples.mailbox(
    "discret@medecin.mssante.fr", display_name="DR DISCRET Jean", published=False
)
PROXY = "aidant-1"
ABSENT_STRUCTURE = "1750000002"  # a valid FINESS nobody registered
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Answer:
    status: int
    body: str
    headers: list[tuple[str, str]]

    def json(self) -> Any:  # noqa: ANN401 - a JSON document
        return json.loads(self.body)

    def csrf(self) -> str:
        found = CSRF.search(self.body)
        assert found is not None, self.body
        return found.group(1)


class Browser:
    """One user agent: its own cookie jar, TLS checked against the test CA."""

    def __init__(self, h: Harness) -> None:
        _, self.port = h.address("web")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=h.client_context()),
            urllib.request.HTTPCookieProcessor(self.jar),
        )

    def request(
        self,
        path: str,
        fields: dict[str, str] | None = None,
        *,
        as_json: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """GET (no fields) or POST ``fields``, form-encoded or JSON."""
        data = None
        sent = dict(headers or {})
        if as_json:
            sent["Accept"] = "application/json"
        if fields is not None:
            if as_json:
                data = json.dumps(fields).encode()
                sent["Content-Type"] = "application/json"
            else:
                data = urllib.parse.urlencode(fields).encode()
                sent["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.port}{path}", data=data, headers=sent
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return Answer(
                    response.status, response.read().decode(), response.getheaders()
                )
        except urllib.error.HTTPError as error:
            with error:
                return Answer(
                    error.code, error.read().decode(), list(error.headers.items())
                )

    def sign_in(self, login: str = PATIENT_ADDR, password: str = PASSWORD) -> Answer:
        """The sign-in form, as a person fills it: the page, then the post."""
        page = self.request("/compte")
        return self.request(
            "/compte/connexion",
            {"login": login, "password": password, "csrf": page.csrf()},
        )

    def act(self, action: str, **fields: str) -> Answer:
        """A form of the signed-in page, with the page's CSRF token."""
        token = self.request("/compte").csrf()
        return self.request(f"/compte/{action}", {"csrf": token, **fields})


@dataclass
class Site:
    h: Harness
    clock: Clock

    def browser(self) -> Browser:
        return Browser(self.h)

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - test helper
        return await asyncio.to_thread(fn, *args, **kwargs)

    def rcpt(self, to: str, login: str = DOCTOR.address) -> tuple[int, bytes]:
        with self.h.submission(login=login) as client:
            client.mail(login)
            return client.rcpt(to)

    def imap_select(self, login: str, mailbox: str) -> tuple[str, int]:
        """SELECT (read-only) as ``login``: the answer and the message count."""
        host, port = self.h.address("imaps")
        with imaplib.IMAP4_SSL(
            host, port, ssl_context=self.h.client_context(), timeout=10
        ) as client:
            client.login(login, PASSWORD)
            status, data = client.select(mailbox, readonly=True)
            count = int(data[0]) if status == "OK" and data[0] else 0
            client.logout()
            return status, count

    def imap_login(self, login: str, password: str) -> bool:
        return self.h.imap_login(login, password)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.h.audit_events() if e["event"] == name]


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, tls_files: TlsFiles, directory: DirectoryConfig | None = None
) -> AsyncIterator[Site]:
    """The test relay with ``[web]`` on an ephemeral port, its clock movable."""
    cfg = relay_config(
        tmp_path,
        tls_files.directory,
        directory,
        extra={"web": {"host": "127.0.0.1", "port": 0}},
    )
    await seed_data_dir(cfg, tls_files)
    clock = Clock()
    async with run_relay(cfg, drain_timeout=5, clock=clock) as running:
        await running.directory.add(ORGANISATION)
        await running.directory.add(UNLISTED)
        running.accounts.create(PROXY, AccountKind.PROXY, PASSWORD)
        tls = tls_files.directory
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
        yield Site(h, clock)


@pytest.fixture
async def site(tmp_path: Path, tls_files: TlsFiles) -> AsyncIterator[Site]:
    async with serving(tmp_path, tls_files) as s:
        yield s


async def _history(site: Site) -> list[tuple[str, ConsentAction]]:
    records = await site.h.running.directory.consent_history(PATIENT.ins)
    return [(r.actor, r.action) for r in records]


# -- sign-in --------------------------------------------------------------------------


async def test_patient_signs_in_and_sees_the_state_of_their_mailbox(
    site: Site,
) -> None:
    b = site.browser()
    first = await site.run(b.request, "/compte")
    assert first.status == 200
    assert 'name="password"' in first.body
    page = await site.run(b.sign_in)
    assert page.status == 200  # after the 303 to /compte
    assert "Votre messagerie est <strong>ouverte</strong>" in page.body
    assert PATIENT_ADDR in page.body
    assert 'action="/compte/fermer"' in page.body
    [ok] = [e for e in site.events("auth.succeeded") if e.get("protocol") == "https"]
    assert (ok["actor"], ok["mechanism"]) == (PATIENT_ADDR, "form")
    # Signing out ends the session on the server, not only in the browser.
    [cookie] = [c for c in b.jar if c.name == "__Host-mss-session"]
    out = await site.run(b.act, "deconnexion")
    assert out.status == 200
    assert 'name="password"' in out.body
    stolen = site.browser()
    stolen.jar.set_cookie(cookie)
    again = await site.run(stolen.request, "/compte", as_json=True)
    assert again.status == 401


async def test_session_cookie_is_secure_httponly_samesite_strict(site: Site) -> None:
    b = site.browser()
    answer = await site.run(
        lambda: b.request(
            "/compte/connexion",
            {"login": PATIENT_ADDR, "password": PASSWORD},
            as_json=True,
        )
    )
    assert answer.status == 200
    [cookie] = [
        v for k, v in answer.headers if k == "Set-Cookie" and "mss-session" in v
    ]
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= attributes
    assert not any(a.startswith(("domain", "max-age", "expires")) for a in attributes)
    headers = dict(answer.headers)
    assert headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in headers["Content-Security-Policy"]


async def test_sign_in_form_without_its_csrf_token_is_refused(site: Site) -> None:
    b = site.browser()
    answer = await site.run(
        lambda: b.request(
            "/compte/connexion", {"login": PATIENT_ADDR, "password": PASSWORD}
        )
    )
    assert answer.status == 403
    assert site.events("auth.succeeded") == []


async def test_professional_staff_and_proxy_accounts_cannot_sign_in(
    site: Site,
) -> None:
    wrong = await site.run(lambda: site.browser().sign_in(PATIENT_ADDR, "wrong-pw-1!"))
    assert wrong.status == 401
    refusal = re.sub(r'value="[^"]+"', "", wrong.body)
    for login in (DOCTOR.address, "secretaire-1", PROXY):
        answer = await site.run(lambda login=login: site.browser().sign_in(login))
        assert answer.status == 401
        assert re.sub(r'value="[^"]+"', "", answer.body) == refusal
    reasons = {e["actor"]: e["reason"] for e in site.events("auth.failed")}
    assert reasons[DOCTOR.address] == "practitioner account may not sign in here"
    assert reasons["secretaire-1"] == "staff account may not sign in here"
    assert reasons[PROXY] == "proxy account may not sign in here"
    assert all(e["protocol"] == "https" for e in site.events("auth.failed"))


async def test_locked_patient_account_cannot_sign_in_and_loses_its_session(
    site: Site,
) -> None:
    b = site.browser()
    assert "ouverte" in (await site.run(b.sign_in)).body
    site.h.running.accounts.set_locked(PATIENT_ADDR, True)
    assert (await site.run(b.request, "/compte")).body.count('name="password"') == 1
    assert (await site.run(lambda: site.browser().sign_in())).status == 401


async def test_wrong_passwords_lock_the_login_as_imap_does(site: Site) -> None:
    b = site.browser()
    # [auth] max_failures = 3 in the test config, shared with SMTP and IMAP.
    for _ in range(3):
        answer = await site.run(lambda: b.sign_in(PATIENT_ADDR, "Wrong-pw-1!"))
        assert answer.status == 401
    locked = await site.run(b.sign_in)  # the right password, too late
    assert locked.status == 429
    assert int(dict(locked.headers)["Retry-After"]) > 0
    assert not await site.run(lambda: site.imap_login(PATIENT_ADDR, PASSWORD))
    failed = [e for e in site.events("auth.failed") if e["protocol"] == "https"]
    assert len(failed) == 3
    assert any(e["protocol"] == "https" for e in site.events("auth.locked"))


async def test_session_ends_after_idle_minutes_and_after_hours(site: Site) -> None:
    b = site.browser()
    await site.run(b.sign_in)
    # Each request restarts the idle time...
    for _ in range(3):
        site.clock.offset += SESSION_IDLE - timedelta(minutes=1)
        assert (await site.run(b.request, "/compte", as_json=True)).status == 200
    # ... until a request comes too late.
    site.clock.offset += SESSION_IDLE
    expired = await site.run(b.request, "/compte")
    assert 'name="password"' in expired.body
    assert (await site.run(b.request, "/compte", as_json=True)).status == 401
    # A busy session still ends after SESSION_MAX.
    await site.run(b.sign_in)
    started = site.clock.offset
    while site.clock.offset - started < SESSION_MAX - SESSION_IDLE:
        site.clock.offset += timedelta(minutes=10)
        assert (await site.run(b.request, "/compte", as_json=True)).status == 200
    site.clock.offset = started + SESSION_MAX
    assert (await site.run(b.request, "/compte", as_json=True)).status == 401


# -- actions ----------------------------------------------------------------------------


async def test_closing_the_mailbox_makes_it_look_unknown_then_reopening_restores(
    site: Site,
) -> None:
    b = site.browser()
    await site.run(b.sign_in)
    unknown = await site.run(lambda: site.rcpt(UNKNOWN_ADDR))
    closed = await site.run(b.act, "fermer")
    assert closed.status == 200
    assert "Votre messagerie est <strong>fermée</strong>" in closed.body
    assert "Votre messagerie est fermée : les nouveaux messages" in closed.body
    assert await site.run(lambda: site.rcpt(PATIENT_ADDR)) == unknown
    assert unknown[0] == 550
    reopened = await site.run(b.act, "rouvrir")
    assert "Votre messagerie est <strong>ouverte</strong>" in reopened.body
    assert (await site.run(lambda: site.rcpt(PATIENT_ADDR)))[0] == 250
    # The ledger and the trail say that the patient did it.
    assert await _history(site) == [
        (PATIENT_ADDR, ConsentAction.OPT_OUT),
        (PATIENT_ADDR, ConsentAction.OPT_IN),
    ]
    changes = site.events("patient.consent.changed")
    assert [(e["actor"], e["action"], e["protocol"]) for e in changes] == [
        (PATIENT_ADDR, "opt-out", "https"),
        (PATIENT_ADDR, "opt-in", "https"),
    ]
    assert "vous" in reopened.body  # the history, on the page


async def test_blocking_an_organisation_refuses_its_mail_until_unblocked(
    site: Site,
) -> None:
    b = site.browser()
    await site.run(b.sign_in)
    structure = ORGANISATION.structure_id
    page = await site.run(lambda: b.act("bloquer", party=structure))
    assert page.status == 200
    assert "CENTRE HOSPITALIER PARIS 1" in page.body  # named from the directory
    # Its own mailbox and the doctor working there get the unknown reply.
    for login in (URGENCES.address, DOCTOR.address):
        refused = await site.run(lambda login=login: site.rcpt(PATIENT_ADDR, login))
        unknown = await site.run(lambda login=login: site.rcpt(UNKNOWN_ADDR, login))
        assert refused == unknown
    reasons = {e["reason"] for e in site.events("smtp.recipient.rejected")}
    assert "patient blocked the sender" in reasons
    await site.run(lambda: b.act("debloquer", party=structure))
    assert (await site.run(lambda: site.rcpt(PATIENT_ADDR)))[0] == 250
    assert [a for _, a in await _history(site)] == [
        ConsentAction.BLOCK,
        ConsentAction.UNBLOCK,
    ]


async def test_block_errors_name_the_field_and_change_nothing(site: Site) -> None:
    b = site.browser()
    await site.run(b.sign_in)
    bad = await site.run(lambda: b.act("bloquer", party="pas un identifiant"))
    assert bad.status == 400
    assert "expéditeur : une adresse de messagerie" in bad.body
    absent = await site.run(lambda: b.act("bloquer", party=ABSENT_STRUCTURE))
    assert absent.status == 400
    assert "aucun(e) structure" in absent.body
    not_blocked = await site.run(lambda: b.act("debloquer", party=DOCTOR.address))
    assert not_blocked.status == 400
    assert "n'est pas bloqué" in html.unescape(not_blocked.body)
    assert await _history(site) == []


async def test_granted_proxy_reads_the_inbox_over_imap_until_revoked(
    site: Site,
) -> None:
    h = site.h

    def send() -> object:
        with h.submission() as client:
            return client.sendmail(
                DOCTOR.address, [PATIENT_ADDR], message(DOCTOR.address, PATIENT_ADDR)
            )

    assert await site.run(send) == {}
    await h.delivered()
    shared = f"Shared/{PATIENT_ADDR}/INBOX"
    assert (await site.run(lambda: site.imap_select(PROXY, shared)))[0] == "NO"
    b = site.browser()
    await site.run(b.sign_in)
    until = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    page = await site.run(
        lambda: b.act("aidant", account=PROXY, scope="read", until=until)
    )
    assert page.status == 200
    assert PROXY in page.body
    assert "lecture" in page.body
    assert await site.run(lambda: site.imap_select(PROXY, shared)) == ("OK", 1)
    await site.run(lambda: b.act("aidant/retirer", account=PROXY))
    assert (await site.run(lambda: site.imap_select(PROXY, shared)))[0] == "NO"
    records = await h.running.directory.consent_history(PATIENT.ins)
    assert [(r.actor, r.action) for r in records] == [
        (PATIENT_ADDR, ConsentAction.PROXY_GRANTED),
        (PATIENT_ADDR, ConsentAction.PROXY_REVOKED),
    ]
    assert records[0].details["scope"] == ProxyScope.READ.value
    assert records[0].details["until"]  # never open-ended from here


@pytest.mark.parametrize(
    ("fields", "field_name", "text"),
    [
        ({"account": PROXY, "scope": "read"}, "until", "fin : obligatoire"),
        ({"account": PROXY, "scope": "read", "until": "demain"}, "until", "AAAA-MM-JJ"),
        ({"account": PROXY, "scope": "read", "until": "2001-01-01"}, "until", "passée"),
        (
            {"account": PROXY, "scope": "read", "until": "+400"},
            "until",
            "au plus un an",
        ),
        ({"account": PROXY, "scope": "tout", "until": "+30"}, "scope", "portée"),
        (
            {"account": DOCTOR.address, "scope": "read", "until": "+30"},
            "account",
            "compte",
        ),
        ({"account": "personne", "scope": "read", "until": "+30"}, "account", "compte"),
    ],
)
async def test_proxy_grant_errors_name_the_field(
    site: Site, fields: dict[str, str], field_name: str, text: str
) -> None:
    if fields.get("until", "").startswith("+"):
        days = int(fields["until"][1:])
        fields = {
            **fields,
            "until": (datetime.now(UTC) + timedelta(days=days)).date().isoformat(),
        }
    b = site.browser()
    signed = await site.run(
        lambda: b.request(
            "/compte/connexion",
            {"login": PATIENT_ADDR, "password": PASSWORD},
            as_json=True,
        )
    )
    token = signed.json()["csrf"]
    answer = await site.run(
        lambda: b.request(
            "/compte/aidant", fields, as_json=True, headers={"X-CSRF-Token": token}
        )
    )
    assert answer.status == 400
    assert answer.json()["field"] == field_name
    assert text in answer.json()["error"]
    assert await _history(site) == []


async def test_action_without_csrf_token_is_refused_and_changes_nothing(
    site: Site,
) -> None:
    b = site.browser()
    await site.run(b.sign_in)
    missing = await site.run(lambda: b.request("/compte/fermer", {}))
    assert missing.status == 403
    forged = await site.run(lambda: b.request("/compte/fermer", {"csrf": "x" * 43}))
    assert forged.status == 403
    app = await site.run(
        lambda: b.request("/compte/bloquer", {"party": DOCTOR.address}, as_json=True)
    )
    assert app.status == 403
    assert "jeton" in app.json()["error"]
    assert await _history(site) == []
    entry = await site.h.running.directory.patient(PATIENT.ins)
    assert entry is not None
    assert not entry.opted_out
    assert entry.blocked_senders == ()


async def test_action_without_session_is_refused(site: Site) -> None:
    b = site.browser()
    page = await site.run(b.request, "/compte")
    answer = await site.run(lambda: b.request("/compte/fermer", {"csrf": page.csrf()}))
    assert answer.status == 401
    assert await _history(site) == []


async def test_contact_and_treating_doctor(site: Site) -> None:
    b = site.browser()
    await site.run(b.sign_in)
    page = await site.run(
        lambda: b.act("contact", email="marie@example.org", phone="+33612345678")
    )
    assert page.status == 200
    assert 'value="marie@example.org"' in page.body
    bad = await site.run(lambda: b.act("contact", email="", phone="12"))
    assert bad.status == 400
    assert "téléphone : numéro invalide" in bad.body
    not_doctor = await site.run(
        lambda: b.act("medecin-traitant", doctor=URGENCES.address)
    )
    assert not_doctor.status == 400
    assert "médecin traitant : aucune messagerie" in not_doctor.body
    page = await site.run(lambda: b.act("medecin-traitant", doctor=DOCTOR.address))
    assert "DR MOREAU Zoé" in page.body
    entry = await site.h.running.directory.patient(PATIENT.ins)
    assert entry is not None
    assert entry.contact_email == "marie@example.org"
    assert [r.party for r in entry.care_relationships] == [DOCTOR.address]
    records = await site.h.running.directory.consent_history(PATIENT.ins)
    assert [r.action for r in records] == [
        ConsentAction.CONTACT_CHANGED,
        ConsentAction.TREATING_DOCTOR_SET,
    ]
    # The ledger and the trail say which contact changed, never the value.
    assert records[0].details == {"email": "set", "phone": "set"}
    assert "marie@example.org" not in site.h.running.audit.path.read_text()


async def test_search_finds_published_entries_only(site: Site) -> None:
    b = site.browser()
    await site.run(b.sign_in)
    found = await site.run(
        lambda: b.request("/compte/recherche?q=urgences", as_json=True)
    )
    assert {
        "party": URGENCES.address,
        "kind": "mailbox",
        "name": URGENCES.display_name,
    } in found.json()["results"]
    hospital = await site.run(b.request, "/compte/recherche?q=hospitalier")
    assert ORGANISATION.structure_id in hospital.body
    assert 'action="/compte/bloquer"' in hospital.body
    hidden = await site.run(
        lambda: b.request("/compte/recherche?q=discret", as_json=True)
    )
    assert hidden.json()["results"] == []
    short = await site.run(lambda: b.request("/compte/recherche?q=ur", as_json=True))
    assert (short.status, short.json()["field"]) == (400, "q")
    # An unlisted mailbox may still be blocked by its address; no name shown.
    page = await site.run(lambda: b.act("bloquer", party=UNLISTED.address))
    assert page.status == 200
    assert "DISCRET" not in page.body


async def test_activity_report_lands_in_the_inbox(site: Site) -> None:
    b = site.browser()
    await site.run(b.sign_in)
    page = await site.run(b.act, "releve")
    assert page.status == 200
    assert "du mois a été déposé dans votre boîte de réception" in page.body
    [report] = site.h.messages(PATIENT_ADDR)
    assert b"Auto-Submitted: auto-generated" in report
    [sent] = site.events("patient.report.sent")
    assert (sent["actor"], sent["trigger"]) == (PATIENT_ADDR, "on-demand")
    again = await site.run(b.act, "releve")
    assert again.status == 429
    assert len(site.h.messages(PATIENT_ADDR)) == 1


async def test_json_variant_for_apps(site: Site) -> None:
    b = site.browser()
    signed = await site.run(
        lambda: b.request(
            "/compte/connexion",
            {"login": PATIENT_ADDR, "password": PASSWORD},
            as_json=True,
        )
    )
    token = signed.json()["csrf"]
    csrf = {"X-CSRF-Token": token}
    state = (await site.run(b.request, "/compte", as_json=True)).json()
    assert state["open"] is True
    assert state["csrf"] == token
    assert (state["address"], state["blocked"], state["history"]) == (
        PATIENT_ADDR,
        [],
        [],
    )
    done = await site.run(
        lambda: b.request(
            "/compte/bloquer", {"party": DOCTOR.address}, as_json=True, headers=csrf
        )
    )
    assert done.json() == {"status": "Expéditeur bloqué.", "changed": True}
    same = await site.run(
        lambda: b.request(
            "/compte/bloquer", {"party": DOCTOR.address}, as_json=True, headers=csrf
        )
    )
    assert same.json()["changed"] is False
    bad = await site.run(
        lambda: b.request("/compte/bloquer", {"party": "x"}, as_json=True, headers=csrf)
    )
    assert bad.status == 400
    assert bad.json()["field"] == "party"
    state = (await site.run(b.request, "/compte", as_json=True)).json()
    assert state["blocked"] == [
        {"party": DOCTOR.address, "kind": "mailbox", "name": DOCTOR.display_name}
    ]
    [record] = state["history"]
    assert (record["by"], record["action"]) == ("patient", "block")
    out = await site.run(
        lambda: b.request("/compte/deconnexion", {}, as_json=True, headers=csrf)
    )
    assert out.status == 200
    assert (await site.run(b.request, "/compte", as_json=True)).status == 401


async def test_no_password_nor_token_reaches_logs_or_audit(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    b = site.browser()
    await site.run(lambda: b.sign_in(PATIENT_ADDR, "Faux-mot-2-passe!"))
    page = await site.run(b.sign_in)
    csrf = page.csrf()
    await site.run(b.act, "fermer")
    [session] = [c.value for c in b.jar if c.name == "__Host-mss-session"]
    assert session
    trail = site.h.running.audit.path.read_text(encoding="utf-8")
    for secret in (PASSWORD, "Faux-mot-2-passe!", session, csrf):
        assert secret not in trail
        assert secret not in caplog.text


async def test_app_password_opens_imap_but_not_the_account_pages(site: Site) -> None:
    secret = site.h.running.accounts.add_app_password(PATIENT_ADDR, "telephone")
    assert await site.run(lambda: site.imap_login(PATIENT_ADDR, secret))
    answer = await site.run(lambda: site.browser().sign_in(PATIENT_ADDR, secret))
    assert answer.status == 401
    [failed] = [e for e in site.events("auth.failed") if e["protocol"] == "https"]
    assert failed["reason"] == "app password not accepted for the web"


@pytest.mark.slapd
async def test_ldap_directory_records_the_patient_and_an_outage_is_a_503(
    tmp_path: Path,
    tls_files: TlsFiles,
    slapd: SlapdServer,  # skips without slapd locally, fails in CI
) -> None:
    pki = make_server_pki(tmp_path / "ldap-pki")
    server = Slapd.start(
        tmp_path / "slapd",
        tls_cert=pki.cert_file,
        tls_key=pki.key_file,
        ca_file=pki.ca_file,
    )
    try:
        ldap = server.relay_config(pki.ca_file, "self-service-password", timeout=2.0)
        directory = DirectoryConfig(backend=Backend.LDAP, ldap=ldap)
        async with serving(tmp_path, tls_files, directory) as s:
            b = s.browser()
            signed = await s.run(
                lambda: b.request(
                    "/compte/connexion",
                    {"login": PATIENT_ADDR, "password": PASSWORD},
                    as_json=True,
                )
            )
            csrf = {"X-CSRF-Token": signed.json()["csrf"]}
            closed = await s.run(
                lambda: b.request("/compte/fermer", {}, as_json=True, headers=csrf)
            )
            assert closed.json()["changed"] is True
            assert await _history(s) == [(PATIENT_ADDR, ConsentAction.OPT_OUT)]
            server.stop()
            down = await s.run(
                lambda: b.request("/compte/rouvrir", {}, as_json=True, headers=csrf)
            )
            assert down.status == 503
            assert "annuaire" in down.json()["error"]
            page = await s.run(b.request, "/compte")
            assert page.status == 503
            assert [e["action"] for e in s.events("patient.consent.changed")] == [
                "opt-out"
            ]
    finally:
        server.stop()
