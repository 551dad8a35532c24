"""Accepted flows end to end: MX, delegation, patient threads, DSN parameters, TLS."""

from __future__ import annotations

import email
import email.policy
import smtplib
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.relay.test_smtp import message
from tests.support.relay_fixtures import (
    COLLEAGUE,
    DOCTOR,
    PASSWORD,
    PATIENT,
    URGENCES,
    patient_address,
)

if TYPE_CHECKING:
    from tests.support.relay_fixtures import Harness

PATIENT_ADDR = patient_address(PATIENT)


def _send(
    h: Harness, login: str, sender: str, to: str, body: bytes
) -> tuple[int, bytes]:
    with h.submission(login=login) as c:
        try:
            c.sendmail(sender, [to], body)
        except smtplib.SMTPDataError as exc:
            text = exc.smtp_error
            return exc.smtp_code, text if isinstance(text, bytes) else text.encode()
    return 250, b""


async def test_operator_delivers_to_local_mailbox_over_mx(relay: Harness) -> None:
    def send() -> None:
        with relay.mx_operator() as c:
            c.sendmail(
                "dr.martin@hopital-b.example",
                [DOCTOR.address],
                message("dr.martin@hopital-b.example", DOCTOR.address),
            )

    await relay.run(send)
    await relay.delivered()
    inbox = relay.messages(DOCTOR.address)
    assert len(inbox) == 1
    assert b"with ESMTPS id " in inbox[0]
    accepted = [e for e in relay.audit_events() if e["event"] == "message.accepted"]
    assert accepted[0]["channel"] == "mx"


async def test_mx_accepts_a_null_sender_from_a_whitelisted_operator(
    relay: Harness,
) -> None:
    def send() -> None:
        with relay.mx_operator() as c:
            c.sendmail(
                "",
                [DOCTOR.address],
                message("mailer-daemon@hopital-b.example", DOCTOR.address),
            )

    await relay.run(send)
    await relay.delivered()
    assert relay.messages(DOCTOR.address)[0].startswith(b"Return-Path: <>\r\n")


async def test_delegate_sends_as_the_mailbox_and_gets_a_sender_header(
    relay: Harness,
) -> None:
    body = message(DOCTOR.address, URGENCES.address)
    assert await relay.run(
        lambda: _send(relay, "secretaire-1", DOCTOR.address, URGENCES.address, body)
    ) == (250, b"")
    await relay.delivered()
    stored = email.message_from_bytes(relay.messages(URGENCES.address)[0])
    assert stored["Sender"] == "secretaire-1"
    assert stored["From"] == DOCTOR.address
    assert len(relay.messages(DOCTOR.address, "Sent")) == 1


async def test_patient_replies_in_thread_and_fin_closes_it(relay: Harness) -> None:
    first = message(DOCTOR.address, PATIENT_ADDR, message_id="<t1@medecin.mssante.fr>")
    closing = message(
        DOCTOR.address,
        PATIENT_ADDR,
        message_id="<t2@medecin.mssante.fr>",
        X_MSS_MES="FIN",
    )
    reply = message(
        PATIENT_ADDR,
        DOCTOR.address,
        message_id="<r1@patient.mssante.example>",
        In_Reply_To="<t1@medecin.mssante.fr>",
    )
    late = message(
        PATIENT_ADDR,
        DOCTOR.address,
        message_id="<r2@patient.mssante.example>",
        In_Reply_To="<t2@medecin.mssante.fr>",
        References="<t2@medecin.mssante.fr>",
    )
    new = message(
        PATIENT_ADDR, DOCTOR.address, message_id="<r3@patient.mssante.example>"
    )
    to_other = message(
        PATIENT_ADDR, URGENCES.address, message_id="<r4@patient.mssante.example>"
    )

    def scenario() -> list[tuple[int, bytes]]:
        return [
            _send(relay, DOCTOR.address, DOCTOR.address, PATIENT_ADDR, first),
            _send(relay, PATIENT_ADDR, PATIENT_ADDR, DOCTOR.address, reply),
            _send(relay, DOCTOR.address, DOCTOR.address, PATIENT_ADDR, closing),
            _send(relay, PATIENT_ADDR, PATIENT_ADDR, DOCTOR.address, late),
            _send(relay, PATIENT_ADDR, PATIENT_ADDR, DOCTOR.address, new),
            _send(relay, PATIENT_ADDR, PATIENT_ADDR, COLLEAGUE.address, to_other),
        ]

    codes = [(code, text[:5]) for code, text in await relay.run(scenario)]
    assert codes == [
        (250, b""),  # professional writes first
        (250, b""),  # patient answers in the thread
        (250, b""),  # professional closes the thread
        (550, b"5.7.1"),  # reply in a closed thread
        (250, b""),  # new conversation with a professional who wrote before
        (550, b"5.7.1"),  # first contact with someone who never wrote
    ]
    await relay.delivered()
    assert len(relay.messages(DOCTOR.address)) == 2
    assert relay.messages(COLLEAGUE.address) == []


