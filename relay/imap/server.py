"""The asyncio side of the IMAP server: one loop per connection.

Implementation notes:

- The loop reads, hands the bytes to :class:`mssante.proto.imap.Connection`,
  runs each event, and writes what the core returns. It parses nothing.
- One command at a time per connection (the core pauses until the reply).
- Store change notifications arrive in the store's thread and are handed to
  the loop with ``call_soon_threadsafe``; they wait in the selected folder's
  pending list until a command may report them, or wake IDLE at once.
- Every connection has a ``cid`` carried by its log lines and audit records.
- A read that waits longer than ``timeout`` ends the session with ``BYE``
  (RFC 3501 §5.4 asks for at least 30 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from mssante.proto import imap
from relay.imap import commands
from relay.imap._errors import CommandRefusedError
from relay.store import ChangeKind
from relay.tls import PeerCertificate, describe, peer_certificate

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from directory.protocol import Directory
    from relay.accounts import AccountStore, Authenticator, LoginThrottle
    from relay.audit import AuditTrail
    from relay.imap._session import Access, Selected
    from relay.store import Change, MailStore

log = logging.getLogger("mssante.relay.imap")

# RFC 3501 §5.4: the autologout timer is at least 30 minutes.
DEFAULT_IMAP_TIMEOUT: Final = 30 * 60.0
_READ_SIZE: Final = 64 * 1024
# Flush the write buffer during long FETCH responses past this many bytes.
_DRAIN_THRESHOLD: Final = 256 * 1024
_T = TypeVar("_T")
_FOLDER_GONE: Final = frozenset({ChangeKind.FOLDER_DELETED, ChangeKind.FOLDER_RENAMED})
_counter = itertools.count(1)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImapContext:
    """What every connection shares; built by :mod:`relay.app`."""

    store: MailStore
    accounts: AccountStore
    throttle: LoginThrottle
    audit: AuditTrail
    directory: Directory
    tls_context: ssl.SSLContext
    hostname: str
    auth_failure_delay: float
    clock: Callable[[], datetime]
    max_message_size: int
    authenticator: Authenticator
    timeout: float = DEFAULT_IMAP_TIMEOUT


class ImapConnection:
    """One client connection: the core, the streams and the session facts."""

    def __init__(
        self,
        ctx: ImapContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        implicit_tls: bool,
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.conn = imap.Connection(imap.SERVER, max_literal_size=ctx.max_message_size)
        self.tls = implicit_tls
        self.cid = f"imap-{next(_counter)}-{secrets.token_hex(3)}"
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.access: Access | None = None
        self.selected: Selected | None = None
        self.start_tls_after_reply = False
        self.changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._unsent = 0
        self._out: list[bytes] = []

    @property
    def tls_description(self) -> str:
        return describe(self.writer.get_extra_info("ssl_object"))

    @property
    def peer_certificate(self) -> PeerCertificate | None:
        """The verified TLS client certificate (SASL EXTERNAL), if any."""
        return peer_certificate(self.writer.get_extra_info("ssl_object"))

    # -- output ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        # Held until the command's reply is complete (or large): one TLS
        # record and one send for a whole reply, not one per line.
        self._out.append(data)
        self._unsent += len(data)

    def flush(self) -> None:
        """Hand what :meth:`write` holds to the transport."""
        if self._out:
            self.writer.write(b"".join(self._out))
            self._out.clear()

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()
        self._unsent = 0

    def untagged(self, *items: object) -> None:
        self.write(self.conn.send(imap.Untagged(items)))

    def status_ok(self, code: str, text: str) -> None:
        self.write(
            self.conn.send(imap.Untagged.status(imap.Status.OK, text, code=code))
        )

    async def drain_if_needed(self) -> None:
        if self._unsent > _DRAIN_THRESHOLD:
            await self.drain()

    # -- store -----------------------------------------------------------------

    async def store(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:  # noqa: ANN401
        """Run a blocking store call in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def subscribe(self, address: str) -> int:
        def on_change(change: Change) -> None:
            # The store's thread, with its lock held: hand over only.
            self._loop.call_soon_threadsafe(self._changed, change)

        return self.ctx.store.subscribe_changes(on_change, address=address)

    def _changed(self, change: Change) -> None:
        sel = self.selected
        if (
            sel is not None
            and change.address == sel.address
            and change.folder == sel.folder
        ):
            sel.pending.append(change)
            if sel.cache is not None and change.kind in _FOLDER_GONE:
                # The name may come back as another folder whose UIDs
                # start again: nothing cached may answer for them.
                sel.cache.clear()
            self.changed.set()

    # -- input -----------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async with asyncio.timeout(self.ctx.timeout):
                data = await self.reader.read(_READ_SIZE)
        except TimeoutError:
            self.write(
                self.conn.send(imap.Untagged.status(imap.Status.BYE, "Autologout"))
            )
            raise
        self.conn.receive_data(data)

    async def next_event(self) -> imap.Event | imap.Sentinel:
        while True:
            event = self.conn.next_event()
            if event is not imap.NEED_DATA:
                return event
            await self.drain()
            await self._read()

    async def continuation(self, text: str) -> bytes:
        """Send ``+ text`` and return the client's next line (AUTHENTICATE)."""
        self.write(self.conn.send(imap.ContinuationRequest(text)))
        event = await self.next_event()
        if not isinstance(event, imap.ContinuationReceived):
            raise CommandRefusedError(None, "Connection closed")
        return event.line

    async def idle(self) -> bytes:
        """RFC 2177: report changes as they come until the client's line."""
        self.write(self.conn.send(imap.ContinuationRequest("idling")))
        while True:
            event = self.conn.next_event()
            if isinstance(event, imap.ContinuationReceived):
                return event.line
            if event is not imap.NEED_DATA:
                raise CommandRefusedError(None, "Connection closed")
            await self.drain()
            self.changed.clear()
            read = asyncio.ensure_future(self._read())
            woken = asyncio.ensure_future(self.changed.wait())
            try:
                done, _ = await asyncio.wait(
                    {read, woken}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                woken.cancel()
            if woken in done:
                await commands.flush_changes(self, expunge=True)
                self.flush()
            if read not in done:
                try:
                    await read
                finally:
                    pass
            else:
                read.result()

    # -- the loop --------------------------------------------------------------

    async def run(self) -> None:
        caps = " ".join(commands.capabilities(self))
        self.write(
            self.conn.send(
                imap.Untagged.status(
                    imap.Status.OK,
                    f"{self.ctx.hostname} IMAP ready",
                    code=f"CAPABILITY {caps}",
                )
            )
        )
        try:
            while self.conn.state is not imap.State.LOGOUT:
                try:
                    event = await self.next_event()
                except imap.RemoteProtocolError as exc:
                    self.write(
                        self.conn.send(imap.Untagged.status(imap.Status.BYE, str(exc)))
                    )
                    break
                if isinstance(event, imap.ConnectionClosed) or event is imap.PAUSED:
                    break
                if isinstance(event, imap.InvalidCommandReceived):
                    self.write(self.conn.send(event.reply()))
                elif isinstance(event, imap.LiteralAwaited):
                    self.write(
                        self.conn.send(imap.ContinuationRequest("Ready for literal"))
                    )
                elif isinstance(event, imap.CommandReceived):
                    await commands.run_command(self, event)
                    if self.start_tls_after_reply:
                        await self._start_tls()
            await self.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.info(
                "imap connection ended: %s", type(exc).__name__, extra={"cid": self.cid}
            )
        finally:
            await commands.unselect(self)
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.flush()  # a BYE said on the way out (autologout)
            self.writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await self.writer.wait_closed()

    def shutdown(self) -> None:
        """Say goodbye and close the transport; :meth:`run` then ends."""
        self.flush()
        if self.conn.state is not imap.State.LOGOUT:
            with contextlib.suppress(imap.LocalProtocolError):
                self.writer.write(
                    self.conn.send(
                        imap.Untagged.status(imap.Status.BYE, "Server shutting down")
                    )
                )
        # Every loop's stream transport can abort (uvloop's are not
        # subclasses of asyncio's: no isinstance here).
        self.writer.transport.abort()

    async def _start_tls(self) -> None:
        self.start_tls_after_reply = False
        await self.drain()
        await self.writer.start_tls(self.ctx.tls_context)
        self.tls = True


class ImapServer:
    """The factory for ``asyncio.start_server``."""

    def __init__(self, ctx: ImapContext, *, implicit_tls: bool) -> None:
        self._ctx = ctx
        self._implicit_tls = implicit_tls
        self._connections: dict[ImapConnection, asyncio.Task[None] | None] = {}

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = ImapConnection(
            self._ctx, reader, writer, implicit_tls=self._implicit_tls
        )
        self._connections[connection] = asyncio.current_task()
        try:
            await connection.run()
        finally:
            self._connections.pop(connection, None)

    async def close_connections(self) -> None:
        """End the running sessions (at shutdown): ``* BYE``, then close."""
        for connection in list(self._connections):
            connection.shutdown()
        tasks = [t for t in self._connections.values() if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
