"""SIGKILL while all-local mail is being stored before its ``250``.

All-local mail skips the spool: the group commit stores its copies in the
mailboxes (one sync round, one index commit per group) and only then answers
``250`` (:mod:`relay.queue.commit`). Eight clients send continuously, so that
store batches are always in flight, and the relay is killed with SIGKILL in
the middle of them. Then:

- the spool is empty: no message went through it;
- after a restart, every message that got its ``250`` is in the recipient's
  INBOX and in the author's Sent folder, exactly once (RFC 5321 §4.5.5;
  delivery keys), and no message is in either twice;
- the audit trail holds, for every acknowledged queue id, its
  ``message.accepted`` record followed by its ``message.delivered`` record:
  both were written before the ``250``.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from collections import Counter
from typing import TYPE_CHECKING

from relay.app import run_relay
from relay.audit import AUDIT_FILE_NAME, records
from relay.config import load
from relay.queue.spool import SPOOL_DIR_NAME
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

    from relay.store import MailStore

CLIENTS = 8
KILL_AFTER_ACKS = 60
TOKEN = re.compile(rb"direct-token-(\d+-\d+)")


def _load(
    port: int,
    ca: Path,
    worker: int,
    acked: dict[str, str],
    stop: threading.Event,
) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as c:
                c.starttls(context=ctx)
                c.login(DOCTOR.address, PASSWORD)
                while not stop.is_set():
                    token = f"{worker}-{n}"
                    n += 1
                    body = message(
                        DOCTOR.address,
                        URGENCES.address,
                        message_id=f"<direct-{token}@medecin.mssante.fr>",
                    ).replace(b"veuillez", f"direct-token-{token} veuillez".encode())
                    c.mail(DOCTOR.address)
                    c.rcpt(URGENCES.address)
                    code, reply = c.data(body)
                    if code == 250:
                        # "250 2.0.0 Ok: queued as <queue id>"
                        acked[token] = reply.decode().rpartition(" ")[2]
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.05)


def _tokens(store: MailStore, address: str, folder: str) -> Counter[str]:
    return Counter(
        found.group(1).decode()
        for m in store.messages(address, folder)
        if (found := TOKEN.search(store.fetch(address, folder, m.uid)))
    )


async def test_sigkill_during_direct_store_batches_loses_and_duplicates_nothing(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    config_path = serve.write_config(tmp_path, tls_files.directory)
    cfg = load(config_path)
    await seed_data_dir(cfg, tls_files)
    acked: dict[str, str] = {}
    ca = tls_files.directory / "ca.pem"
    await serve.kill_under_load(
        config_path,
        lambda port, worker, stop: _load(port, ca, worker, acked, stop),
        clients=CLIENTS,
        acked=acked,
        kill_after=KILL_AFTER_ACKS,
        poll=0.001,
    )
    acknowledged = dict(acked)
    assert len(acknowledged) >= KILL_AFTER_ACKS
    spool = cfg.relay.data_dir / SPOOL_DIR_NAME
    assert [p.name for p in spool.iterdir() if p.is_file()] == []

    async with run_relay(cfg) as running:
        assert await running.delivery.drain(within=30)
        inbox = _tokens(running.store, URGENCES.address, "INBOX")
        sent = _tokens(running.store, DOCTOR.address, "Sent")
    assert [t for t, count in inbox.items() if count > 1] == []
    assert [t for t, count in sent.items() if count > 1] == []
    assert set(acknowledged) - set(inbox) == set()
    assert set(acknowledged) - set(sent) == set()
    # Stored but unacknowledged (killed between the sync and the 250): a
    # client would send it again, as with any SMTP server.
    assert set(inbox) == set(sent)

    events: dict[str, list[str]] = {}
    for record in records(cfg.relay.data_dir / AUDIT_FILE_NAME):
        if record.get("queue_id") in acknowledged.values():
            events.setdefault(record["queue_id"], []).append(record["event"])
    for queue_id in acknowledged.values():
        assert events.get(queue_id, [])[:2] == [
            "message.accepted",
            "message.delivered",
        ], queue_id
