"""Segment files: where the store appends its encrypted message records.

Owns: the files under ``root/segments/`` and the list of segments open for
appending. Like Dovecot's mdbox ("m.N" files), a segment holds many
messages, so storing a message creates no file: a batch of deliveries is one
append and one ``fdatasync``, whatever the number of messages and mailboxes.

Layout of a segment file (``segments/<16 hex digits>``)::

    b"MSSEGMT1"                      header, written when the file is made
    record, record, ...              back to back, never rewritten

A record is one message sealed under its mailbox's data key (``nonce ||
ciphertext || tag``, :mod:`relay.store._keys`); the index row of its blob
names the segment and the offset, and its length is the message size plus
:data:`RECORD_OVERHEAD`. Nothing in a segment names a mailbox or a message.

What must stay true:

- A segment's directory entry is durable (file and directory fsynced) before
  a record is appended to it: a record is durable once the segment's data is
  synced (:meth:`Segments.sync`), with no directory sync per message.
- One writer per segment: a batch takes a segment (:meth:`Segments.acquire`),
  appends at its end, and gives it back (:meth:`Segments.release`) only after
  its index commit; a batch that committed nothing truncates the segment back
  to where it began. At most as many segments are open for appending as
  batches ever ran at the same time.
- A freed record is deallocated at once (:meth:`Segments.free` punches a hole
  in the file; where the file system cannot, the range is overwritten with
  zeros): a deleted message's ciphertext leaves the disk with its deletion,
  as it did when each message was a file of its own.
- A segment is removed only when no index row names it and no batch holds
  it (:meth:`Segments.remove`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from relay.durable import fsync_dir
from relay.store._keys import NONCE_SIZE, TAG_SIZE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

SEGMENTS_DIR: Final = "segments"
HEADER: Final = b"MSSEGMT1"
# A record is the sealed message: its size plus the nonce and the tag.
RECORD_OVERHEAD: Final = NONCE_SIZE + TAG_SIZE
# A segment takes no new records past this size (one large message may end
# beyond it); old segments then only shrink, as their records are freed.
MAX_SEGMENT_BYTES: Final = 64 * 1024 * 1024
# pwritev takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_MAX: Final = 1024
# fallocate(2) modes: deallocate a range, keep the file size.
_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02
_ZEROS: Final = bytes(1024 * 1024)


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):  # not glibc/musl: zeros instead
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", func)


_fallocate = _load_fallocate()


def _punch(fd: int, offset: int, length: int) -> bool:
    """Deallocate a byte range; False when the file system cannot."""
    if _fallocate is None:
        return False
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def _zero(fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), end - offset)], offset)


def segment_name(segment: int) -> str:
    return f"{segment:016x}"


@dataclass(slots=True)
class Active:
    """A segment held by one batch: its id, descriptor and current end."""

    id: int
    fd: int
    size: int


class Segments:
    """The segment files of one store (thread-safe)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._free: list[Active] = []
        self._held: set[int] = set()
        if not directory.is_dir():
            directory.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(directory.parent)

    def path(self, segment: int) -> Path:
        return self.directory / segment_name(segment)

    def on_disk(self) -> list[int]:
        """The ids of the segment files present (other names are ignored)."""
        out: list[int] = []
        for entry in os.scandir(self.directory):
            if len(entry.name) == len(segment_name(0)):
                with contextlib.suppress(ValueError):
                    out.append(int(entry.name, 16))
        return out

    # --- appending --------------------------------------------------------------

    def acquire(self) -> Active:
        """A segment to append to, held until :meth:`release`."""
        with self._lock:
            if self._free:
                return self._free.pop()
        return self._create()

    def _create(self) -> Active:
        while True:
            segment = secrets.randbits(63)
            path = self.path(segment)
            try:
                fd = os.open(
                    path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
            except FileExistsError:  # pragma: no cover (one chance in 2**63)
                continue
            break
        try:
            os.write(fd, HEADER)
            os.fdatasync(fd)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        with self._lock:
            self._held.add(segment)
        return Active(segment, fd, len(HEADER))

    def append(self, active: Active, records: list[bytes]) -> None:
        """Write ``records`` at the segment's end, in order (not synced)."""
        at = active.size
        pending = [memoryview(r) for r in records if r]
        while pending:
            written = os.pwritev(active.fd, pending[:_IOV_MAX], at)
            at += written
            while pending and written >= len(pending[0]):
                written -= len(pending[0])
                pending.pop(0)
            if written:
                pending[0] = pending[0][written:]
        active.size = at

    def sync(self, active: Active) -> None:
        os.fdatasync(active.fd)

    def release(self, active: Active, *, rewind_to: int | None = None) -> None:
        """Give the segment back; ``rewind_to``: drop what was appended from
        there on (a batch that committed nothing)."""
        try:
            if rewind_to is not None and rewind_to < active.size:
                os.ftruncate(active.fd, rewind_to)
                active.size = rewind_to
        except OSError:
            self._close(active)  # never append after a tail we could not cut
            raise
        if active.size >= MAX_SEGMENT_BYTES:
            self._close(active)
            return
        with self._lock:
            self._free.append(active)

    def _close(self, active: Active) -> None:
        with self._lock:
            self._held.discard(active.id)
        os.close(active.fd)

    def held(self, segment: int) -> bool:
        with self._lock:
            return segment in self._held

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
            self._held.clear()
        for active in free:
            os.close(active.fd)

    # --- reading ------------------------------------------------------------------

    @contextlib.contextmanager
    def reader(self) -> Iterator[Reader]:
        """Reads from several segments, each opened once."""
        reader = Reader(self)
        try:
            yield reader
        finally:
            reader.close()

    # --- freeing ------------------------------------------------------------------

    def free(self, ranges: Iterable[tuple[int, int, int]]) -> None:
        """Deallocate (segment, offset, length) ranges whose index rows are
        gone. A segment already removed is skipped."""
        by_segment: dict[int, list[tuple[int, int]]] = {}
        for segment, offset, length in ranges:
            by_segment.setdefault(segment, []).append((offset, length))
        for segment, spans in by_segment.items():
            try:
                fd = os.open(self.path(segment), os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                for offset, length in spans:
                    if not _punch(fd, offset, length):
                        _zero(fd, offset, length)
            finally:
                os.close(fd)

    def remove(self, segment: int) -> None:
        """Remove a segment no index row names, unless a batch holds it."""
        if not self.held(segment):
            self.path(segment).unlink(missing_ok=True)

    def repair(self, segment: int, live: list[tuple[int, int]]) -> None:
        """After a crash: cut the tail past the last live record (a batch
        that never committed) and free every gap between live records (a
        deletion committed but not yet punched). ``live``: (offset, length)
        of the records index rows name."""
        path = self.path(segment)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            end = len(HEADER)
            gaps: list[tuple[int, int, int]] = []
            for offset, length in sorted(live):
                if offset > end:
                    gaps.append((segment, end, offset - end))
                end = max(end, offset + length)
            if os.fstat(fd).st_size > end:
                os.ftruncate(fd, end)
                os.fdatasync(fd)
        finally:
            os.close(fd)
        self.free(gaps)


class Reader:
    """Open segment descriptors for one series of reads."""

    def __init__(self, segments: Segments) -> None:
        self._segments = segments
        self._fds: dict[int, int] = {}

    def read(self, segment: int, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``, or fewer past the end.

        Raises:
            FileNotFoundError: no such segment.
        """
        fd = self._fds.get(segment)
        if fd is None:
            fd = os.open(self._segments.path(segment), os.O_RDONLY | os.O_CLOEXEC)
            self._fds[segment] = fd
        data = os.pread(fd, length, offset)
        if 0 < len(data) < length:  # short read: rare on a regular file
            chunks = [data]
            got = len(data)
            while got < length and (chunk := os.pread(fd, length - got, offset + got)):
                chunks.append(chunk)
                got += len(chunk)
            data = b"".join(chunks)
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
