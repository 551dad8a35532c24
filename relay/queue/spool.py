"""The durable spool: what the relay has acknowledged and not yet delivered.

Owns: ``<data_dir>/spool/``. One file per group commit: the messages whose
DATA ended together (one or more), named by the queue id of the first. Each
message is a record: its envelope (JSON: sender, recipients with their DSN
parameters, ENVID, RET, how it arrived, its queue id) and the message,
encrypted with AES-256-GCM under a key derived from the master key, the
envelope as associated data (a record moved or an envelope edited fails to
open): like the mailbox store, the spool reveals no content to whoever
copies the data directory. Files of format 1 (one message, a JSON line, the
queue id as associated data) are still read.

What must stay true:

- :meth:`Spool.write_batch` returns only when the file and its directory
  entry are on disk (``fsync`` of the temporary file, ``rename``, ``fsync``
  of the directory). The SMTP ``250`` of each message in it is sent after
  that, never before: a message acknowledged survives a crash (RFC 5321
  §4.5.5 "the receiver-SMTP MUST NOT lose the message"). Messages whose
  DATA ends together share that one sync round
  (:class:`relay.queue.commit.SpoolCommitter`).
- A file in ``spool/`` is complete: partial writes live as ``tmp/<name>``
  and are removed at start.
- A spool file is removed only after every copy of every message in it is
  durably in the store; the store deduplicates on ``<queue id>:<recipient>``,
  so replaying a file after a crash delivers each copy exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.durable import fsync_dir

if TYPE_CHECKING:
    from collections.abc import Sequence
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


NONCE_SIZE: Final = 12
# A spool file of format 2 starts with this line; a file without it is of
# format 1 (one message: the envelope as a JSON line, then nonce || sealed).
FILE_MAGIC: Final = b"MSSPOOL2\n"
# Format 2 record: envelope length, sealed length (big-endian u32), the
# envelope JSON, then nonce || AES-256-GCM(message).
_RECORD_HEAD: Final = struct.Struct(">II")
# Associated data of a format-2 record: this label, then the envelope JSON
# (which names the queue id): a record moved, or an envelope edited, fails.
_AAD_LABEL: Final = b"mssante spool v2\x00"


class Spool:
    """The spool directory of one relay (sync; call through ``to_thread``).

    A spool *file* holds one or more messages accepted together (one group
    commit, :meth:`write_batch`); it is named after the queue id of its first
    message, and delivery reads, delivers and removes it as one unit.
    """

    def __init__(self, root: Path, key: bytes, *, clean: bool = True) -> None:
        self.root = root
        self._aead = AESGCM(key)
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        # clean=False: another process (the running relay) may be writing.
        for leftover in self._tmp.iterdir() if clean else ():
            leftover.unlink()

    @classmethod
    def open(cls, data_dir: Path, key: bytes, *, clean: bool = True) -> Spool:
        return cls(data_dir / SPOOL_DIR_NAME, key, clean=clean)

    def write(self, envelope: Envelope, message: bytes) -> Envelope:
        """Durably store one message; returns the envelope with its queue id."""
        [written] = self.write_batch([(envelope, message)])
        return written

    def write_batch(self, items: Sequence[tuple[Envelope, bytes]]) -> list[Envelope]:
        """Durably store several messages in one file, with one sync round.

        Returns the envelopes with their queue ids, in order; the file is
        named after the first one. On return the file and its directory
        entry are on disk (``fsync`` of the file, ``rename``, ``fsync`` of
        the directory): every message of the batch may now be acknowledged.
        """
        if not items:
            raise ValueError("an empty batch")
        written: list[Envelope] = []
        parts: list[bytes] = [FILE_MAGIC]
        for envelope, message in items:
            queue_id = envelope.queue_id or new_queue_id(envelope.received_at)
            envelope = dataclasses.replace(envelope, queue_id=queue_id)
            head = envelope.to_json()
            nonce = os.urandom(NONCE_SIZE)
            sealed = nonce + self._aead.encrypt(nonce, message, _AAD_LABEL + head)
            parts += [_RECORD_HEAD.pack(len(head), len(sealed)), head, sealed]
            written.append(envelope)
        name = written[0].queue_id
        tmp = self._tmp / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(b"".join(parts))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.rename(self.root / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(self.root)
        return written

    def read(self, name: str) -> list[tuple[Envelope, bytes]]:
        """Every message of the spool file ``name``, in the order written."""
        try:
            data = (self.root / name).read_bytes()
        except FileNotFoundError:
            raise SpoolError(f"spool file {name}: not in the spool") from None
        if data.startswith(FILE_MAGIC):
            return self._read_records(name, memoryview(data)[len(FILE_MAGIC) :])
        return [self._read_format_1(name, data)]

    def _read_records(
        self, name: str, data: memoryview
    ) -> list[tuple[Envelope, bytes]]:
        out: list[tuple[Envelope, bytes]] = []
        offset = 0
        while offset < len(data):
            if offset + _RECORD_HEAD.size > len(data):
                raise SpoolError(f"spool file {name}: truncated")
            head_size, sealed_size = _RECORD_HEAD.unpack_from(data, offset)
            offset += _RECORD_HEAD.size
            end = offset + head_size + sealed_size
            if end > len(data) or sealed_size < NONCE_SIZE:
                raise SpoolError(f"spool file {name}: truncated")
            head = bytes(data[offset : offset + head_size])
            sealed = data[offset + head_size : end]
            offset = end
            try:
                message = self._aead.decrypt(
                    bytes(sealed[:NONCE_SIZE]), sealed[NONCE_SIZE:], _AAD_LABEL + head
                )
            except InvalidTag:
                raise SpoolError(
                    f"spool file {name}: a message fails its integrity check"
                ) from None
            out.append((self._envelope(name, head), message))
        return out

    def _read_format_1(self, name: str, data: bytes) -> tuple[Envelope, bytes]:
        head, sep, sealed = data.partition(b"\n")
        if not sep:
            raise SpoolError(f"spool file {name}: truncated")
        envelope = self._envelope(name, head)
        try:
            message = self._aead.decrypt(
                sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], envelope.queue_id.encode()
            )
        except InvalidTag:
            raise SpoolError(
                f"spool file {name}: message fails its integrity check"
            ) from None
        return envelope, message

    @staticmethod
    def _envelope(name: str, head: bytes) -> Envelope:
        try:
            return Envelope.from_json(head)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"spool file {name}: unreadable envelope") from exc

    def remove(self, name: str) -> None:
        # No directory fsync: if a crash forgets the removal, the file is
        # delivered again and the store's delivery keys make that a no-op.
        with contextlib.suppress(FileNotFoundError):
            (self.root / name).unlink()

    def pending(self) -> list[str]:
        """Spool file names in arrival order."""
        return sorted(p.name for p in self.root.iterdir() if p.is_file())
