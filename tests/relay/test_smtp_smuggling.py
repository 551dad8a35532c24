"""SMTP smuggling: a second message hidden behind a bare-LF end of data.

RFC 5321 §2.3.8 and §4.1.1.4: the end of data is <CRLF>.<CRLF> and nothing
else. A sender that ends data with <LF>.<LF> (or <CR>.<CR>) and follows it
with a new MAIL FROM tries to make a lenient server see two messages where
the sending server saw one. aiosmtpd only ends data at <CRLF>.<CRLF>; the
relay refuses any message that still carries a bare CR or LF (as Postfix
does with ``smtpd_forbid_bare_newline = reject``), so the hidden message is
never delivered, not even as part of the first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support import smtp_wire
from tests.support.relay_fixtures import (
    DOCTOR,
    PATIENT,
    URGENCES,
    patient_address,
)

if TYPE_CHECKING:
    from tests.support.relay_fixtures import Harness

SMUGGLED_TO = patient_address(PATIENT)


def _payload(end: bytes) -> bytes:
    return (
        f"From: {DOCTOR.address}\r\nTo: {URGENCES.address}\r\nSubject: one\r\n\r\nfirst\r\n".encode()
        + end
        + f"MAIL FROM:<{DOCTOR.address}>\r\nRCPT TO:<{SMUGGLED_TO}>\r\nDATA\r\n".encode()
        + f"From: {DOCTOR.address}\r\nTo: {SMUGGLED_TO}\r\nSubject: smuggled\r\n\r\nhidden\r\n".encode()
        + b"\r\n.\r\n"
    )


@pytest.mark.parametrize(
    "end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r"], ids=repr
)
async def test_smuggled_message_is_refused_and_nothing_delivered(
    relay: Harness, end: bytes
) -> None:
    transcript = b"".join(
        await relay.run(
            lambda: smtp_wire.transaction(relay, _payload(end) + b"QUIT\r\n")
        )
    )
    assert b"554 5.5.2 Bare CR or LF" in transcript
    await relay.delivered()
    assert relay.running.store.mailboxes() == []


async def test_plain_crlf_message_still_accepted(relay: Harness) -> None:
    payload = (
        f"From: {DOCTOR.address}\r\nTo: {URGENCES.address}\r\n\r\nok\r\n.\r\n".encode()
    )
    transcript = b"".join(
        await relay.run(lambda: smtp_wire.transaction(relay, payload + b"QUIT\r\n"))
    )
    assert b"250 2.0.0 Ok: queued as" in transcript
