"""SMTP submission and MX against a real relay, with real clients."""

from __future__ import annotations

import email.policy
import smtplib
from email.message import EmailMessage
from typing import TYPE_CHECKING

from tests.support.relay_fixtures import DOCTOR, PATIENT, URGENCES, patient_address

if TYPE_CHECKING:
    from tests.support.relay_fixtures import Harness


def message(
    sender: str, to: str, *, subject: str = "Compte rendu", **headers: str
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = headers.pop("message_id", "<m1@medecin.mssante.fr>")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Bonjour,\nveuillez trouver le compte rendu.\n")
    return msg.as_bytes(policy=email.policy.SMTP)


async def test_practitioner_sends_to_colleague_and_it_is_stored(relay: Harness) -> None:
    def send() -> dict[str, tuple[int, bytes]]:
        with relay.submission() as client:
            return client.sendmail(
                DOCTOR.address,
                [URGENCES.address],
                message(DOCTOR.address, URGENCES.address),
            )

    refused = await relay.run(send)
    assert refused == {}
    await relay.delivered()
    inbox = relay.messages(URGENCES.address)
    assert len(inbox) == 1
    assert b"veuillez trouver" in inbox[0]
    assert inbox[0].startswith(
        b"Return-Path: <zoe.moreau@medecin.mssante.fr>\r\nReceived: from "
    )
    sent = relay.messages(DOCTOR.address, "Sent")
    assert len(sent) == 1


async def test_practitioner_writes_to_patient(relay: Harness) -> None:
    to = patient_address(PATIENT)

    def send() -> None:
        with relay.submission() as client:
            client.sendmail(DOCTOR.address, [to], message(DOCTOR.address, to))

    await relay.run(send)
    await relay.delivered()
    assert len(relay.messages(to)) == 1


async def test_unknown_recipient_refused_with_550_511(relay: Harness) -> None:
    def send() -> tuple[int, bytes]:
        with relay.submission() as client:
            client.mail(DOCTOR.address)
            return client.rcpt("nobody@medecin.mssante.fr")

    code, text = await relay.run(send)
    assert code == 550
    assert text.startswith(b"5.1.1")


async def test_auth_refused_before_tls(relay: Harness) -> None:
    def attempt() -> tuple[int, bytes]:
        host, port = relay.address("submission")
        with smtplib.SMTP(host, port, timeout=10) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            return client.docmd("AUTH", "PLAIN AGZvbwBiYXI=")

    code, _ = await relay.run(attempt)
    assert code == 530
