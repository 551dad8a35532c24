"""The relay as a separate process (``mssante serve``), for crash and signal tests.

``write_config`` writes a TOML config for a data directory and the session's
TLS files, with the submission port ephemeral and the other listeners off;
``start`` launches ``mssante serve`` on it and returns the process and the
bound submission port, read from what the command prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sized
    from pathlib import Path


def write_config(tmp_path: Path, tls: Path, *, processes: int = 1) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(
        f"""
[relay]
data_dir = "{tmp_path / "data"}"
domain = "mssante.example"
local_domains = ["mssante.example", "patient.mssante.example", "medecin.mssante.fr", "ch-paris-1.mssante.fr"]

[tls]
cert_file = "{tls / "server.pem"}"
key_file = "{tls / "server.key"}"
trust_anchors_file = "{tls / "ca.pem"}"

[smtp]
processes = {processes}

[smtp.submission]
port = 0
[smtp.submissions]
enabled = false
[smtp.mx]
enabled = false

[auth]
failure_delay = 0.0
argon2_time_cost = 1
argon2_memory_kib = 1024
argon2_parallelism = 1
""",
        encoding="utf-8",
    )
    return path


def start(config: Path, timeout: float = 30) -> tuple[subprocess.Popen[str], int]:
    """``mssante serve --config config``; the process and its submission port."""
    proc, port, _ = start_listening(config, "SMTP submission (STARTTLS)", timeout)
    return proc, port


def start_listening(
    config: Path, listener: str, timeout: float = 30
) -> tuple[subprocess.Popen[str], int, str]:
    """``mssante serve --config config``; the process, the port of
    ``listener`` (as the start banner names it) and the banner up to it."""
    pattern = re.compile(re.escape(listener) + r"\s+127\.0\.0\.1:(\d+)")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli.main import entry_point; entry_point()",
            "--config",
            str(config),
            "serve",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    banner = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner += line
        found = pattern.search(line)
        if found:
            return proc, int(found.group(1)), banner
    proc.kill()
    raise AssertionError("relay did not start: " + banner + (proc.stdout.read() or ""))


async def kill_under_load(
    config: Path,
    load: Callable[[int, int, threading.Event], None],
    *,
    clients: int,
    acked: Sized,
    kill_after: int,
    poll: float = 0.01,
) -> None:
    """Start ``mssante serve``, run ``clients`` threads of ``load(port,
    worker, stop)``, and SIGKILL the relay once ``acked`` holds
    ``kill_after`` acknowledgements (or after 60 s); then stop the load."""
    proc, port = await asyncio.to_thread(start, config)
    stop = threading.Event()
    workers = [
        threading.Thread(target=load, args=(port, w, stop)) for w in range(clients)
    ]
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60
        # The load runs in threads: poll how many got their 250.
        while len(acked) < kill_after and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