async def test_patient_reply_goes_only_to_the_designated_reply_to(
    relay: Harness,
) -> None:
    first = message(
        DOCTOR.address,
        PATIENT_ADDR,
        message_id="<t3@medecin.mssante.fr>",
        Reply_To=URGENCES.address,
    )
    to_urgences = message(
        PATIENT_ADDR, URGENCES.address, In_Reply_To="<t3@medecin.mssante.fr>"
    )

    def scenario() -> list[int]:
        return [
            _send(relay, DOCTOR.address, DOCTOR.address, PATIENT_ADDR, first)[0],
            _send(relay, PATIENT_ADDR, PATIENT_ADDR, URGENCES.address, to_urgences)[0],
        ]

    assert await relay.run(scenario) == [250, 250]


async def test_dsn_parameters_are_accepted_and_validated(relay: Harness) -> None:
    def session() -> list[tuple[int, bytes]]:
        with relay.submission() as c:
            replies = [
                c.mail(DOCTOR.address, ["RET=HDRS", "ENVID=lettre+2B42"]),
                c.rcpt(
                    URGENCES.address,
                    [
                        "NOTIFY=SUCCESS,FAILURE",
                        "ORCPT=rfc822;urgences+40ch-paris-1.mssante.fr",
                    ],
                ),
                c.rcpt(DOCTOR.address, ["NOTIFY=SOMETIMES"]),
            ]
            c.rset()
            replies.append(c.mail(DOCTOR.address, ["RET=ALL"]))
            return replies

    replies = await relay.run(session)
    assert [code for code, _ in replies] == [250, 250, 501, 501]


async def test_ehlo_advertises_the_extensions(relay: Harness) -> None:
    def features() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        host, port = relay.address("submission")
        with smtplib.SMTP(host, port, timeout=10) as c:
            c.ehlo()
            before = dict(c.esmtp_features)
            c.starttls(context=relay.client_context())
            c.ehlo()
            after = dict(c.esmtp_features)
        with relay.mx_operator() as c:
            mx = dict(c.esmtp_features)
        return before, after, mx

    before, after, mx = await relay.run(features)
    assert "starttls" in before
    assert "auth" not in before
    for name in ("pipelining", "dsn", "enhancedstatuscodes", "8bitmime", "smtputf8"):
        assert name in after
    assert after["size"] == "200000"
    assert after["auth"].split() == ["LOGIN", "PLAIN"]
    assert "auth" not in mx


async def test_implicit_tls_submission(relay: Harness) -> None:
    def send() -> None:
        host, port = relay.address("submissions")
        with smtplib.SMTP_SSL(
            host, port, context=relay.client_context(), timeout=10
        ) as c:
            c.login(DOCTOR.address, PASSWORD)
            c.sendmail(
                DOCTOR.address,
                [URGENCES.address],
                message(DOCTOR.address, URGENCES.address),
            )

    await relay.run(send)
    await relay.delivered()
    assert len(relay.messages(URGENCES.address)) == 1


