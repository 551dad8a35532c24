"""The audit trail: one JSON line per security decision, chained and keyed.

Owns: the closed catalogue of audit events (:class:`AuditEvent`), the
redaction of what must never be written, the append-only file
``<data_dir>/audit.jsonl``, its verification and its queries.

What must stay true:

- **Append-only and chained.** Each record carries ``seq`` (1, 2, ...),
  ``prev`` (the ``mac`` of the record before it, ``""`` for the first) and
  ``mac``: HMAC-SHA256, under a key derived from the master key, over the
  canonical JSON of the record without ``mac``. A modified, removed, inserted
  or reordered record breaks the chain at a line :func:`verify` names. Only a
  holder of the master key can recompute the chain; a stolen copy of the file
  cannot be rewritten into a valid one. Cutting records off the end is not
  detectable from the file alone (the last record is simply earlier): the
  relay logs ``audit.opened`` with the head it found at each start, and
  operators ship the file to write-once storage.
- **Several writers, one chain.** The relay and admin commands (``mssante
  directory ...``) append to the same file. Each append takes an exclusive
  ``flock``, re-reads the head when another process wrote since, then writes
  and flushes its line, or the lines of a batch (:meth:`AuditTrail.together`)
  in one write. A process crash loses no flushed record.
- **Never health data or secrets.** Records hold who, when, which mailbox,
  the decision and its reason: never a body, Subject, attachment name or
  credential. :func:`redact` drops such keys whatever the caller passes, and
  Message-IDs are stored as keyed hashes (``message_ref``), so the trail
  can correlate without revealing them.
- Written through structlog (the service logging library), with our own
  processors: redaction, then timestamp, then the chain.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from collections.abc import Iterator, MutableMapping
    from pathlib import Path


class AuditEvent(enum.StrEnum):
    """Every event the trail may hold (DESIGN §7): dotted, past tense."""

    AUDIT_OPENED = "audit.opened"
    AUTH_SUCCEEDED = "auth.succeeded"
    AUTH_FAILED = "auth.failed"
    AUTH_LOCKED = "auth.locked"
    SMTP_TLS_REFUSED = "smtp.tls.refused"
    SMTP_SENDER_REJECTED = "smtp.sender.rejected"
    SMTP_RECIPIENT_ACCEPTED = "smtp.recipient.accepted"
    SMTP_RECIPIENT_REJECTED = "smtp.recipient.rejected"
    IMAP_LOGIN_SUCCEEDED = "imap.login.succeeded"
    IMAP_LOGIN_FAILED = "imap.login.failed"
    IMAP_ACCESS_REFUSED = "imap.access.refused"
    MESSAGE_ACCEPTED = "message.accepted"
    MESSAGE_REJECTED = "message.rejected"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_READ = "message.read"
    MESSAGE_DELETED = "message.deleted"
    MESSAGE_RELAYED = "message.relayed"
    MESSAGE_DEFERRED = "message.deferred"
    MESSAGE_BOUNCED = "message.bounced"
    MESSAGE_QUEUED = "message.queued"
    QUEUE_CHANGED = "queue.changed"
    DSN_SENT = "dsn.sent"
    MDN_SENT = "mdn.sent"
    PATIENT_NOTICE_SENT = "patient.notice.sent"
    PATIENT_CONTACT_NOTIFIED = "patient.contact.notified"
    PATIENT_CONTACT_FAILED = "patient.contact.failed"
    PATIENT_CONSENT_CHANGED = "patient.consent.changed"
    PATIENT_BREAK_GLASS = "patient.access.break_glass"
    PATIENT_REPORT_SENT = "patient.report.sent"
    PATIENT_ENROLLED = "patient.enrolled"
    ACCOUNT_ACTIVATED = "account.activated"
    ACCOUNT_RECOVERY_REQUESTED = "account.recovery.requested"
    ACCOUNT_RECOVERED = "account.recovered"
    AUDIT_PURGED = "audit.purged"
    SMIME_VERIFICATION_SUCCEEDED = "smime.verification.succeeded"
    SMIME_VERIFICATION_FAILED = "smime.verification.failed"
    SMIME_SEALED = "smime.message.sealed"
    SMIME_ENCRYPTED = "smime.message.encrypted"
    SMIME_ENCRYPTION_SKIPPED = "smime.encryption.skipped"
    DIRECTORY_LOOKUP_FAILED = "directory.lookup.failed"
    DIRECTORY_CHANGED = "directory.entry.changed"
    DIRECTORY_IMPORTED = "directory.import.completed"
    WHITELIST_IMPORTED = "directory.whitelist.imported"
    ACCOUNT_CHANGED = "account.changed"
    RELAY_STARTED = "relay.started"
    RELAY_STOPPED = "relay.stopped"


# Keys that may carry health data or secrets; dropped from every record.
FORBIDDEN_KEYS: Final = frozenset(
    {
        "attachment",
        "attachments",
        "auth_data",
        "body",
        "content",
        "credentials",
        "data",
        "filename",
        "password",
        "secret",
        "subject",
        "token",
    }
)
AUDIT_FILE_NAME: Final = "audit.jsonl"
_KEY_INFO: Final = b"mssante audit trail v1"
_REF_INFO: Final = b"mssante audit message ref v1"


class AuditError(Exception):
    """The trail cannot be written or read."""


def derive_key(master_key: bytes, info: bytes = _KEY_INFO) -> bytes:
    """The trail's HMAC key, derived from the master key (HKDF-SHA256, RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        master_key
    )


