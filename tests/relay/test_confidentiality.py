"""Nothing health-related leaks: not in logs, not in the audit trail, not on disk.

A message whose Subject, body and attachment file name carry a marker goes
through submission, the spool, delivery and the store. Then every log record
(at DEBUG), the audit trail and every byte under the data directory are
searched for the marker, and for the password used to log in.
"""

from __future__ import annotations

import email.policy
import logging
from email.message import EmailMessage
from typing import TYPE_CHECKING

from tests.support.relay_fixtures import DOCTOR, PASSWORD, PATIENT, patient_address

if TYPE_CHECKING:
    import pytest

    from tests.support.relay_fixtures import Harness

MARKER = "ZQXJ-MARKER-7731"


def _marked_message(to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = DOCTOR.address
    msg["To"] = to
    msg["Subject"] = f"Resultats {MARKER}"
    msg["Message-ID"] = "<c1@medecin.mssante.fr>"
    msg.set_content(f"Bonjour, voici les résultats {MARKER}.\n")
    msg.add_attachment(
        b"%PDF-1.4 fake",
        maintype="application",
        subtype="pdf",
        filename=f"compte-rendu-{MARKER}.pdf",
    )
    return msg.as_bytes(policy=email.policy.SMTP)


async def test_marker_appears_nowhere_but_in_the_mailbox(
    relay: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    to = patient_address(PATIENT)

    def send() -> None:
        with relay.submission() as c:
            c.sendmail(DOCTOR.address, [to], _marked_message(to))

    await relay.run(send)
    await relay.delivered()
    relay.running.audit.sync()
    # The recipient can read it...
    assert MARKER.encode() in relay.messages(to)[0]
    # ...and nothing else holds it, nor the password.
    for needle in (MARKER, PASSWORD):
        assert needle not in caplog.text
        assert needle not in relay.running.audit.path.read_text(encoding="utf-8")
        for path in relay.config.relay.data_dir.rglob("*"):
            if path.is_file():
                assert needle.encode() not in path.read_bytes(), path
