"""An SMTP acceptor process: ``python -m relay.acceptor CONFIG PORTS``.

The relay starts ``[smtp] processes - 1`` of these when the config asks for
more than one process (``relay.app.run_relay``). Each one opens the same
directory, accounts, thread store, spool and audit trail, and listens on the
ports the relay bound (``PORTS``: JSON, listener name -> port) with
``SO_REUSEPORT``, so the kernel spreads connections over the processes and
more than one core runs Python code.

What must stay true:

- An acceptor holds no mailbox store: it writes accepted messages to the
  shared spool (fsynced before its 250, like the relay) and the relay's
  delivery finds them there (it polls the spool).
- Everything it shares is safe between processes: the spool (one file per
  group commit, renamed into place), the SQLite stores (WAL), the audit trail
  (one chain under an exclusive lock).
- Login throttling and the verified-login cache are per process.
- It prints ``ready`` on standard output once it listens, and stops on
  SIGTERM after its transactions end, as the relay does.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from relay import eventloop
from relay.app import (
    accepting,
    load_master_key,
    quiet_protocol_traces,
    small_tls_buffers,
    spool_only,
)
from relay.config import load

if TYPE_CHECKING:
    from collections.abc import Sequence


def _now() -> datetime:
    return datetime.now(UTC)


async def serve(config_path: Path, ports: dict[str, int]) -> int:
    cfg = load(config_path)
    quiet_protocol_traces()
    small_tls_buffers()
    master = load_master_key(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with accepting(
        cfg,
        master,
        spool_only,
        clock=_now,
        ports=ports,
        reuse_port=True,
    ):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        sys.stderr.write("usage: python -m relay.acceptor CONFIG PORTS-JSON\n")
        return 2
    ports = {str(k): int(v) for k, v in json.loads(args[1]).items()}
    return eventloop.run(serve(Path(args[0]), ports))


if __name__ == "__main__":
    sys.exit(main())
