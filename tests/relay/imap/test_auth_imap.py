"""IMAP AUTHENTICATE end to end: OAUTHBEARER, XOAUTH2, EXTERNAL, app passwords.

``imaplib`` (no SASL-IR: the payload follows the ``+``) and ``curl
--oauth2-bearer`` drive the real relay on loopback.
"""

from __future__ import annotations

import base64
import imaplib
import json
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.relay.test_auth_issuer import (
    APP_LOGIN,
    AuthRelay,
    app_tls,
    auth_relay,
    issuer,
    oauthbearer,
    production_relay,
    xoauth2,
)
from tests.support.relay_fixtures import DOCTOR, PASSWORD

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["app_tls", "auth_relay", "issuer", "production_relay"]


def _imaps(
    r: AuthRelay, cert: Path | None = None, key: Path | None = None
) -> imaplib.IMAP4_SSL:
    host, port = r.harness.address("imaps")
    ctx = r.harness.client_context(cert, key)
    return imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=10)


def _token(r: AuthRelay, **kwargs: object) -> str:
    account = r.harness.running.accounts.require(DOCTOR.address)
    assert account.external_id is not None
    kwargs.setdefault("key", "ec")
    return r.issuer.token(account.external_id, now=time.time(), **kwargs)  # type: ignore[arg-type]


def _events(r: AuthRelay, name: str) -> list[dict[str, object]]:
    return [e for e in r.harness.audit_events() if e["event"] == name]


async def test_capabilities_after_tls_list_every_mechanism(
    auth_relay: AuthRelay,
) -> None:
    def caps() -> tuple[str, ...]:
        client = _imaps(auth_relay)
        try:
            return tuple(client.capabilities)
        finally:
            client.logout()

    found = await auth_relay.harness.run(caps)
    for name in ("AUTH=PLAIN", "AUTH=OAUTHBEARER", "AUTH=XOAUTH2", "AUTH=EXTERNAL"):
        assert name in found
    assert "LOGINDISABLED" not in found


async def test_authenticate_oauthbearer_with_a_good_token_selects_the_inbox(
    auth_relay: AuthRelay,
) -> None:
    payload = oauthbearer(_token(auth_relay), DOCTOR.address)

    def session() -> tuple[str, str]:
        client = _imaps(auth_relay)
        try:
            typ, _ = client.authenticate("OAUTHBEARER", lambda _: payload)
            return typ, client.select("INBOX")[0]
        finally:
            client.logout()

    assert await auth_relay.harness.run(session) == ("OK", "OK")
    ok = _events(auth_relay, "auth.succeeded")[-1]
    assert (ok["protocol"], ok["mechanism"]) == ("imap", "OAUTHBEARER")


async def test_authenticate_xoauth2_with_a_good_token(auth_relay: AuthRelay) -> None:
    payload = xoauth2(_token(auth_relay), DOCTOR.address)

    def session() -> str:
        client = _imaps(auth_relay)
        try:
            return client.authenticate("XOAUTH2", lambda _: payload)[0]
        finally:
            client.logout()

    assert await auth_relay.harness.run(session) == "OK"


@pytest.mark.parametrize(
    "kwargs",
    [{"lifetime": -400}, {"aud": "another-service"}, {"key": "rogue"}],
    ids=["expired", "wrong-audience", "wrong-key"],
)
async def test_refused_token_gets_the_error_continuation_then_no(
    auth_relay: AuthRelay, kwargs: dict[str, object]
) -> None:
    payload = oauthbearer(_token(auth_relay, **kwargs))
    challenges: list[bytes] = []

    def answer(challenge: bytes) -> bytes:
        challenges.append(challenge)
        return payload if len(challenges) == 1 else b"\x01"

    def attempt() -> str:
        client = _imaps(auth_relay)
        try:
            client.authenticate("OAUTHBEARER", answer)
        except imaplib.IMAP4.error as exc:
            return repr(exc.args)
        finally:
            client.logout()
        return ""

    error = await auth_relay.harness.run(attempt)
    assert "AUTHENTICATIONFAILED" in error
    assert json.loads(challenges[1])["status"] == "invalid_token"
    assert _events(auth_relay, "auth.failed")[-1]["protocol"] == "imap"


