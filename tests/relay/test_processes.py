"""Several SMTP acceptor processes on the same ports (``[smtp] processes``)."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import ssl
from typing import TYPE_CHECKING

import psutil

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
    from pathlib import Path

MESSAGES = 24


def _send_many(port: int, ca: Path) -> list[str]:
    """One connection per message, so the kernel spreads them over the processes."""
    ctx = ssl.create_default_context(cafile=str(ca))
    queued = []
    for n in range(MESSAGES):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.starttls(context=ctx)
            c.login(DOCTOR.address, PASSWORD)
            c.mail(DOCTOR.address)
            c.rcpt(URGENCES.address)
            body = message(
                DOCTOR.address,
                URGENCES.address,
                message_id=f"<p{n}@medecin.mssante.fr>",
            )
            code, text = c.data(body)
            assert code == 250, text
            queued.append(text.decode().rsplit(" ", 1)[-1])
    return queued


async def test_two_processes_accept_and_the_relay_delivers_everything(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    path = serve.write_config(tmp_path, tls_files.directory, processes=2)
    cfg = load(path)
    await seed_data_dir(cfg, tls_files)
    proc, port = await asyncio.to_thread(serve.start, path)
    try:
        acceptors = psutil.Process(proc.pid).children()
        assert len(acceptors) == 1
        assert "relay.acceptor" in " ".join(acceptors[0].cmdline())
        queued = await asyncio.to_thread(
            _send_many, port, tls_files.directory / "ca.pem"
        )
        assert len(set(queued)) == MESSAGES
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert not acceptors[0].is_running()
    # Everything accepted, by either process, is delivered once.
    async with run_relay(cfg) as running:
        assert await running.delivery.drain(within=30)
        stored = running.store.messages(URGENCES.address, "INBOX")
        assert len(stored) == MESSAGES
