"""Group commit of accepted messages: those whose DATA ends together share
one sync round, in the mailboxes or in the spool.

Owns: the list of messages waiting to be made durable and the one task that
writes them (:class:`SpoolCommitter`).

How it works: an SMTP session that accepted a message awaits
:meth:`SpoolCommitter.write`. If no write is under way, one starts at once
with that message alone (no added latency when the relay is quiet); while a
write is under way, the messages that arrive wait and then go together in
the next one. The bigger the load, the bigger the groups, the fewer syncs
per message; nothing waits on a timer. In a group:

- a message whose recipients are all local mailboxes is stored in them
  directly (:meth:`relay.queue.deliver.LocalDelivery.deliver_direct`): every
  copy of every such message of the group in one store batch (one append
  to a segment file, one ``fdatasync``, one index commit), then the steps
  that follow a delivery; no spool file. The copies are parsed and sealed
  on the event loop first (``prepare_direct``): done in the writer thread,
  that work held the GIL the loop needs between every TLS read and socket
  write;
- the others (a remote recipient, or a direct delivery that failed or was
  refused) go to the spool: one file, one ``fsync`` of the file and one of
  the directory for all of them (:meth:`relay.queue.spool.Spool.write_batch`),
  then delivery picks the file up.

What must stay true:

- :meth:`SpoolCommitter.write` returns only once the message is durable:
  its mailbox copies synced and their index rows committed, or the spool
  file holding it and its directory entry synced. The caller's ``250``
  follows, never precedes, durability (RFC 5321 §4.5.5; DESIGN §4). A
  message is never lost nor refused because the store failed: it falls back
  to the spool with the same queue id (its delivery keys make the copies
  already stored a no-op on replay: exactly once). Only a failed spool write
  fails its messages (each caller answers ``451``).
- The ``accepted`` callback of a message runs once, once it is durable and
  before any of its ``message.delivered`` records (the audit trail reads in
  order). One case answers ``451`` after it ran: copies stored, a success
  notice failed, and the spool write that would retry it failed too; the
  client sends again and the copies exist twice (never lost).
- At most :data:`WRITERS` groups are written at a time, each in a thread
  of the committer's own pool (never behind the spool-file delivery work); a
  group holds at most :data:`MAX_GROUP_MESSAGES` messages and about
  :data:`MAX_GROUP_BYTES` bytes, the rest waits for the next round.
- Once a spool file is written, ``announce`` gets its name (the relay's
  delivery queues it; an acceptor process announces nothing and has no
  direct delivery).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from relay.queue.spool import SpoolError, new_queue_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.queue.deliver import DirectBatch, LocalDelivery
    from relay.queue.spool import Envelope, Spool

# Bounds of one group: enough to take every session's message at once under
# load (the bench runs 20 sessions), small enough that a group of large
# messages does not hold the first one's reply for long.
MAX_GROUP_MESSAGES: Final = 64
MAX_GROUP_BYTES: Final = 16 * 1024 * 1024
# Groups written at the same time, each in a thread of its own. One: since
# the copies are sealed on the event loop, a writer only appends, syncs and
# commits, and the next group gathers while it syncs. Six alternated pairs
# of bench smtp (ours only), one writer against two: 5 KB 750 against 712
# msg/s, 100 KB 543 against 536 (means), relay system CPU 1.0-1.2 s against
# 1.3-1.4 s per run; three writers did worse than two.
WRITERS: Final = 1


@dataclass(frozen=True, slots=True)
class _Waiting:
    """One accepted message waiting for its group's write."""

    envelope: Envelope
    message: bytes
    done: asyncio.Future[Envelope]
    accepted: Callable[[Envelope], None] | None


@dataclass(frozen=True, slots=True)
class _Direct:
    """The messages of a group stored without the spool: their indexes in
    the group, and what the event loop made ready of them."""

    local: list[int]
    batch: DirectBatch


@dataclass(slots=True)
class _Outcome:
    """What the writer thread did with one group."""

    results: list[Envelope | SpoolError]
    spool_file: str | None = None


