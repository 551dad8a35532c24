"""Reading a mailbox over IMAP: the inbox, and the receipts of sent messages.

Owns: the IMAP side of the client, through aioimaplib (implicit TLS, port
993 style: aioimaplib has no STARTTLS), with the same TLS rules as
submission (:func:`mssante._transport.tls_context`: verification always on)
and the same error translation. aioimaplib's untyped responses are turned
into typed values here and nowhere else.

Receipts (DESIGN §5): the relay's DSNs (RFC 3464) carry the ENVID the client
set, which is the Message-ID; MDNs (RFC 8098) carry the original
Message-ID. :meth:`MailboxSession.receipts` reads every
``multipart/report`` in the folder, keeps those about the given sent
messages, and flags a requested MDN that has not come back after
``mdn_overdue_after`` (MSSanté obligation of practice software).
Fetches use ``BODY.PEEK``: reading receipts never marks anything seen.
"""

from __future__ import annotations

import contextlib
import email.policy
import re
from dataclasses import dataclass, field
from datetime import timedelta
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Any, Final, Protocol

import aioimaplib

from mssante._errors import (
    AuthenticationError,
    ConnectError,
    ResponseTimeoutError,
    TransportError,
)
from mssante._transport import tls_context, translated
from mssante.message import (
    MalformedReceiptError,
    parse_dsn,
    parse_mdn,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from datetime import datetime

    from mssante._config import TLSConfig
    from mssante.message import Disposition

# How long practice software waits for a requested read receipt before it
# flags the message (configurable per call).
DEFAULT_MDN_OVERDUE_AFTER: Final = timedelta(days=7)
DEFAULT_IMAP_TIMEOUT: Final = 30.0
_FETCH_HEAD: Final = re.compile(rb"^\d+ FETCH \((.*)$", re.DOTALL)
_UID: Final = re.compile(rb"UID (\d+)")
_FLAGS: Final = re.compile(rb"FLAGS \(([^)]*)\)")
_SIZE: Final = re.compile(rb"RFC822\.SIZE (\d+)")
_HEADER_FIELDS: Final = "MESSAGE-ID FROM SUBJECT DATE CONTENT-TYPE"


class SentRecord(Protocol):
    """What receipts are matched against: a :class:`~mssante.SentMessage`, or
    a record read back from the client traces."""

    @property
    def message_id(self) -> str: ...
    @property
    def read_receipt(self) -> bool: ...
    @property
    def at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class TracedSend:
    """A sent message as the client traces remember it."""

    message_id: str
    read_receipt: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One message of a folder, from its headers (no body was fetched)."""

    uid: int
    flags: frozenset[str]
    size: int
    message_id: str
    sender: str
    subject: str
    date: str
    content_type: str

    @property
    def is_report(self) -> bool:
        return self.content_type.lower().startswith("multipart/report")


@dataclass(frozen=True, slots=True)
class Receipts:
    """What came back for one sent message."""

    message_id: str
    # recipient -> (action, status): "delivered", "failed", "delayed"...
    delivery: dict[str, tuple[str, str]] = field(default_factory=dict)
    # recipient (the MDN's final recipient) -> disposition
    dispositions: dict[str, Disposition] = field(default_factory=dict)
    mdn_requested: bool = False
    mdn_overdue: bool = False


def _items(lines: Sequence[Any]) -> list[tuple[bytes, bytes]]:
    """(fetch attributes line, literal) pairs of an aioimaplib FETCH response."""
    out: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(lines):
        line = bytes(lines[i])
        found = _FETCH_HEAD.match(line)
        if found and line.rstrip().endswith(b"}") and i + 1 < len(lines):
            out.append((line, bytes(lines[i + 1])))
            i += 2
            continue
        i += 1
    return out


class MailboxSession:
    """An authenticated IMAP session (use :meth:`open`)."""

    def __init__(self, client: Any) -> None:  # noqa: ANN401 - aioimaplib.IMAP4_SSL is untyped
        self._imap = client

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        host: str,
        port: int,
        *,
        login: str,
        password: str,
        tls: TLSConfig,
        command_timeout: float = DEFAULT_IMAP_TIMEOUT,
    ) -> AsyncIterator[MailboxSession]:
        ctx = tls_context(tls)
        imap = aioimaplib.IMAP4_SSL(
            host=host, port=port, ssl_context=ctx, timeout=command_timeout
        )
        with translated(f"IMAP {host}:{port}"):
            try:
                await imap.wait_hello_from_server()
            except aioimaplib.AioImapException as exc:
                raise ConnectError(f"IMAP {host}:{port}: no greeting") from exc
            response = await imap.login(login, password)
        if response.result != "OK":
            with contextlib.suppress(Exception):
                await imap.logout()
            raise AuthenticationError(f"IMAP {host}: login refused", response.result)
        try:
            yield cls(imap)
        finally:
            with contextlib.suppress(
                OSError, TransportError, aioimaplib.AioImapException, TimeoutError
            ):
                await imap.logout()

    async def _command(self, what: str, coro: Any) -> Any:  # noqa: ANN401 - aioimaplib
        with translated(f"IMAP {what}"):
            try:
                response = await coro
            except aioimaplib.CommandTimeout as exc:
                raise ResponseTimeoutError(f"IMAP {what}: no answer in time") from exc
            except aioimaplib.AioImapException as exc:
                raise ConnectError(f"IMAP {what}: {exc}") from exc
        if response.result != "OK":
            raise TransportError(f"IMAP {what} refused: {response.result}")
        return response

    async def select(self, folder: str = "INBOX") -> None:
        await self._command(f"SELECT {folder}", self._imap.select(folder))

    async def messages(self, folder: str = "INBOX") -> list[InboxItem]:
        """Every message of ``folder``, from its headers."""
        await self.select(folder)
        response = await self._command(
            "FETCH",
            self._imap.uid(
                "fetch",
                "1:*",
                f"(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({_HEADER_FIELDS})])",
            ),
        )
        items = []
        for attrs, literal in _items(response.lines):
            uid = _UID.search(attrs)
            if uid is None:
                continue
            flags = _FLAGS.search(attrs)
            size = _SIZE.search(attrs)
            headers = BytesHeaderParser(policy=email.policy.default).parsebytes(literal)
            items.append(
                InboxItem(
                    uid=int(uid.group(1)),
                    flags=frozenset(flags.group(1).decode().split())
                    if flags
                    else frozenset(),
                    size=int(size.group(1)) if size else 0,
                    message_id=str(headers.get("Message-ID", "")).strip(),
                    sender=str(headers.get("From", "")),
                    subject=str(headers.get("Subject", "")),
                    date=str(headers.get("Date", "")),
                    content_type=str(headers.get("Content-Type", "text/plain")),
                )
            )
        return sorted(items, key=lambda item: item.uid)

    async def fetch(self, uid: int, folder: str = "INBOX") -> bytes:
        """The whole message, without marking it seen (``BODY.PEEK[]``)."""
        await self.select(folder)
        response = await self._command(
            "FETCH", self._imap.uid("fetch", str(uid), "(BODY.PEEK[])")
        )
        for _, literal in _items(response.lines):
            return literal
        raise TransportError(f"IMAP FETCH: no message with UID {uid} in {folder}")

    async def delete(self, uid: int, folder: str = "INBOX") -> None:
        """Delete one message: ``\\Deleted`` then ``UID EXPUNGE`` (RFC 4315 §2.1)."""
        await self.select(folder)
        await self._command(
            "STORE", self._imap.uid("store", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
        )
        await self._command("UID EXPUNGE", self._imap.uid("expunge", str(uid)))

    async def receipts(
        self,
        sent: Sequence[SentRecord],
        *,
        now: datetime,
        folder: str = "INBOX",
        mdn_overdue_after: timedelta = DEFAULT_MDN_OVERDUE_AFTER,
    ) -> list[Receipts]:
        """The DSNs and MDNs about each of ``sent``, in the same order."""
        wanted = {s.message_id: s for s in sent}
        delivery: dict[str, dict[str, tuple[str, str]]] = {m: {} for m in wanted}
        dispositions: dict[str, dict[str, Disposition]] = {m: {} for m in wanted}
        for item in await self.messages(folder):
            if not item.is_report:
                continue
            raw = await self.fetch(item.uid, folder)
            self._read_report(raw, wanted, delivery, dispositions)
        out = []
        for s in sent:
            overdue = (
                s.read_receipt
                and not dispositions[s.message_id]
                and now - s.at > mdn_overdue_after
            )
            out.append(
                Receipts(
                    message_id=s.message_id,
                    delivery=delivery[s.message_id],
                    dispositions=dispositions[s.message_id],
                    mdn_requested=s.read_receipt,
                    mdn_overdue=overdue,
                )
            )
        return out

    @staticmethod
    def _read_report(
        raw: bytes,
        wanted: dict[str, SentRecord],
        delivery: dict[str, dict[str, tuple[str, str]]],
        dispositions: dict[str, dict[str, Disposition]],
    ) -> None:
        with contextlib.suppress(MalformedReceiptError):
            dsn = parse_dsn(raw)
            key = dsn.original_envelope_id or ""
            if key in wanted:
                for r in dsn.recipients:
                    delivery[key][r.final_recipient] = (r.action.value, r.status)
            return
        with contextlib.suppress(MalformedReceiptError):
            mdn = parse_mdn(raw)
            key = mdn.original_message_id or ""
            if key in wanted:
                dispositions[key][mdn.final_recipient] = mdn.disposition