def redact(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop every key that could hold content or secrets."""
    for key in [k for k in event_dict if k.lower() in FORBIDDEN_KEYS]:
        del event_dict[key]
    return event_dict


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def _mac(key: bytes, record: dict[str, Any]) -> str:
    return hmac.new(key, _canonical(record), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Head:
    """The last record of the chain: what the next one links to."""

    seq: int = 0
    mac: str = ""


class _ChainedFile:
    """The structlog "logger": appends one chained line under an exclusive lock."""

    def __init__(self, path: Path, key: bytes) -> None:
        self._path = path
        self._key = key
        self._lock = threading.Lock()
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file: IO[bytes] = os.fdopen(fd, "ab")
        self._known_size = -1
        self._head = Head()

    def _refresh_head(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        if size == self._known_size:
            return
        self._head = read_head(self._path)
        self._known_size = size

    def append(self, record: dict[str, Any]) -> Head:
        return self.append_all([record])

    def append_all(self, records: list[dict[str, Any]]) -> Head:
        """Chain and write ``records`` in one locked write (one ``flock``,
        one ``write``): each still gets its own ``seq``, ``prev`` and ``mac``."""
        with self._lock:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            try:
                self._refresh_head()
                lines: list[bytes] = []
                head = self._head
                for record in records:
                    record["seq"] = head.seq + 1
                    record["prev"] = head.mac
                    record["mac"] = _mac(self._key, record)
                    lines.append(_canonical(record) + b"\n")
                    head = Head(record["seq"], record["mac"])
                data = b"".join(lines)
                self._file.write(data)
                self._file.flush()
                # O_APPEND under the exclusive lock: the file grew by exactly
                # this much (no second fstat).
                self._known_size += len(data)
                self._head = head
                return head
            finally:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Records this thread sends in the block are written at its end, in
        one :meth:`append_all` (also when the block raises)."""
        if getattr(self._local, "buffer", None) is not None:
            yield  # already inside a block of this thread
            return
        buffer: list[dict[str, Any]] = []
        self._local.buffer = buffer
        try:
            yield
        finally:
            self._local.buffer = None
            if buffer:
                self.append_all(buffer)

    def sync(self) -> None:
        with self._lock:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()

    # structlog calls the method named after the log level, with the final
    # processor's dict as keyword arguments.
    def msg(self, **record: Any) -> None:  # noqa: ANN401 - JSON values
        buffer: list[dict[str, Any]] | None = getattr(self._local, "buffer", None)
        if buffer is not None:
            buffer.append(record)
        else:
            self.append(record)

    info = msg


def _stamp(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict.setdefault("time", datetime.now(UTC).isoformat(timespec="microseconds"))
    return event_dict


def _as_record(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    return {k: _plain(v) for k, v in event_dict.items()}


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list | set | frozenset):
        return [_plain(v) for v in value]
    return value


class AuditTrail:
    """The append-only audit stream of one data directory.

    ``emit`` is cheap (one locked append and flush) and safe from any thread;
    ``sync`` makes what was written durable (the relay calls it on a timer and
    at shutdown).
    """

    def __init__(self, path: Path, master_key: bytes) -> None:
        self.path = path
        self._key = derive_key(master_key)
        self._ref_key = derive_key(master_key, _REF_INFO)
        self._file = _ChainedFile(path, self._key)
        self._log = structlog.wrap_logger(
            self._file,
            processors=[redact, _stamp, _as_record],
            cache_logger_on_first_use=True,
        )

    def emit(self, event: AuditEvent, **fields: object) -> None:
        """Append one record. Keys in :data:`FORBIDDEN_KEYS` are dropped."""
        self._log.info(event.value, **fields)

    def together(self) -> contextlib.AbstractContextManager[None]:
        """Records emitted by this thread inside the block are chained and
        written in one locked write when it ends (a delivery batch writes its
        ``message.delivered`` records so). Nothing is dropped if the block
        raises; until it ends, the block's records are not in the file."""
        return self._file.together()

    def message_ref(self, message_id: str) -> str:
        """A keyed hash of a Message-ID: correlates records without revealing it."""
        digest = hmac.new(self._ref_key, message_id.encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def sync(self) -> None:
        self._file.sync()

    def close(self) -> None:
        self._file.close()


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        yield from enumerate(f, start=1)


def read_head(path: Path) -> Head:
    """The head of the chain as written (not verified)."""
    last = b""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            block = min(size, 65536)
            f.seek(size - block)
            tail = f.read(block).rstrip(b"\n")
            last = tail.rsplit(b"\n", 1)[-1]
    except FileNotFoundError:
        return Head()
    if not last:
        return Head()
    try:
        record = json.loads(last)
        return Head(int(record["seq"]), str(record["mac"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path}: the last line is not an audit record") from exc


@dataclass(frozen=True, slots=True)
class Verification:
    """The result of :func:`verify`: ``first_bad_line`` is None when intact."""

    records: int
    first_bad_line: int | None = None
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.first_bad_line is None


def verify(path: Path, master_key: bytes) -> Verification:
    """Check the whole chain; name the first line that breaks it and why."""
    key = derive_key(master_key)
    expected = Head()
    count = 0
    for number, raw in _lines(path):
        try:
            record = json.loads(raw)
            mac = record.pop("mac")
            seq = record["seq"]
            prev = record["prev"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return Verification(count, number, "not an audit record")
        if not hmac.compare_digest(str(mac), _mac(key, record)):
            return Verification(count, number, "record modified (MAC mismatch)")
        if seq != expected.seq + 1 or prev != expected.mac:
            return Verification(
                count,
                number,
                f"chain broken: expected record {expected.seq + 1}, found {seq}"
                " (a record was removed, inserted or moved)",
            )
        expected = Head(seq, str(mac))
        count += 1
    return Verification(count)


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record, in order (unverified; run :func:`verify` for that)."""
    for number, raw in _lines(path):
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise AuditError(f"{path}:{number}: not an audit record") from exc
        if isinstance(record, dict):
            yield record


# Fields that name a mailbox in a record; a query by mailbox matches any of them.
MAILBOX_FIELDS: Final = ("actor", "mailbox", "sender", "recipient", "recipients")


def concerning(
    path: Path, addresses: set[str], since: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Records about any of ``addresses`` (sender, recipient, actor, mailbox)."""
    wanted = {a.lower() for a in addresses}
    for record in records(path):
        if since is not None and record.get("time", "") < since.isoformat():
            continue
        for name in MAILBOX_FIELDS:
            value = record.get(name)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and v.lower() in wanted for v in values):
                yield record
                break
