"""Group commit under SIGKILL: messages acknowledged together survive together.

Several sessions send one message each at the same moment, so that their
DATA ends together and the relay spools them in shared files (group
commit). The relay is killed with SIGKILL as soon as every session got its
``250``. A new relay on the same data directory must then deliver every one
of those messages, and none twice (RFC 5321 §4.5.5; exactly once through the
store's delivery keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import smtplib
import ssl
import threading
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
    from collections.abc import Callable
    from pathlib import Path

SESSIONS = 8
ROUNDS = 3
TOKEN = re.compile(rb"group-token-(\d+-\d+)")


def _session(
    port: int,
    ca: Path,
    worker: int,
    go: threading.Event,
    logged_in: list[int],
    acked: list[str],
) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    c = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        c.starttls(context=ctx)
        c.login(DOCTOR.address, PASSWORD)
        logged_in.append(worker)
        go.wait(60)  # every session sends at the same moment
        for n in range(ROUNDS):
            token = f"{worker}-{n}"
            body = message(
                DOCTOR.address,
                URGENCES.address,
                message_id=f"<group-{token}@medecin.mssante.fr>",
            ).replace(b"veuillez", f"group-token-{token} veuillez".encode())
            c.sendmail(DOCTOR.address, [URGENCES.address], body)
            acked.append(token)
    finally:
        c.close()  # no QUIT: the relay is killed under the sessions


async def _until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    # The sessions run in threads: poll.
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)


async def test_sigkill_right_after_grouped_250s_loses_and_duplicates_nothing(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    config_path = serve.write_config(tmp_path, tls_files.directory)
    cfg = load(config_path)
    await seed_data_dir(cfg, tls_files)
    proc, port = await asyncio.to_thread(serve.start, config_path)
    acked: list[str] = []
    logged_in: list[int] = []
    go = threading.Event()
    workers = [
        threading.Thread(
            target=_session,
            args=(port, tls_files.directory / "ca.pem", w, go, logged_in, acked),
        )
        for w in range(SESSIONS)
    ]
    try:
        for w in workers:
            w.start()
        await _until(lambda: len(logged_in) == SESSIONS, 60)
        go.set()
        # Kill as soon as every message has its 250.
        await _until(lambda: len(acked) == SESSIONS * ROUNDS, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        go.set()
        for w in workers:
            w.join(30)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
    assert len(set(acked)) == SESSIONS * ROUNDS

    async with run_relay(cfg) as running:
        assert await running.delivery.drain(within=30)
        store = running.store
        stored = [
            store.fetch(URGENCES.address, "INBOX", m.uid)
            for m in store.messages(URGENCES.address, "INBOX")
        ]
        sent = len(store.messages(DOCTOR.address, "Sent"))
    tokens = Counter(
        found.group(1).decode() for raw in stored if (found := TOKEN.search(raw))
    )
    assert [t for t, count in tokens.items() if count > 1] == []
    assert set(acked) - set(tokens) == set()
    assert sent == SESSIONS * ROUNDS
