"""A relay killed (SIGKILL) while it delivers to another operator loses nothing.

Relay A runs as a process (``mssante serve``) and takes mail for operator B
from a client thread; B runs in the test. A is killed once B has received
some of it, while the client is still sending and A still delivering; a new
A on the same data directory must deliver every message A acknowledged.
Duplicates are allowed only as at-least-once permits: a message B took
while A died before recording it (at most one per destination session).
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
from typing import TYPE_CHECKING, Any

from relay.app import run_relay
from relay.config import load, parse
from tests.directory import samples
from tests.relay.outbound.conftest import (
    DOCTOR_A,
    DOCTOR_B,
    DOMAIN_A,
    DOMAIN_B,
    IP_A,
    IP_B,
    PASSWORD,
    Side,
    config_data,
    free_port,
    message,
    seed,
)
from tests.support import serve

if TYPE_CHECKING:
    from pathlib import Path

    from tests.relay.outbound.conftest import Certificates
    from tests.support.dns_server import LoopbackDns

KILL_AFTER = 15  # messages B has when A is killed
TOKEN = re.compile(rb"token-(\d+)")
DESTINATION_SESSIONS = 10  # [delivery] destination_concurrency (default)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for the test config: tables, strings, numbers, lists."""
    scalars: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(_toml(value, f"{prefix}{key}."))
        elif isinstance(value, bool):
            scalars.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            scalars.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            scalars.append(
                f"{key} = [{', '.join(repr(v) for v in value)}]".replace("'", '"')
            )
        else:
            scalars.append(f"{key} = {value}")
    head = f"[{prefix[:-1]}]\n" if prefix else ""
    return head + "\n".join(scalars) + "\n\n" + "".join(tables)


def _submit(port: int, ca: Path, acked: list[str], stop: threading.Event) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # A serves its MX certificate on submission
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.starttls(context=ctx)
                client.login(DOCTOR_A, PASSWORD)
                while not stop.is_set():
                    body = message(DOCTOR_A, DOCTOR_B, f"token-{n}")
                    client.sendmail(DOCTOR_A, [DOCTOR_B], body)
                    acked.append(str(n))
                    n += 1
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.05)


async def test_sigkill_while_delivering_to_another_operator_loses_nothing(
    tmp_path: Path, certificates: Certificates, dns_server: LoopbackDns
) -> None:
    port = free_port()
    common: dict[str, Any] = {
        "port": port,
        "certs": certificates,
        "dns": dns_server,
        "delivery": {},
    }
    data_a = config_data(
        tmp_path / "a", domain=DOMAIN_A, ip=IP_A, cert=certificates.a, **common
    )
    config_a = tmp_path / "a.toml"
    config_a.write_text(_toml(data_a), encoding="utf-8")
    cfg_a = load(config_a)
    cfg_b = parse(
        config_data(
            tmp_path / "b", domain=DOMAIN_B, ip=IP_B, cert=certificates.b, **common
        ),
        tmp_path / "b",
    )
    await seed(cfg_a, DOCTOR_A, samples.RPPS_1, DOMAIN_B, certificates.b[2])
    await seed(cfg_b, DOCTOR_B, samples.RPPS_2, DOMAIN_A, certificates.a[2])

    async with run_relay(cfg_b, drain_timeout=5) as relay_b:
        b = Side("B", DOMAIN_B, DOCTOR_B, relay_b, cfg_b, certificates.ca)

        def received() -> Counter[str]:
            return Counter(
                found.group(1).decode()
                for raw in b.messages(DOCTOR_B)
                if (found := TOKEN.search(raw))
            )

        proc, submission_port = await asyncio.to_thread(serve.start, config_a)
        acked: list[str] = []
        stop = threading.Event()
        sender = threading.Thread(
            target=_submit, args=(submission_port, certificates.ca, acked, stop)
        )
        try:
            sender.start()
            await b.wait_for(lambda: sum(received().values()) >= KILL_AFTER, within=60)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            stop.set()
            sender.join(10)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
        acknowledged = set(acked)
        # Killed mid-stream: some acknowledged messages had not reached B.
        assert len(acknowledged) > KILL_AFTER

        async with run_relay(cfg_a, drain_timeout=5):
            await b.wait_for(lambda: acknowledged <= set(received()), within=60)
        counts = received()
    assert acknowledged <= set(counts)
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= DESTINATION_SESSIONS