async def test_no_mechanism_works_before_tls(auth_relay: AuthRelay) -> None:
    payload = oauthbearer(_token(auth_relay))

    def attempt() -> list[str]:
        host, port = auth_relay.harness.address("imap")
        out = []
        for mechanism in ("OAUTHBEARER", "XOAUTH2", "EXTERNAL", "PLAIN"):
            client = imaplib.IMAP4(host, port, timeout=10)
            try:
                assert f"AUTH={mechanism}" not in client.capabilities
                client.authenticate(mechanism, lambda _: payload)
            except imaplib.IMAP4.error as exc:
                out.append(repr(exc.args))
            finally:
                client.logout()
        return out

    errors = await auth_relay.harness.run(attempt)
    assert len(errors) == 4
    assert all("PRIVACYREQUIRED" in e for e in errors)


async def test_external_with_the_app_certificate_logs_in(auth_relay: AuthRelay) -> None:
    def session() -> str:
        client = _imaps(auth_relay, auth_relay.app_cert, auth_relay.app_key)
        try:
            return client.authenticate("EXTERNAL", lambda _: b"")[0]
        finally:
            client.logout()

    assert await auth_relay.harness.run(session) == "OK"
    assert _events(auth_relay, "imap.login.succeeded")[-1]["actor"] == APP_LOGIN


async def test_external_without_certificate_is_refused(auth_relay: AuthRelay) -> None:
    def attempt() -> str:
        client = _imaps(auth_relay)
        try:
            client.authenticate("EXTERNAL", lambda _: b"")
        except imaplib.IMAP4.error as exc:
            return repr(exc.args)
        finally:
            client.logout()
        return ""

    assert "AUTHENTICATIONFAILED" in await auth_relay.harness.run(attempt)


async def test_app_password_logs_in_and_stops_when_revoked(
    auth_relay: AuthRelay,
) -> None:
    accounts = auth_relay.harness.running.accounts
    secret = accounts.add_app_password(DOCTOR.address, "mutt")

    def login() -> str:
        client = _imaps(auth_relay)
        try:
            return client.login(DOCTOR.address, secret)[0]
        except imaplib.IMAP4.error as exc:
            return repr(exc.args)
        finally:
            client.logout()

    assert await auth_relay.harness.run(login) == "OK"
    accounts.revoke_app_password(DOCTOR.address, "mutt")
    assert "AUTHENTICATIONFAILED" in await auth_relay.harness.run(login)


async def test_production_refuses_the_practitioner_main_password_over_imap(
    production_relay: AuthRelay,
) -> None:
    def login() -> str:
        client = _imaps(production_relay)
        try:
            return client.login(DOCTOR.address, PASSWORD)[0]
        except imaplib.IMAP4.error as exc:
            return repr(exc.args)
        finally:
            client.logout()

    assert "AUTHENTICATIONFAILED" in await production_relay.harness.run(login)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_reads_the_inbox_with_oauth2_bearer(auth_relay: AuthRelay) -> None:
    host, port = auth_relay.harness.address("imaps")
    token = _token(auth_relay)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "curl",
                "--silent",
                "--show-error",
                "--cacert",
                str(auth_relay.harness.ca_file),
                "--login-options",
                "AUTH=OAUTHBEARER",
                "--user",
                f"{DOCTOR.address}:",
                "--oauth2-bearer",
                token,
                f"imaps://{host}:{port}/INBOX",
                "--request",
                "EXAMINE INBOX",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    result = await auth_relay.harness.run(run)
    assert result.returncode == 0, result.stderr
    assert "EXISTS" in result.stdout
    assert _events(auth_relay, "auth.succeeded")[-1]["mechanism"] == "OAUTHBEARER"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
