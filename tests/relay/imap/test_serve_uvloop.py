"""IMAP in ``mssante serve`` (uvloop): STARTTLS, and a graceful stop that
says ``* BYE`` to the sessions still open and ends them."""

from __future__ import annotations

import asyncio
import imaplib
import signal
import ssl
import time
from typing import TYPE_CHECKING

from relay.config import load
from tests.support import serve
from tests.support.relay_fixtures import seed_data_dir

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from tests.support.relay_fixtures import TlsFiles


def _stop_with_a_session_open(
    proc: subprocess.Popen[str], port: int, ca: Path
) -> tuple[bytes, float]:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        client.starttls(ssl.create_default_context(cafile=str(ca)))
        assert client.noop()[0] == "OK"  # a command over TLS on uvloop
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        goodbye = client.readline()
        proc.wait(30)
        return goodbye, time.monotonic() - started
    finally:
        client.shutdown()


async def test_starttls_then_stop_says_bye(tmp_path: Path, tls_files: TlsFiles) -> None:
    config = serve.write_config(tmp_path, tls_files.directory)
    with config.open("a", encoding="utf-8") as f:
        f.write("\n[imap.plain]\nport = 0\n[imap.implicit]\nenabled = false\n")
    await seed_data_dir(load(config), tls_files)
    proc, port, banner = await asyncio.to_thread(
        serve.start_listening, config, "IMAP (STARTTLS)"
    )
    try:
        goodbye, took = await asyncio.to_thread(
            _stop_with_a_session_open, proc, port, tls_files.directory / "ca.pem"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert goodbye.startswith(b"* BYE"), goodbye
    assert proc.returncode == 0, output
    assert "(uvloop event loop)" in banner
    assert took < 10
