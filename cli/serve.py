"""``mssante serve``: run the relay until SIGTERM or SIGINT.

Shutdown is graceful: the listeners stop accepting, transactions in progress
finish (bounded by the SMTP timeout), queued deliveries drain (bounded), and
the stores and the audit trail are flushed and closed. What is still in the
spool is delivered at the next start.
"""

from __future__ import annotations

import asyncio
import signal
from typing import IO, TYPE_CHECKING

from relay.app import run_relay

if TYPE_CHECKING:
    from relay.app import RunningRelay
    from relay.config import Config


def describe_listeners(running: RunningRelay) -> str:
    names = {
        "submission": "SMTP submission (STARTTLS)",
        "submissions": "SMTP submission (implicit TLS)",
        "mx": "SMTP MX (STARTTLS + operator certificate)",
        "imap": "IMAP (STARTTLS)",
        "imaps": "IMAP (implicit TLS)",
    }
    return "\n".join(
        f"  {names.get(name, name):45} {host}:{port}"
        for name, (host, port) in running.addresses.items()
    )


async def serve(config: Config, out: IO[str], *, banner: str = "") -> int:
    """Run until a stop signal; returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with run_relay(config) as running:
            out.write(
                f"mssante relay listening ({type(loop).__module__.split('.')[0]}"
                f" event loop):\n{describe_listeners(running)}\n"
            )
            if banner:
                out.write(banner)
            out.write("stop with Ctrl-C or SIGTERM\n")
            out.flush()
            await stop.wait()
            out.write("stopping: finishing transactions and deliveries\n")
            out.flush()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    out.write("stopped\n")
    return 0
