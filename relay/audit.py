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
- **Purged from the start only, and still verifiable.** :func:`purge` drops
  the oldest records (those before a cutoff) and keeps the rest unchanged.
  It first writes an *anchor* next to the file (``audit.anchor``: the
  ``seq`` and ``mac`` of the last purged record, how many were purged, when,
  the previous anchor; MAC'd under the trail's key), then replaces the file
  atomically (new file, fsync, rename, fsync of the directory), all under
  the ``flock`` writers take. :func:`verify` starts from the anchor; a
  forged or edited anchor fails its MAC, a deleted one leaves a chain that
  starts in the middle. A crash between the two steps leaves the old file
  with the new anchor, which still verifies (the anchor's own record must
  then be in the file, at its place), and the purge can run again.
- **Writers follow the replacement.** A process holding the old file open
  sees, under the lock, that it has no link left (``st_nlink == 0``, from
  the ``fstat`` it makes anyway) and reopens the path before writing.
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
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.durable import fsync_dir

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
# The anchor of a purged trail, next to it: ``audit.jsonl`` -> ``audit.anchor``.
ANCHOR_SUFFIX: Final = ".anchor"
_ANCHOR_KIND: Final = "audit.anchor"
_COPY_CHUNK: Final = 1 << 20  # purge copies the kept records 1 MiB at a time
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
        self._file: IO[bytes] = _open_append(path)
        self._known_size = -1
        self._head = Head()

    def _lock_current(self) -> None:
        """``flock`` the file the path names now, reopening it when a purge
        replaced it (the old one has no link left), and refresh the head."""
        while True:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            status = os.fstat(self._file.fileno())
            if status.st_nlink > 0:
                break
            # Replaced by purge() (renamed over): write to the new file.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = _open_append(self._path)
            self._known_size = -1
        if status.st_size != self._known_size:
            self._head = read_head(self._path)
            self._known_size = status.st_size

    def append(self, record: dict[str, Any]) -> Head:
        return self.append_all([record])

    def append_all(self, records: list[dict[str, Any]]) -> Head:
        """Chain and write ``records`` in one locked write (one ``flock``,
        one ``write``): each still gets its own ``seq``, ``prev`` and ``mac``."""
        with self._lock:
            self._lock_current()
            try:
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


