"""The durable spool: what the relay has acknowledged and not yet delivered.

Owns: ``<data_dir>/spool/``. One file per accepted message, named by its
queue id: a first line of JSON (the envelope: sender, recipients with their
DSN parameters, ENVID, RET, how it arrived) and then the message, encrypted
(AES-256-GCM under a key derived from the master key, the queue id as
associated data): like the mailbox store, the spool reveals no content to
whoever copies the data directory.

What must stay true:

- :meth:`Spool.write` returns only when the file and its directory entry are
  on disk (``fsync`` of the temporary file, ``rename``, ``fsync`` of the
  directory). The SMTP ``250`` is sent after it, never before: a message
  acknowledged survives a crash (RFC 5321 §4.5.5 "the receiver-SMTP MUST
  NOT lose the message").
- A file in ``spool/`` is complete: partial writes live as ``tmp/<id>`` and
  are removed at start.
- A spool file is removed only after every recipient's copy is durably in
  the store; the store deduplicates on ``<queue id>:<recipient>``, so
  replaying a file after a crash delivers each copy exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from pathlib import Path

SPOOL_DIR_NAME: Final = "spool"


class SpoolError(Exception):
    """A spool file cannot be written or read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    """One envelope recipient with its RFC 3461 parameters."""

    address: str
    notify: tuple[str, ...] = ()  # NEVER, or any of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None  # original recipient, "rfc822;addr" (xtext decoded)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """What the spool keeps beside the message bytes."""

    sender: str  # "" for a null reverse-path
    recipients: tuple[Recipient, ...]
    received_at: datetime
    channel: str  # "submission" or "mx"
    cid: str = ""
    account: str | None = None  # submission login
    envid: str | None = None  # RFC 3461 ENVID
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    body: str = "7BIT"  # RFC 6152 BODY
    smtputf8: bool = False
    message_ref: str = ""  # keyed hash of the Message-ID, for the audit trail
    queue_id: str = field(default="")

    def to_json(self) -> bytes:
        data = {
            "sender": self.sender,
            "recipients": [
                {"address": r.address, "notify": list(r.notify), "orcpt": r.orcpt}
                for r in self.recipients
            ],
            "received_at": self.received_at.isoformat(),
            "channel": self.channel,
            "cid": self.cid,
            "account": self.account,
            "envid": self.envid,
            "ret": self.ret,
            "body": self.body,
            "smtputf8": self.smtputf8,
            "message_ref": self.message_ref,
            "queue_id": self.queue_id,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        data = json.loads(raw)
        return cls(
            sender=data["sender"],
            recipients=tuple(
                Recipient(
                    address=r["address"], notify=tuple(r["notify"]), orcpt=r["orcpt"]
                )
                for r in data["recipients"]
            ),
            received_at=datetime.fromisoformat(data["received_at"]),
            channel=data["channel"],
            cid=data["cid"],
            account=data["account"],
            envid=data["envid"],
            ret=data["ret"],
            body=data["body"],
            smtputf8=data["smtputf8"],
            message_ref=data["message_ref"],
            queue_id=data["queue_id"],
        )


def new_queue_id(now: datetime) -> str:
    """Sortable by arrival, unique: ``20261123T103000123456-<random>``."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f") + "-" + secrets.token_hex(6)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


NONCE_SIZE: Final = 12


class Spool:
    """The spool directory of one relay (sync; call through ``to_thread``)."""

    def __init__(self, root: Path, key: bytes) -> None:
        self.root = root
        self._aead = AESGCM(key)
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            leftover.unlink()

    @classmethod
    def open(cls, data_dir: Path, key: bytes) -> Spool:
        return cls(data_dir / SPOOL_DIR_NAME, key)

    def write(self, envelope: Envelope, message: bytes) -> Envelope:
        """Durably store a message; returns the envelope with its queue id."""
        queue_id = envelope.queue_id or new_queue_id(envelope.received_at)
        envelope = dataclasses.replace(envelope, queue_id=queue_id)
        tmp = self._tmp / queue_id
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                nonce = os.urandom(NONCE_SIZE)
                sealed = self._aead.encrypt(nonce, message, queue_id.encode())
                f.write(envelope.to_json() + b"\n")
                f.write(nonce + sealed)
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(self.root / queue_id)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(self.root)
        return envelope

    def read(self, queue_id: str) -> tuple[Envelope, bytes]:
        try:
            data = (self.root / queue_id).read_bytes()
        except FileNotFoundError:
            raise SpoolError(f"queue id {queue_id}: not in the spool") from None
        head, sep, sealed = data.partition(b"\n")
        if not sep:
            raise SpoolError(f"queue id {queue_id}: truncated spool file")
        try:
            envelope = Envelope.from_json(head)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"queue id {queue_id}: unreadable envelope") from exc
        try:
            message = self._aead.decrypt(
                sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], queue_id.encode()
            )
        except InvalidTag:
            raise SpoolError(
                f"queue id {queue_id}: message fails its integrity check"
            ) from None
        return envelope, message

    def remove(self, queue_id: str) -> None:
        # No directory fsync: if a crash forgets the removal, the file is
        # delivered again and the store's delivery keys make that a no-op.
        with contextlib.suppress(FileNotFoundError):
            (self.root / queue_id).unlink()

    def pending(self) -> list[str]:
        """Queue ids in arrival order."""
        return sorted(p.name for p in self.root.iterdir() if p.is_file())
