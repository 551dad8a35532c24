"""Encryption at rest and crash safety, checked on the files themselves."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from relay.store import CorruptMessageError, FlagMode, MailStore
from tests.relay.store.conftest import ALICE, BOB, WHEN, make_message
from tests.support.store_layout import freed, records, segment_files

if TYPE_CHECKING:
    from relay.store import MasterKey

MARKER = "ZQXJ7MARKERVK2"
PATIENT = "279035121518989@patient.mssante.example"
ROOT = Path(__file__).resolve().parents[3]


def test_stolen_data_directory_reveals_nothing(
    store_root: Path, master_key: MasterKey
) -> None:
    message = make_message(
        subject=f"Bilan {MARKER}",
        body=f"Résultat du patient {MARKER}\n",
        attachment_name=f"{MARKER}.pdf",
        to=PATIENT,
    )
    assert message.count(MARKER.encode()) == 3
    with MailStore.open(store_root, master_key) as s:
        s.ensure_mailbox(PATIENT)
        s.deliver(PATIENT, message, delivery_key=f"q1:{PATIENT}", internal_date=WHEN)
        s.store_flags(PATIENT, "INBOX", [1], ["\\Seen"], FlagMode.ADD)
        s.copy(PATIENT, "INBOX", [1], "Archive")
        # While open (WAL not checkpointed) and after close, nothing leaks.
        leaks = grep(store_root, [MARKER, PATIENT, PATIENT.split("@")[0]])
        assert leaks == []
    assert grep(store_root, [MARKER, PATIENT, PATIENT.split("@")[0]]) == []
    with MailStore.open(store_root, master_key) as s:
        assert s.fetch(PATIENT, "Archive", 1) == message
        assert s.mailboxes() == [PATIENT]


def grep(root: Path, needles: list[str]) -> list[str]:
    return [
        f"{path.relative_to(root)}: {needle}"
        for path in root.rglob("*")
        if path.is_file()
        for data in [path.read_bytes()]
        for needle in needles
        if any(
            form in data
            for form in (
                needle.encode(),
                needle.encode("utf-16-le"),
                needle.lower().encode(),
            )
        )
    ]


def test_flipped_byte_in_a_record_is_detected(
    store: MailStore, store_root: Path
) -> None:
    store.deliver(ALICE, make_message(), delivery_key="k", internal_date=WHEN)
    [record] = records(store_root)
    data = bytearray(record.read(store_root))
    data[len(data) // 2] ^= 0x01
    record.write(store_root, bytes(data))
    with pytest.raises(CorruptMessageError, match="integrity"):
        store.fetch(ALICE, "INBOX", 1)
    with pytest.raises(CorruptMessageError, match="integrity"):
        store.fetch_many(ALICE, "INBOX", [1])


def test_swapped_records_in_one_mailbox_fail_to_decrypt(
    store: MailStore, store_root: Path
) -> None:
    store.deliver(
        ALICE, make_message(subject="a"), delivery_key="a", internal_date=WHEN
    )
    store.deliver(
        ALICE, make_message(subject="b"), delivery_key="b", internal_date=WHEN
    )
    first, second = records(store_root)
    assert first.length == second.length
    a, b = first.read(store_root), second.read(store_root)
    first.write(store_root, b)
    second.write(store_root, a)
    for uid in (1, 2):
        with pytest.raises(CorruptMessageError):
            store.fetch(ALICE, "INBOX", uid)


def test_record_copied_from_another_mailbox_fails_to_decrypt(
    store: MailStore, store_root: Path
) -> None:
    store.ensure_mailbox(BOB)
    store.deliver(
        ALICE, make_message(subject="alice"), delivery_key="a", internal_date=WHEN
    )
    store.deliver(
        BOB, make_message(subject="bob!!"), delivery_key="b", internal_date=WHEN
    )
    alice, bob = sorted(records(store_root), key=lambda r: r.mailbox_id)
    assert alice.length == bob.length
    bob.write(store_root, alice.read(store_root))
    with pytest.raises(CorruptMessageError):
        store.fetch(BOB, "INBOX", 1)


def test_truncated_or_missing_segment_is_an_error(
    store: MailStore, store_root: Path
) -> None:
    store.deliver(ALICE, make_message(), delivery_key="a", internal_date=WHEN)
    [record] = records(store_root)
    with record.path(store_root).open("r+b") as f:
        f.truncate(record.offset + 20)
    with pytest.raises(CorruptMessageError, match="truncated"):
        store.fetch(ALICE, "INBOX", 1)
    record.path(store_root).unlink()
    with pytest.raises(CorruptMessageError, match="missing"):
        store.fetch(ALICE, "INBOX", 1)
    with pytest.raises(CorruptMessageError, match="missing"):
        store.fetch_many(ALICE, "INBOX", [1])


def test_tampered_or_swapped_structure_cache_is_detected(
    store: MailStore, store_root: Path
) -> None:
    store.deliver(
        ALICE, make_message(subject="a"), delivery_key="a", internal_date=WHEN
    )
    store.deliver(
        ALICE, make_message(subject="b"), delivery_key="b", internal_date=WHEN
    )
    db = sqlite3.connect(store_root / "index.sqlite3")
    try:
        (ida, sa), (idb, sb) = db.execute("SELECT id, structure FROM blobs").fetchall()
        db.execute("UPDATE blobs SET structure = ? WHERE id = ?", (sb, ida))
        db.execute("UPDATE blobs SET structure = ? WHERE id = ?", (sa, idb))
        db.commit()
    finally:
        db.close()
    for uid in (1, 2):
        with pytest.raises(CorruptMessageError):
            store.structure(ALICE, "INBOX", uid)


def test_message_files_are_private(store: MailStore, store_root: Path) -> None:
    store.deliver(ALICE, make_message(), delivery_key="a", internal_date=WHEN)
    [path] = segment_files(store_root)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert store_root.stat().st_mode & 0o777 == 0o700
    assert (store_root / "index.sqlite3").stat().st_mode & 0o777 == 0o600


CRASH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from relay.store import FlagMode, MailStore, MasterKey
    from relay.store._segments import Active
    store = MailStore.open(Path(sys.argv[1]), MasterKey.load(Path(sys.argv[2])))
    address = sys.argv[3]
    # A deletion committed, its record not freed yet.
    store._segments.free = lambda ranges: None
    store.store_flags(address, "INBOX", [2], ["\\\\Deleted"], FlagMode.ADD)
    assert store.expunge(address, "INBOX") == [2]
    # Batches' records appended and synced, to the segment of the first
    # session and to a new one; the process dies before their commits.
    path = Path(sys.argv[4])
    fd = os.open(path, os.O_RDWR)
    old = Active(int(path.name, 16), fd, os.fstat(fd).st_size)
    new = store._segments.acquire()
    for active in (old, new):
        store._segments.append(active, [b"never committed" * 100])
        store._segments.sync(active)
    # A file of an older store's layout, half written.
    mailbox = store._mailbox(address)
    mailbox.directory.mkdir()
    (mailbox.directory / ".tmp-0123").write_bytes(b"half written")
    os._exit(9)
    """
)


