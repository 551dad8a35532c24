"""The probe matrix: every refused case gets its reply code and stores nothing.

Each probe runs a real SMTP session against the relay (stdlib ``smtplib``),
checks the reply code and enhanced status, then checks that no mailbox
received anything and the spool is empty, and that the refusal is in the
audit trail with a reason.
"""

from __future__ import annotations

import smtplib
import ssl
from typing import TYPE_CHECKING

import pytest

from tests.relay.test_smtp import message
from tests.support.relay_fixtures import (
    DOCTOR,
    OPTED_OUT,
    PASSWORD,
    PATIENT,
    PATIENT_2,
    SUSPENDED,
    URGENCES,
    patient_address,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support.relay_fixtures import Harness

PATIENT_ADDR = patient_address(PATIENT)


def _no_tls(h: Harness) -> tuple[int, bytes]:
    host, port = h.address("submission")
    with smtplib.SMTP(host, port, timeout=10) as c:
        c.ehlo()
        return c.mail(DOCTOR.address)


def _auth_before_tls(h: Harness) -> tuple[int, bytes]:
    host, port = h.address("submission")
    with smtplib.SMTP(host, port, timeout=10) as c:
        c.ehlo()
        return c.docmd("AUTH", "PLAIN AHpvZQBzZWNyZXQ=")


def _wrong_password(h: Harness) -> tuple[int, bytes]:
    with h.submission(login=None) as c:
        try:
            c.login(DOCTOR.address, "Wrong-password-1!")
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, _raw(exc.smtp_error)
    raise AssertionError("login succeeded")


def _raw(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def _unauthenticated_mail(h: Harness) -> tuple[int, bytes]:
    with h.submission(login=None) as c:
        return c.mail(DOCTOR.address)


def _sender_not_owned(h: Harness) -> tuple[int, bytes]:
    with h.submission() as c:
        return c.mail(URGENCES.address)


def _rcpt(h: Harness, to: str, *, login: str = DOCTOR.address) -> tuple[int, bytes]:
    with h.submission(login=login) as c:
        code, text = c.mail(login)
        assert code == 250, text
        return c.rcpt(to)


def _data(h: Harness, sender: str, to: str, body: bytes) -> tuple[int, bytes]:
    with h.submission(login=sender) as c:
        try:
            c.sendmail(sender, [to], body)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, _raw(exc.smtp_error)
        except smtplib.SMTPRecipientsRefused as exc:
            return exc.recipients[to]
    raise AssertionError("message accepted")


def _patient_first_contact(h: Harness) -> tuple[int, bytes]:
    return _data(
        h, PATIENT_ADDR, URGENCES.address, message(PATIENT_ADDR, URGENCES.address)
    )


def _from_header_not_owned(h: Harness) -> tuple[int, bytes]:
    return _data(
        h, DOCTOR.address, URGENCES.address, message(URGENCES.address, DOCTOR.address)
    )


def _oversized_declared(h: Harness) -> tuple[int, bytes]:
    with h.submission() as c:
        return c.mail(DOCTOR.address, ["SIZE=300000"])


def _oversized_data(h: Harness) -> tuple[int, bytes]:
    # No SIZE parameter: the limit is found while reading DATA (RFC 1870 §6.3).
    body = message(DOCTOR.address, URGENCES.address) + (b"x" * 998 + b"\r\n") * 300
    with h.submission() as c:
        c.mail(DOCTOR.address)
        c.rcpt(URGENCES.address)
        return c.data(body)


def _mx_without_certificate(h: Harness) -> tuple[int, bytes]:
    with h.mx() as c:
        return c.mail("dr.martin@hopital-b.example")


def _mx_certificate_of_another_operator(h: Harness) -> tuple[int, bytes]:
    with h.mx(h.other_operator_cert, h.other_operator_key) as c:
        return c.mail("dr.martin@hopital-b.example")


def _mx_sender_of_another_domain(h: Harness) -> tuple[int, bytes]:
    with h.mx_operator() as c:
        return c.mail("dr.martin@hopital-c.example")


def _mx_revoked_sender(h: Harness) -> tuple[int, bytes]:
    with h.mx_operator() as c:
        return c.mail("revoque@hopital-b.example")


def _mx_relay_attempt(h: Harness) -> tuple[int, bytes]:
    with h.mx_operator() as c:
        c.mail("dr.martin@hopital-b.example")
        return c.rcpt("someone@elsewhere.example")


def _mx_without_tls(h: Harness) -> tuple[int, bytes]:
    host, port = h.address("mx")
    with smtplib.SMTP(host, port, timeout=10) as c:
        c.ehlo()
        return c.mail("dr.martin@hopital-b.example")


PROBES: list[tuple[str, Callable[[Harness], tuple[int, bytes]], int, str]] = [
    ("no TLS", _no_tls, 530, ""),
    ("AUTH before TLS", _auth_before_tls, 530, ""),
    ("wrong password", _wrong_password, 535, "5.7.8"),
    ("MAIL without AUTH", _unauthenticated_mail, 530, "5.7.0"),
    ("sender not owned", _sender_not_owned, 553, "5.7.1"),
    (
        "unlisted recipient",
        lambda h: _rcpt(h, "inconnu@medecin.mssante.fr"),
        550,
        "5.1.1",
    ),
    ("suspended recipient", lambda h: _rcpt(h, SUSPENDED.address), 550, "5.2.1"),
    (
        "unknown patient",
        lambda h: _rcpt(h, "123456789012345@patient.mssante.example"),
        550,
        "5.1.1",
    ),
    ("opted-out patient", lambda h: _rcpt(h, patient_address(OPTED_OUT)), 550, "5.1.1"),
    # Outside the trust space: refused at RCPT, never queued (issue 9).
    (
        "domain outside the trust space",
        lambda h: _rcpt(h, "x@gmail.example"),
        550,
        "5.7.1",
    ),
    ("patient first contact", _patient_first_contact, 550, "5.7.1"),
    (
        "patient to patient",
        lambda h: _rcpt(h, patient_address(PATIENT_2), login=PATIENT_ADDR),
        550,
        "5.7.1",
    ),
    ("From header not owned", _from_header_not_owned, 550, "5.7.1"),
    ("oversized (SIZE)", _oversized_declared, 552, ""),
    ("oversized (data)", _oversized_data, 552, "5.3.4"),
    ("MX without TLS", _mx_without_tls, 530, ""),
    ("MX without client certificate", _mx_without_certificate, 530, "5.7.0"),
    (
        "MX certificate of another operator",
        _mx_certificate_of_another_operator,
        550,
        "5.7.1",
    ),
    ("MX sender of another domain", _mx_sender_of_another_domain, 550, "5.7.1"),
    ("MX revoked sender", _mx_revoked_sender, 550, "5.7.1"),
    ("MX relay attempt", _mx_relay_attempt, 554, "5.7.1"),
]


@pytest.mark.parametrize(
    ("probe", "code", "status"), [p[1:] for p in PROBES], ids=[p[0] for p in PROBES]
)
async def test_refused_and_nothing_stored(
    relay: Harness,
    probe: Callable[[Harness], tuple[int, bytes]],
    code: int,
    status: str,
) -> None:
    got_code, text = await relay.run(lambda: probe(relay))
    assert got_code == code, text
    if status:
        assert text.startswith(status.encode()), text
    await relay.delivered()
    assert relay.running.spool.pending() == []
    assert relay.running.store.mailboxes() == []


async def test_same_reply_for_opted_out_unknown_and_blocked_patient(
    relay: Harness,
) -> None:
    replies = [
        await relay.run(lambda to=to: _rcpt(relay, to))  # type: ignore[misc]
        for to in (
            patient_address(OPTED_OUT),
            "123456789012345@patient.mssante.example",
        )
    ]
    assert replies[0] == replies[1]
    reasons = {
        e["reason"]
        for e in relay.audit_events()
        if e["event"] == "smtp.recipient.rejected"
    }
    assert reasons == {"patient opted out", "patient unknown"}


async def test_mx_untrusted_certificate_fails_the_handshake(relay: Harness) -> None:
    def attempt() -> None:
        relay.mx(relay.untrusted_cert, relay.untrusted_key).mail("a@hopital-b.example")

    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await relay.run(attempt)


async def test_failed_logins_lock_the_account_and_are_audited(relay: Harness) -> None:
    def attempts() -> list[int]:
        codes = []
        for password in ["Bad-1!aaaaaaa", "Bad-2!aaaaaaa", "Bad-3!aaaaaaa", PASSWORD]:
            with relay.submission(login=None) as c:
                c.user, c.password = URGENCES.address, password
                try:
                    code, _ = c.auth("PLAIN", c.auth_plain, initial_response_ok=True)
                except smtplib.SMTPAuthenticationError as exc:
                    code = exc.smtp_code
                codes.append(code)
        return codes

    assert await relay.run(attempts) == [535, 535, 535, 454]
    events = [e["event"] for e in relay.audit_events()]
    assert events.count("auth.failed") == 3
    assert "auth.locked" in events
