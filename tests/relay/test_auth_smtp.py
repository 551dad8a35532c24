"""SMTP submission AUTH end to end: OAUTHBEARER, XOAUTH2, EXTERNAL, app passwords.

Driven by stdlib ``smtplib`` (a foreign client) against the real relay on
loopback, with tokens from the local issuer of ``test_auth_issuer``.

Tokens here are ES256 (short) and sent after the ``334`` rather than as an
initial response: aiosmtpd limits a command line to 512 octets and any line
to 1,001, below the 12,288 RFC 4954 §4 allows AUTH (see docs/auth.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import ssl
import time
from typing import TYPE_CHECKING

import pytest

from tests.relay.test_auth_issuer import (
    APP_ADDRESS,
    APP_LOGIN,
    AuthRelay,
    app_tls,
    auth_relay,
    issuer,
    oauthbearer,
    production_relay,
    xoauth2,
)
from tests.support.relay_fixtures import DOCTOR, PASSWORD, PATIENT, patient_address

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["app_tls", "auth_relay", "issuer", "production_relay"]

RPPS_ID = "8" + "10003456789"


def _client(
    r: AuthRelay, cert: Path | None = None, key: Path | None = None
) -> smtplib.SMTP:
    host, port = r.harness.address("submission")
    client = smtplib.SMTP(host, port, timeout=10)
    client.starttls(context=r.harness.client_context(cert, key))
    client.ehlo()
    return client


def _token(r: AuthRelay, **kwargs: object) -> str:
    national_id = next(
        a.external_id
        for a in r.harness.running.accounts.all()
        if a.login == DOCTOR.address
    )
    assert national_id is not None
    kwargs.setdefault("key", "ec")
    return r.issuer.token(national_id, now=time.time(), **kwargs)  # type: ignore[arg-type]


def _events(r: AuthRelay, name: str) -> list[dict[str, object]]:
    return [e for e in r.harness.audit_events() if e["event"] == name]


async def test_ehlo_after_tls_offers_token_and_certificate_mechanisms(
    auth_relay: AuthRelay,
) -> None:
    def ehlo() -> str:
        with _client(auth_relay) as c:
            return c.esmtp_features["auth"]

    assert set((await auth_relay.harness.run(ehlo)).split()) == {
        "PLAIN",
        "LOGIN",
        "OAUTHBEARER",
        "XOAUTH2",
        "EXTERNAL",
    }


async def test_no_mechanism_works_before_tls(auth_relay: AuthRelay) -> None:
    def attempt() -> list[int]:
        host, port = auth_relay.harness.address("submission")
        with smtplib.SMTP(host, port, timeout=10) as c:
            c.ehlo()
            assert "auth" not in c.esmtp_features
            mechanisms = ("PLAIN", "OAUTHBEARER", "XOAUTH2", "EXTERNAL")
            return [c.docmd("AUTH", f"{mech} =")[0] for mech in mechanisms]

    # 530 5.7.0 "Must issue a STARTTLS command first" (RFC 3207 §4).
    assert await auth_relay.harness.run(attempt) == [530, 530, 530, 530]


async def test_oauthbearer_with_a_good_token_logs_in_and_sends(
    auth_relay: AuthRelay,
) -> None:
    payload = oauthbearer(_token(auth_relay), DOCTOR.address)

    def send() -> tuple[int, int]:
        with _client(auth_relay) as c:
            code, _ = c.auth(
                "OAUTHBEARER",
                lambda _=None: payload.decode(),
                initial_response_ok=False,
            )
            mail, _ = c.mail(DOCTOR.address)
            return code, mail

    assert await auth_relay.harness.run(send) == (235, 250)
    ok = _events(auth_relay, "auth.succeeded")[-1]
    assert ok["actor"] == DOCTOR.address
    assert ok["mechanism"] == "OAUTHBEARER"
    assert ok["credential"] == "oauth"


async def test_a_long_token_fits_in_the_auth_command_line(
    auth_relay: AuthRelay,
) -> None:
    # RFC 4954 §4: up to 12,288 octets; provider tokens are often > 1 KB.
    token = _token(auth_relay, key="rsa", roles=["x" * 40] * 60)
    payload = oauthbearer(token, DOCTOR.address)
    assert len(payload) > 3000

    def send() -> int:
        with _client(auth_relay) as c:
            code, _ = c.auth(
                "OAUTHBEARER", lambda _=None: payload.decode(), initial_response_ok=True
            )
            return code

    assert await auth_relay.harness.run(send) == 235


async def test_xoauth2_with_a_good_token_logs_in(auth_relay: AuthRelay) -> None:
    payload = xoauth2(_token(auth_relay, key="ec"), DOCTOR.address)

    def login() -> int:
        with _client(auth_relay) as c:
            return c.auth(
                "XOAUTH2", lambda _=None: payload.decode(), initial_response_ok=False
            )[0]

    assert await auth_relay.harness.run(login) == 235


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"lifetime": -400}, "token expired"),
        ({"aud": "another-service"}, "token meant for another audience"),
        ({"key": "rogue-ec"}, "token signature does not verify"),
    ],
    ids=["expired", "wrong-audience", "wrong-key"],
)
async def test_refused_token_gets_the_rfc7628_error_then_535(
    auth_relay: AuthRelay, kwargs: dict[str, object], reason: str
) -> None:
    payload = oauthbearer(_token(auth_relay, **kwargs))

    def attempt() -> tuple[int, dict[str, str], int]:
        with _client(auth_relay) as c:
            assert c.docmd("AUTH", "OAUTHBEARER")[0] == 334
            code, challenge = c.docmd(base64.b64encode(payload).decode())
            error = json.loads(base64.b64decode(challenge))
            # RFC 7628 §3.2.3: the client's dummy response is a single ^A.
            final, _ = c.docmd(base64.b64encode(b"\x01").decode())
            return code, error, final

    code, error, final = await auth_relay.harness.run(attempt)
    assert code == 334
    assert error["status"] == "invalid_token"
    assert "openid-configuration" in error
    assert final == 535
    failed = _events(auth_relay, "auth.failed")[-1]
    assert failed["reason"] == reason
    assert "token" not in failed  # never the token itself


async def test_smtplib_sees_a_refused_token_as_an_authentication_error(
    auth_relay: AuthRelay,
) -> None:
    payload = oauthbearer(_token(auth_relay, lifetime=-400))

    def attempt() -> int:
        answers = iter([payload.decode(), "\x01"])
        with _client(auth_relay) as c:
            try:
                c.auth(
                    "OAUTHBEARER",
                    lambda _=None: next(answers),
                    initial_response_ok=False,
                )
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code
        return 0

    assert await auth_relay.harness.run(attempt) == 535


async def test_token_for_an_identity_without_account_is_refused(
    auth_relay: AuthRelay,
) -> None:
    token = auth_relay.issuer.token("899999999999", now=time.time(), key="ec")
    payload = oauthbearer(token)

    def attempt() -> int:
        with _client(auth_relay) as c:
            c.docmd("AUTH", "OAUTHBEARER")
            c.docmd(base64.b64encode(payload).decode())
            return c.docmd("AQ==")[0]

    assert await auth_relay.harness.run(attempt) == 535
    assert _events(auth_relay, "auth.failed")[-1]["reason"] == (
        "token names no unlocked account"
    )


async def test_token_with_another_authzid_is_refused(auth_relay: AuthRelay) -> None:
    payload = oauthbearer(_token(auth_relay), "paul.durand@medecin.mssante.fr")

    def attempt() -> int:
        with _client(auth_relay) as c:
            c.docmd("AUTH", "OAUTHBEARER")
            c.docmd(base64.b64encode(payload).decode())
            return c.docmd("AQ==")[0]

    assert await auth_relay.harness.run(attempt) == 535


async def test_external_with_the_app_mailbox_certificate_logs_in(
    auth_relay: AuthRelay,
) -> None:
    def login() -> tuple[int, int]:
        with _client(auth_relay, auth_relay.app_cert, auth_relay.app_key) as c:
            code, _ = c.auth("EXTERNAL", lambda _=None: "")
            return code, c.mail(APP_ADDRESS)[0]

    assert await auth_relay.harness.run(login) == (235, 250)
    ok = _events(auth_relay, "auth.succeeded")[-1]
    assert (ok["actor"], ok["credential"]) == (APP_LOGIN, "external")


async def test_external_refused_without_certificate_or_with_an_unlisted_one(
    auth_relay: AuthRelay,
) -> None:
    def attempt(cert: Path | None, key: Path | None) -> int:
        with _client(auth_relay, cert, key) as c:
            return c.docmd("AUTH", "EXTERNAL =")[0]

    r = auth_relay
    assert await r.harness.run(lambda: attempt(None, None)) == 535
    assert await r.harness.run(lambda: attempt(r.stranger_cert, r.stranger_key)) == 535
    reasons = [e["reason"] for e in _events(r, "auth.failed")]
    assert reasons == ["no client certificate", "certificate not in the directory"]


async def test_untrusted_client_certificate_fails_the_handshake(
    auth_relay: AuthRelay,
) -> None:
    h = auth_relay.harness

    def attempt() -> None:
        _client(auth_relay, h.untrusted_cert, h.untrusted_key).docmd(
            "AUTH", "EXTERNAL ="
        )

    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await h.run(attempt)


async def test_app_password_works_with_plain_and_login(auth_relay: AuthRelay) -> None:
    secret = auth_relay.harness.running.accounts.add_app_password(
        DOCTOR.address, "thunderbird"
    )

    def login() -> list[int]:
        codes = []
        for mech in ("PLAIN", "LOGIN"):
            with _client(auth_relay) as c:
                c.user, c.password = DOCTOR.address, secret
                answer = c.auth_plain if mech == "PLAIN" else c.auth_login
                codes.append(
                    c.auth(mech, answer, initial_response_ok=mech == "PLAIN")[0]
                )
        return codes

    assert await auth_relay.harness.run(login) == [235, 235]
    ok = _events(auth_relay, "auth.succeeded")[-1]
    assert (ok["credential"], ok["device"]) == ("app-password", "thunderbird")
    assert ok["mechanism"] == "LOGIN"

    # A foreign client, swaks, with the same app password.
    host, port = auth_relay.harness.address("submission")
    done = await asyncio.create_subprocess_exec(
        "swaks",
        "--server",
        f"{host}:{port}",
        "--tls",
        "--tls-ca-path",
        str(auth_relay.harness.ca_file),
        "--auth",
        "LOGIN",
        "--auth-user",
        DOCTOR.address,
        "--auth-password",
        secret,
        "--quit-after",
        "AUTH",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await done.communicate()
    assert done.returncode == 0, out.decode()[-1500:]
    assert b"235 2.7.0" in out


async def test_production_refuses_main_password_of_a_practitioner_but_not_app_passwords(
    production_relay: AuthRelay,
) -> None:
    r = production_relay
    secret = r.harness.running.accounts.add_app_password(DOCTOR.address, "phone")

    def attempts() -> list[int]:
        codes = []
        for login, password in (
            (DOCTOR.address, PASSWORD),
            (DOCTOR.address, secret),
            (patient_address(PATIENT), PASSWORD),
        ):
            with _client(r) as c:
                try:
                    codes.append(c.login(login, password)[0])
                except smtplib.SMTPAuthenticationError as exc:
                    codes.append(exc.smtp_code)
        return codes

    assert await r.harness.run(attempts) == [535, 235, 235]
    failed = _events(r, "auth.failed")[-1]
    assert failed["reason"] == "password not allowed for practitioner"
    started = _events(r, "relay.started")[-1]
    assert started["auth_production"] is True
    assert "password" not in started["auth_mechanisms"]["practitioner"]  # type: ignore[index]


async def test_mx_offers_no_auth(auth_relay: AuthRelay) -> None:
    h = auth_relay.harness

    def ehlo() -> bool:
        with h.mx_operator() as c:
            return "auth" in c.esmtp_features

    assert await h.run(ehlo) is False
