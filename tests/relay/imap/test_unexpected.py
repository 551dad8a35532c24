"""A failure inside a command: NO [UNAVAILABLE], the session goes on."""

from __future__ import annotations

import imaplib
from typing import TYPE_CHECKING

from tests.relay.imap.conftest import imaps
from tests.support.relay_fixtures import DOCTOR, PASSWORD

if TYPE_CHECKING:
    import pytest

    from tests.support.relay_fixtures import Harness


async def test_unexpected_failure_is_a_temporary_no_and_the_session_survives(
    imap_relay: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # The account database is gone (closed): every login reads it.
    imap_relay.running.accounts.close()

    def session() -> tuple[str, str]:
        c = imaps(imap_relay)
        try:
            c.login(DOCTOR.address, PASSWORD)
            raise AssertionError("login went through without the account store")
        except imaplib.IMAP4.error as exc:
            detail = exc.args[0]
            refused = detail.decode() if isinstance(detail, bytes) else str(detail)
        typ, _ = c.noop()
        c.logout()
        return typ, refused

    typ, refused = await imap_relay.run(session)
    assert "UNAVAILABLE" in refused
    assert typ == "OK"
    assert "LOGIN" in caplog.text
