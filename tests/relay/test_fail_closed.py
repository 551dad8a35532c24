"""Fail closed: when the directory cannot answer, the relay says "try later".

A private slapd (not the session's shared one) holds the directory; it is
stopped while the relay runs. Every command that needs the directory gets
``451 4.4.3`` (DESIGN §4), never an accept, and the failure is audited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from directory.config import Backend, DirectoryConfig
from directory.devpki import make_server_pki
from directory.slapd import Slapd
from tests.support.relay_fixtures import DOCTOR, URGENCES, relay_config, started

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.ldap_fixtures import SlapdServer
    from tests.support.relay_fixtures import Harness, TlsFiles


@pytest.mark.slapd
async def test_directory_outage_gives_451_and_nothing_is_accepted(
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
        ldap = server.relay_config(pki.ca_file, "outage-test-password", timeout=2.0)
        cfg = relay_config(
            tmp_path,
            tls_files.directory,
            DirectoryConfig(backend=Backend.LDAP, ldap=ldap),
        )
        async with started(tls_files, cfg) as relay:

            def session_before() -> tuple[int, bytes]:
                with relay.submission() as c:
                    c.mail(DOCTOR.address)
                    return c.rcpt(URGENCES.address)

            assert (await relay.run(session_before))[0] == 250
            server.stop()

            def session_after() -> tuple[int, bytes]:
                with relay.submission() as c:
                    return c.mail(DOCTOR.address)

            code, text = await relay.run(session_after)
            assert (code, text[:5]) == (451, b"4.4.3")
            await relay.delivered()
            assert relay.running.store.mailboxes() == []
            failures = [
                e
                for e in relay.audit_events()
                if e["event"] == "directory.lookup.failed"
            ]
            assert failures
    finally:
        server.stop()


async def test_an_unexpected_failure_is_a_temporary_451_without_details(
    relay: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.relay.test_smtp import message
    from tests.support.relay_fixtures import PATIENT, patient_address

    # The thread store fails under the DATA hook (a closed database): nothing
    # in the hook expects that.
    relay.running.threads.close()
    to = patient_address(PATIENT)

    def send() -> tuple[int, bytes]:
        import smtplib

        with relay.submission() as c:
            try:
                c.sendmail(DOCTOR.address, [to], message(DOCTOR.address, to))
            except smtplib.SMTPDataError as exc:
                text = exc.smtp_error
                return exc.smtp_code, text if isinstance(text, bytes) else text.encode()
        return 250, b""

    code, text = await relay.run(send)
    assert (code, text[:5]) == (451, b"4.3.0")
    assert b"Error" not in text
    assert "ProgrammingError" in caplog.text
    await relay.delivered()
    assert relay.running.store.mailboxes() == []
