"""Group commit of the spool: messages whose DATA ends together share one sync.

Owns: the list of messages waiting to be spooled and the one task that
writes them (:class:`SpoolCommitter`).

How it works: an SMTP session that accepted a message awaits
:meth:`SpoolCommitter.write`. If no write is under way, one starts at once
with that message alone (no added latency when the relay is quiet); while a
write is under way, the messages that arrive wait and then go together in
the next one: one file, one ``fsync`` of the file and one of the directory
for all of them (:meth:`relay.queue.spool.Spool.write_batch`). The bigger
the load, the bigger the groups, the fewer syncs per message; nothing waits
on a timer.

What must stay true:

- :meth:`SpoolCommitter.write` returns only once the file holding the
  message and its directory entry are synced: the caller's ``250`` follows,
  never precedes, durability (RFC 5321 §4.5.5; DESIGN §4). A failed write
  fails every message of its group (each caller answers ``451``); none is
  reported written unless its file is on disk.
- At most one write runs at a time, in a thread of its own (never behind
  delivery work); a group holds at most :data:`MAX_GROUP_MESSAGES` messages
  and about :data:`MAX_GROUP_BYTES` bytes, the rest waits for the next round.
- Once a file is written, ``announce`` gets its name (the relay's delivery
  queues it; an acceptor process announces nothing).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Final

from relay.queue.spool import SpoolError

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.queue.spool import Envelope, Spool

# Bounds of one group: enough to take every session's message at once under
# load (the bench runs 20 sessions), small enough that a group of large
# messages does not hold the first one's reply for long.
MAX_GROUP_MESSAGES: Final = 64
MAX_GROUP_BYTES: Final = 16 * 1024 * 1024


class SpoolCommitter:
    """Writes accepted messages to the spool in groups (event-loop side)."""

    def __init__(self, spool: Spool, announce: Callable[[str], None]) -> None:
        self._spool = spool
        self._announce = announce
        self._waiting: list[tuple[Envelope, bytes, asyncio.Future[Envelope]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="spool"
        )

    async def write(self, envelope: Envelope, message: bytes) -> Envelope:
        """Spool one message durably; returns the envelope with its queue id.

        Raises:
            SpoolError: the group's write failed (the message is not spooled).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Envelope] = loop.create_future()
        self._waiting.append((envelope, message, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_groups(), name="spool")
        return await done

    def _next_group(self) -> list[tuple[Envelope, bytes, asyncio.Future[Envelope]]]:
        size = 0
        count = 0
        for _, message, _ in self._waiting:
            if count and (
                count >= MAX_GROUP_MESSAGES or size + len(message) > MAX_GROUP_BYTES
            ):
                break
            size += len(message)
            count += 1
        group, self._waiting = self._waiting[:count], self._waiting[count:]
        return group

    async def _write_groups(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                group = self._next_group()
                items = [(envelope, message) for envelope, message, _ in group]
                try:
                    written = await loop.run_in_executor(
                        self._pool, self._spool.write_batch, items
                    )
                except (OSError, SpoolError) as exc:
                    for _, _, done in group:
                        if not done.done():
                            failure = SpoolError(
                                f"spool write failed: {type(exc).__name__}"
                            )
                            failure.__cause__ = exc
                            done.set_exception(failure)
                    continue
                for (_, _, done), envelope in zip(group, written, strict=True):
                    if not done.done():  # the session may have gone meanwhile
                        done.set_result(envelope)
                self._announce(written[0].queue_id)
        finally:
            self._writer = None

    async def close(self) -> None:
        """Finish the writes under way (the listeners are closed first)."""
        while self._writer is not None:
            await asyncio.wait([self._writer])
        self._pool.shutdown(wait=True)
