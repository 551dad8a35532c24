"""Crash safety: a relay killed with SIGKILL under load loses no acknowledged message.

A relay subprocess (``mssante serve``) takes mail from several concurrent
clients; it is killed with SIGKILL while they are sending. A new relay is
then started on the same data directory. Every message that got its ``250``
must be in the recipient's mailbox exactly once, and no message may be there
twice (RFC 5321 §4.5.5 "MUST NOT lose the message"; exactly-once through the
store's delivery keys).
"""

from __future__ import annotations

import re
import smtplib
import time
from collections import Counter
from typing import TYPE_CHECKING

from relay.app import run_relay
from relay.config import load
from tests.relay.test_smtp import message
from tests.support import serve
from tests.support.relay_fixtures import (
    DOCTOR,
    PASSWORD,
    URGENCES,
    TlsFiles,
    seed_data_dir,
)

if TYPE_CHECKING:
    import threading
    from pathlib import Path

CLIENTS = 4
KILL_AFTER_ACKS = 40
TOKEN = re.compile(rb"crash-token-(\d+-\d+)")


def _load(
    port: int, ca: Path, worker: int, acked: list[str], stop: threading.Event
) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as c:
                c.starttls(context=ctx)
                c.login(DOCTOR.address, PASSWORD)
                while not stop.is_set():
                    token = f"{worker}-{n}"
                    body = message(
                        DOCTOR.address,
                        URGENCES.address,
                        message_id=f"<crash-{token}@medecin.mssante.fr>",
                    ).replace(b"veuillez", f"crash-token-{token} veuillez".encode())
                    n += 1
                    c.sendmail(DOCTOR.address, [URGENCES.address], body)
                    acked.append(token)
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.05)


async def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    config_path = serve.write_config(tmp_path, tls_files.directory)
    cfg = load(config_path)
    await seed_data_dir(cfg, tls_files)
    acked: list[str] = []
    ca = tls_files.directory / "ca.pem"
    await serve.kill_under_load(
        config_path,
        lambda port, worker, stop: _load(port, ca, worker, acked, stop),
        clients=CLIENTS,
        acked=acked,
        kill_after=KILL_AFTER_ACKS,
        poll=0.01,
    )
    acknowledged = set(acked)
    assert len(acknowledged) >= KILL_AFTER_ACKS

    async with run_relay(cfg) as running:
        assert await running.delivery.drain(within=30)
        store = running.store
        stored = [
            store.fetch(URGENCES.address, "INBOX", m.uid)
            for m in store.messages(URGENCES.address, "INBOX")
        ]
    tokens = Counter(
        found.group(1).decode() for raw in stored if (found := TOKEN.search(raw))
    )
    duplicates = [t for t, count in tokens.items() if count > 1]
    assert duplicates == []
    missing = acknowledged - set(tokens)
    assert missing == set()