def test_crash_before_a_commit_or_after_a_deletion_is_repaired_at_open(
    store_root: Path, master_key: MasterKey, tmp_path: Path
) -> None:
    kept = make_message(subject="kept")
    last = make_message(subject="last")
    with MailStore.open(store_root, master_key, sanity_checks=True) as s:
        s.ensure_mailbox(ALICE)
        s.deliver(ALICE, kept, delivery_key="kept", internal_date=WHEN)
        s.deliver(
            ALICE, make_message(subject="gone"), delivery_key="gone", internal_date=WHEN
        )
        s.deliver(ALICE, last, delivery_key="last", internal_date=WHEN)
    kept_record, gone_record, last_record = records(store_root)
    [segment] = segment_files(store_root)
    end = last_record.offset + last_record.length
    assert segment.stat().st_size == end
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH,
            str(store_root),
            str(tmp_path / "master.key"),
            ALICE,
            str(segment),
        ],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr.decode()
    assert segment.stat().st_size > end  # an uncommitted record
    assert len(segment_files(store_root)) == 2
    assert not freed(store_root, gone_record)
    with MailStore.open(store_root, master_key, sanity_checks=True) as s:
        assert records(store_root) == [kept_record, last_record]
        assert segment_files(store_root) == [segment]
        # The tail after the last record is cut; the deletion in the middle
        # is freed.
        assert segment.stat().st_size == end
        assert freed(store_root, gone_record)
        assert [m.uid for m in s.messages(ALICE, "INBOX")] == [1, 3]
        assert s.fetch(ALICE, "INBOX", 1) == kept
        assert s.fetch(ALICE, "INBOX", 3) == last
        assert [
            p.name for p in (store_root / "messages").rglob("*") if p.is_file()
        ] == []


def test_a_segment_whose_records_are_all_freed_is_removed(
    store: MailStore, store_root: Path, master_key: MasterKey
) -> None:
    store.deliver(ALICE, make_message(), delivery_key="a", internal_date=WHEN)
    [record] = records(store_root)
    store.store_flags(ALICE, "INBOX", [1], ["\\Deleted"], FlagMode.ADD)
    store.expunge(ALICE, "INBOX")
    # Freed at once; the file stays while it takes new records.
    assert freed(store_root, record)
    assert segment_files(store_root) == [record.path(store_root)]
    store.close()
    with MailStore.open(store_root, master_key, sanity_checks=True):
        assert segment_files(store_root) == []


def test_a_message_file_of_an_older_store_is_read_and_removed(
    store_root: Path, master_key: MasterKey
) -> None:
    message = make_message(subject="older")
    with MailStore.open(store_root, master_key) as s:
        s.ensure_mailbox(ALICE)
        s.deliver(ALICE, message, delivery_key="a", internal_date=WHEN)
    # Turn the record into a file of the layout before segments: one
    # MSSTORE1 file per message under messages/<mailbox number>/.
    [record] = records(store_root)
    legacy = store_root / "messages" / str(record.mailbox_id) / record.blob_id.hex()
    legacy.parent.mkdir(mode=0o700, exist_ok=True)
    legacy.write_bytes(b"MSSTORE1" + record.read(store_root))
    db = sqlite3.connect(store_root / "index.sqlite3")
    try:
        db.execute("UPDATE blobs SET segment = NULL, seg_offset = NULL")
        db.commit()
    finally:
        db.close()
    with MailStore.open(store_root, master_key, sanity_checks=True) as s:
        assert segment_files(store_root) == []  # no row names it any more
        assert s.fetch(ALICE, "INBOX", 1) == message
        assert s.fetch_many(ALICE, "INBOX", [1]) == {1: message}
        s.store_flags(ALICE, "INBOX", [1], ["\\Deleted"], FlagMode.ADD)
        s.expunge(ALICE, "INBOX")
        assert not legacy.exists()