class SpoolCommitter:
    """Makes accepted messages durable in groups (event-loop side).

    ``direct``: the relay's local delivery, which stores all-local messages
    before their ``250`` instead of spooling them; None (acceptor
    processes, tests of the spool alone): everything is spooled.
    """

    def __init__(
        self,
        spool: Spool,
        announce: Callable[[str], None],
        *,
        direct: LocalDelivery | None = None,
    ) -> None:
        self._spool = spool
        self._announce = announce
        self._direct = direct
        self._waiting: list[_Waiting] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=WRITERS, thread_name_prefix="spool"
        )

    async def write(
        self,
        envelope: Envelope,
        message: bytes,
        *,
        accepted: Callable[[Envelope], None] | None = None,
    ) -> Envelope:
        """Make one message durable; returns the envelope with its queue id.

        ``accepted`` is called (from the writer thread) with that envelope
        once the message is durable, before its delivery is recorded: the
        session's ``message.accepted`` audit record.

        Raises:
            SpoolError: the group's write failed (the message is not spooled).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Envelope] = loop.create_future()
        self._waiting.append(_Waiting(envelope, message, done, accepted))
        if len(self._writers) < WRITERS:
            writer = asyncio.create_task(self._write_groups(), name="spool")
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await done

    def _next_group(self) -> list[_Waiting]:
        size = 0
        count = 0
        for waiting in self._waiting:
            if count and (
                count >= MAX_GROUP_MESSAGES
                or size + len(waiting.message) > MAX_GROUP_BYTES
            ):
                break
            size += len(waiting.message)
            count += 1
        group, self._waiting = self._waiting[:count], self._waiting[count:]
        return group

    async def _write_groups(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                group = self._next_group()
                try:
                    envelopes = _with_queue_ids(group)
                    direct = self._prepare_direct(envelopes, group)
                    outcome = await loop.run_in_executor(
                        self._pool, self._commit, group, envelopes, direct
                    )
                except OSError as exc:
                    # The audit trail could not take the accepted records.
                    outcome = _Outcome([_failure(exc)] * len(group))
                except BaseException:
                    for waiting in group:  # no session waits forever
                        if not waiting.done.done():
                            waiting.done.set_exception(_failure(None))
                    raise
                for waiting, result in zip(group, outcome.results, strict=True):
                    if waiting.done.done():  # the session may have gone meanwhile
                        continue
                    if isinstance(result, SpoolError):
                        waiting.done.set_exception(result)
                    else:
                        waiting.done.set_result(result)
                if outcome.spool_file is not None:
                    self._announce(outcome.spool_file)
        finally:
            # At once, not by the done callback: a message arriving before
            # that callback runs must find a writer slot free.
            self._writers.discard(asyncio.current_task())

    def _prepare_direct(
        self, envelopes: list[Envelope], group: list[_Waiting]
    ) -> _Direct | None:
        """The group's all-local messages, parsed and sealed (on the event
        loop: :meth:`relay.queue.deliver.LocalDelivery.prepare_direct`)."""
        direct = self._direct
        if direct is None:
            return None
        local = [n for n, e in enumerate(envelopes) if direct.accepts_direct(e)]
        if not local:
            return None
        batch = direct.prepare_direct([(envelopes[n], group[n].message) for n in local])
        return _Direct(local, batch)

    def _commit(
        self, group: list[_Waiting], envelopes: list[Envelope], direct: _Direct | None
    ) -> _Outcome:
        """Store or spool one group (blocking, in the writer thread)."""
        results: list[Envelope | SpoolError | None] = [None] * len(group)
        told: set[int] = set()

        def accepted(n: int) -> None:
            told.add(n)
            callback = group[n].accepted
            if callback is not None:
                callback(envelopes[n])

        if direct is not None and self._direct is not None:
            local = direct.local
            delivered = self._direct.deliver_direct(
                direct.batch, stored=lambda k: accepted(local[k])
            )
            for k in delivered:
                results[local[k]] = envelopes[local[k]]
        outcome = _Outcome([])
        rest = [n for n, result in enumerate(results) if result is None]
        if rest:
            try:
                written = self._spool.write_batch(
                    [(envelopes[n], group[n].message) for n in rest]
                )
            except (OSError, SpoolError) as exc:
                for n in rest:
                    results[n] = _failure(exc)
            else:
                outcome.spool_file = written[0].queue_id
                for n, envelope in zip(rest, written, strict=True):
                    results[n] = envelope
                    if n not in told:
                        accepted(n)
        outcome.results = [
            result if result is not None else _failure(None) for result in results
        ]
        return outcome

    async def close(self) -> None:
        """Finish the writes under way (the listeners are closed first)."""
        while self._writers:
            await asyncio.wait(list(self._writers))
        self._pool.shutdown(wait=True)


def _with_queue_ids(group: list[_Waiting]) -> list[Envelope]:
    """The group's envelopes, each with its queue id.

    The queue id comes first: a message that falls back to the spool keeps
    it, so the copies already stored are found again by their delivery keys
    (<queue id>:<recipient>) and not stored twice.
    """
    return [
        w.envelope
        if w.envelope.queue_id
        else dataclasses.replace(
            w.envelope, queue_id=new_queue_id(w.envelope.received_at)
        )
        for w in group
    ]


def _failure(exc: BaseException | None) -> SpoolError:
    reason = type(exc).__name__ if exc is not None else "no result"
    failure = SpoolError(f"spool write failed: {reason}")
    failure.__cause__ = exc
    return failure