def _swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--timeout", "10", *args], capture_output=True, text=True, check=False
    )


async def test_swaks_submits_with_starttls_and_auth(relay: Harness) -> None:
    host, port = relay.address("submission")
    done = await relay.run(
        lambda: _swaks(
            "--server",
            f"{host}:{port}",
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            str(relay.ca_file),
            "--auth",
            "PLAIN",
            "--auth-user",
            DOCTOR.address,
            "--auth-password",
            PASSWORD,
            "--from",
            DOCTOR.address,
            "--to",
            URGENCES.address,
            "--header",
            f"From: {DOCTOR.address}",
        )
    )
    assert done.returncode == 0, done.stdout[-2000:]
    await relay.delivered()
    assert len(relay.messages(URGENCES.address)) == 1


async def test_swaks_as_a_foreign_operator_over_mx(relay: Harness) -> None:
    host, port = relay.address("mx")
    done = await relay.run(
        lambda: _swaks(
            "--server",
            f"{host}:{port}",
            "--tls",
            "--tls-ca-path",
            str(relay.ca_file),
            "--tls-cert",
            str(relay.operator_cert),
            "--tls-key",
            str(relay.operator_key),
            "--from",
            "dr.martin@hopital-b.example",
            "--to",
            DOCTOR.address,
        )
    )
    assert done.returncode == 0, done.stdout[-2000:]
    await relay.delivered()
    assert len(relay.messages(DOCTOR.address)) == 1


@pytest.mark.slapd
async def test_relay_with_the_ldap_directory(relay_ldap: Harness) -> None:
    def session() -> tuple[dict[str, tuple[int, bytes]], tuple[int, bytes]]:
        with relay_ldap.submission() as c:
            refused = c.sendmail(
                DOCTOR.address,
                [URGENCES.address],
                message(DOCTOR.address, URGENCES.address),
            )
            c.mail(DOCTOR.address)
            return refused, c.rcpt("inconnu@medecin.mssante.fr")

    refused, unknown = await relay_ldap.run(session)
    assert refused == {}
    assert unknown[0] == 550
    await relay_ldap.delivered()
    assert len(relay_ldap.messages(URGENCES.address)) == 1
    assert (
        email.message_from_bytes(
            relay_ldap.messages(URGENCES.address)[0], policy=email.policy.default
        )["Subject"]
        == "Compte rendu"
    )


async def test_success_dsn_comes_back_to_the_sender(relay: Harness) -> None:
    from mssante.message import parse_dsn

    def send() -> None:
        with relay.submission() as c:
            c.sendmail(
                DOCTOR.address,
                [URGENCES.address],
                message(DOCTOR.address, URGENCES.address),
                mail_options=["RET=HDRS", "ENVID=lettre+2B42"],
                rcpt_options=[
                    "NOTIFY=SUCCESS",
                    "ORCPT=rfc822;urgences+40ch-paris-1.mssante.fr",
                ],
            )

    await relay.run(send)
    await relay.delivered()
    inbox = relay.messages(DOCTOR.address)
    assert len(inbox) == 1
    dsn = parse_dsn(inbox[0])
    assert dsn.original_envelope_id == "lettre+42"
    [status] = dsn.recipients
    assert status.action.value == "delivered"
    assert status.final_recipient == URGENCES.address
    assert status.original_recipient == URGENCES.address
    assert b"veuillez trouver" not in inbox[0]  # RET=HDRS: headers only
    assert any(e["event"] == "dsn.sent" for e in relay.audit_events())


async def test_no_dsn_without_notify_success(relay: Harness) -> None:
    def send() -> None:
        with relay.submission() as c:
            c.sendmail(
                DOCTOR.address,
                [URGENCES.address],
                message(DOCTOR.address, URGENCES.address),
            )

    await relay.run(send)
    await relay.delivered()
    assert relay.messages(DOCTOR.address) == []
