"""Issue 10, "not an emergency channel": a patient who starts a conversation
gets an automatic answer (RFC 3834) naming 15 and 112; a reply does not."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import TYPE_CHECKING

from tests.relay.test_smtp import message
from tests.support.relay_fixtures import (
    DOCTOR,
    PATIENT,
    Harness,
    TlsFiles,
    patient_address,
    relay_config,
    started,
)

if TYPE_CHECKING:
    from pathlib import Path

PATIENT_ADDR = patient_address(PATIENT)
FIRST = "<first@medecin.mssante.fr>"


async def _conversation(h: Harness, *, in_thread: bool) -> None:
    """The doctor writes first; the patient then writes back, new or in thread."""
    first = message(DOCTOR.address, PATIENT_ADDR, message_id=FIRST)
    extra = {"In_Reply_To": FIRST} if in_thread else {}
    patient = message(
        PATIENT_ADDR,
        DOCTOR.address,
        subject="Douleurs thoraciques depuis ce matin",
        message_id="<p1@patient.mssante.example>",
        **extra,
    )

    def run() -> None:
        with h.submission() as c:
            c.sendmail(DOCTOR.address, [PATIENT_ADDR], first)
        with h.submission(login=PATIENT_ADDR) as c:
            c.sendmail(PATIENT_ADDR, [DOCTOR.address], patient)

    await h.run(run)
    await h.delivered()
    await h.delivered()  # the answer is spooled after the patient's 250


def _answers(h: Harness) -> list[EmailMessage]:
    parser = BytesParser(_class=EmailMessage, policy=email.policy.default)
    parsed = [parser.parsebytes(raw) for raw in h.messages(PATIENT_ADDR)]
    return [m for m in parsed if m.get("Auto-Submitted") == "auto-replied"]


async def test_a_patient_starting_a_conversation_is_told_it_is_no_emergency_line(
    relay: Harness,
) -> None:
    await _conversation(relay, in_thread=False)
    [answer] = _answers(relay)
    assert DOCTOR.address in str(answer["From"])
    assert answer["In-Reply-To"] == "<p1@patient.mssante.example>"
    assert answer["Return-Path"] == "<>"
    text = answer.get_content()
    assert "15" in text
    assert "112" in text
    # Nothing of the patient's message comes back.
    assert "Douleurs" not in str(answer)
    [event] = [
        r for r in relay.audit_events() if r.get("event") == "patient.notice.sent"
    ]
    assert event["actor"] == DOCTOR.address
    assert event["recipient"] == PATIENT_ADDR


async def test_a_reply_in_a_thread_gets_no_automatic_answer(relay: Harness) -> None:
    await _conversation(relay, in_thread=True)
    assert _answers(relay) == []


async def test_a_professional_can_turn_the_answer_off_or_change_its_text(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    custom = tmp_path / "notice.txt"
    custom.write_text("Le cabinet {name} ne lit pas cette messagerie le week-end.\n")
    cfg = relay_config(
        tmp_path,
        tls_files.directory,
        None,
        extra={
            "patients": {
                "emergency_notice_file": str(custom),
                "overrides": {"8" + "0" * 10: {"emergency_notice": False}},
            }
        },
    )
    async with started(tls_files, cfg) as h:
        await _conversation(h, in_thread=False)
        [answer] = _answers(h)
        assert "ne lit pas cette messagerie le week-end" in answer.get_content()
    off = relay_config(
        tmp_path / "off",
        tls_files.directory,
        None,
        extra={
            "patients": {"overrides": {DOCTOR.address: {"emergency_notice": False}}}
        },
    )
    async with started(tls_files, off) as h:
        await _conversation(h, in_thread=False)
        assert _answers(h) == []