def _open_append(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "ab")


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
    """The head of the chain as written (not verified); the anchor's when a
    purge left the file empty."""
    last = b""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            block = min(size, 65536)
            f.seek(size - block)
            tail = f.read(block).rstrip(b"\n")
            last = tail.rsplit(b"\n", 1)[-1]
    except FileNotFoundError:
        pass
    if not last:
        anchor = read_anchor(path)
        return Head() if anchor is None else Head(anchor.seq, anchor.mac)
    try:
        record = json.loads(last)
        return Head(int(record["seq"]), str(record["mac"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path}: the last line is not an audit record") from exc


def anchor_path(path: Path) -> Path:
    """Where the anchor of the trail at ``path`` lives."""
    return path.with_suffix(ANCHOR_SUFFIX)


@dataclass(frozen=True, slots=True, kw_only=True)
class Anchor:
    """What remains of the purged records: the last one's ``seq`` and ``mac``.

    ``previous_seq``/``previous_mac`` are the anchor this one replaced (0 and
    ``""`` for the first purge): a crash between writing the anchor and
    replacing the file leaves a file that still starts after it.
    """

    seq: int
    mac: str
    count: int  # records this purge removed
    cutoff: str  # records before this time were purged (ISO 8601)
    time: str  # when the purge ran
    previous_seq: int = 0
    previous_mac: str = ""

    def fields(self) -> dict[str, Any]:
        return {
            "kind": _ANCHOR_KIND,
            "seq": self.seq,
            "mac": self.mac,
            "count": self.count,
            "cutoff": self.cutoff,
            "time": self.time,
            "previous_seq": self.previous_seq,
            "previous_mac": self.previous_mac,
        }


def read_anchor(path: Path, key: bytes | None = None) -> Anchor | None:
    """The anchor of the trail at ``path``, None when it was never purged.

    With ``key`` (the trail's key), its MAC is checked.

    Raises:
        AuditError: the anchor is unreadable, or (with ``key``) forged or edited.
    """
    where = anchor_path(path)
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        anchor_mac = str(data.pop("anchor_mac"))
        if data.get("kind") != _ANCHOR_KIND:
            raise ValueError(data.get("kind"))
        anchor = Anchor(
            seq=int(data["seq"]),
            mac=str(data["mac"]),
            count=int(data["count"]),
            cutoff=str(data["cutoff"]),
            time=str(data["time"]),
            previous_seq=int(data["previous_seq"]),
            previous_mac=str(data["previous_mac"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditError(f"{where}: not an audit anchor") from exc
    # The MAC covers the fields as read, so an added key fails too.
    if key is not None and not hmac.compare_digest(anchor_mac, _mac(key, data)):
        raise AuditError(f"{where}: anchor modified or forged (MAC mismatch)")
    return anchor


def _write_durably(path: Path, data: bytes | IO[bytes]) -> None:
    """Replace ``path`` with ``data`` (bytes, or a file read to its end): new
    file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                shutil.copyfileobj(data, f, _COPY_CHUNK)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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
    """Check the whole chain; name the first line that breaks it and why.

    A purged trail is checked from its anchor (whose own MAC is checked
    first: a bad anchor is reported as line 0).
    """
    key = derive_key(master_key)
    try:
        anchor = read_anchor(path, key)
    except AuditError as exc:
        return Verification(0, 0, str(exc))
    starts = [Head()]
    if anchor is not None:
        # The file starts after the anchor, or (a purge interrupted before it
        # replaced the file) after the previous one.
        starts = [
            Head(anchor.seq, anchor.mac),
            Head(anchor.previous_seq, anchor.previous_mac),
        ]
    expected = starts[0]
    count = 0
    anchor_seen = anchor is None
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
        if number == 1 and len(starts) == 2 and seq == starts[1].seq + 1:
            expected = starts[1]
        if seq != expected.seq + 1 or prev != expected.mac:
            return Verification(
                count,
                number,
                f"chain broken: expected record {expected.seq + 1}, found {seq}"
                " (a record was removed, inserted or moved)",
            )
        if anchor is not None and seq == anchor.seq:
            if not hmac.compare_digest(str(mac), anchor.mac):
                return Verification(count, number, "record differs from the anchor's")
            anchor_seen = True
        expected = Head(seq, str(mac))
        count += 1
    if not anchor_seen:
        assert anchor is not None  # noqa: S101 - anchor_seen starts True without
        if expected.seq < anchor.seq:
            # The anchor names a record the file never reached.
            return Verification(count, count + 1, "the trail ends before its anchor")
    return Verification(count)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What :func:`purge` did: ``purged`` records removed, ``kept`` left."""

    purged: int
    kept: int
    anchor: Anchor | None  # None when nothing was purged


def purge(
    path: Path, master_key: bytes, before: datetime, now: datetime
) -> PurgeResult:
    """Remove the records older than ``before`` (the longest such prefix).

    Holds the writers' ``flock`` throughout; writes the anchor, then the
    new file (see the module docstring). The caller records the purge
    (``audit.purged``) afterwards, as an ordinary append.

    Raises:
        AuditError: the trail does not verify (nothing is purged from a
            broken chain), or cannot be rewritten.
    """
    key = derive_key(master_key)
    if before.tzinfo is None:
        raise ValueError("before: a time zone is required")
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return PurgeResult(0, 0, None)
    try:
        while True:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)  # another purge replaced it meanwhile
            fd = os.open(path, os.O_RDWR)
        return _purge_locked(path, key, master_key, before, now)
    finally:
        os.close(fd)  # releases the lock


def _purge_locked(
    path: Path, key: bytes, master_key: bytes, before: datetime, now: datetime
) -> PurgeResult:
    checked = verify(path, master_key)
    if not checked.intact:
        raise AuditError(
            f"{path}:{checked.first_bad_line}: {checked.problem}; nothing purged"
        )
    previous = read_anchor(path, key)
    cut = 0  # records removed
    start = 0  # byte offset of the first record kept
    cutting = True
    last: dict[str, Any] | None = None
    total = 0
    for _, raw in _lines(path):
        total += 1
        if not cutting:
            continue  # counting what is kept
        record = json.loads(raw)
        # Left by an interrupted purge: the anchor already covers it.
        covered = previous is not None and record["seq"] <= previous.seq
        if not covered:
            if _time_of(record) >= before:
                cutting = False
                continue
            last = record
        cut += 1
        start += len(raw)
    if last is None:
        if cut and previous is not None:
            # Finish an interrupted purge: its anchor is already written.
            _copy_from(path, start)
        return PurgeResult(cut, total - cut, previous if cut else None)
    anchor = Anchor(
        seq=int(last["seq"]),
        mac=str(last["mac"]),
        count=cut,
        cutoff=before.isoformat(),
        time=now.isoformat(timespec="seconds"),
        previous_seq=previous.seq if previous is not None else 0,
        previous_mac=previous.mac if previous is not None else "",
    )
    fields = anchor.fields()
    fields["anchor_mac"] = _mac(key, anchor.fields())
    _write_durably(anchor_path(path), _canonical(fields) + b"\n")
    _copy_from(path, start)
    return PurgeResult(cut, total - cut, anchor)


def _copy_from(path: Path, start: int) -> None:
    """Replace ``path`` with its bytes from ``start`` on (durably)."""
    with path.open("rb") as kept:
        kept.seek(start)
        _write_durably(path, kept)


def _time_of(record: dict[str, Any]) -> datetime:
    parsed = datetime.fromisoformat(str(record.get("time", "")))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
