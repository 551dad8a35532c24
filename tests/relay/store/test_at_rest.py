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

if TYPE_CHECKING:
    from relay.store import MasterKey

MARKER = "ZQXJ7MARKERVK2"
PATIENT = "279035121518989@patient.mssante.example"
ROOT = Path(__file__).resolve().parents[3]


def message_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "messages").rglob("*") if p.is_file())


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


def test_flipped_byte_in_message_file_is_detected(
    store: MailStore, store_root: Path
) -> None:
    store.deliver(ALICE, make_message(), delivery_key="k", internal_date=WHEN)
    [path] = message_files(store_root)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptMessageError, match="integrity"):
        store.fetch(ALICE, "INBOX", 1)


def test_swapped_files_in_one_mailbox_fail_to_decrypt(
    store: MailStore, store_root: Path
) -> None:
    store.deliver(
        ALICE, make_message(subject="a"), delivery_key="a", internal_date=WHEN
    )
    store.deliver(
        ALICE, make_message(subject="b"), delivery_key="b", internal_date=WHEN
    )
    first, second = message_files(store_root)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    for uid in (1, 2):
        with pytest.raises(CorruptMessageError):
            store.fetch(ALICE, "INBOX", uid)


def test_file_moved_from_another_mailbox_fails_to_decrypt(
    store: MailStore, store_root: Path
) -> None:
    store.ensure_mailbox(BOB)
    store.deliver(
        ALICE, make_message(subject="alice"), delivery_key="a", internal_date=WHEN
    )
    store.deliver(
        BOB, make_message(subject="bob"), delivery_key="b", internal_date=WHEN
    )
    alice_dir, bob_dir = sorted(p for p in (store_root / "messages").iterdir())
    [alice_file] = list(alice_dir.iterdir())
    [bob_file] = list(bob_dir.iterdir())
    bob_file.write_bytes(alice_file.read_bytes())
    with pytest.raises(CorruptMessageError):
        store.fetch(BOB, "INBOX", 1)


def test_truncated_or_missing_file_is_an_error(
    store: MailStore, store_root: Path
) -> None:
    store.deliver(ALICE, make_message(), delivery_key="a", internal_date=WHEN)
    [path] = message_files(store_root)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptMessageError, match="truncated"):
        store.fetch(ALICE, "INBOX", 1)
    path.unlink()
    with pytest.raises(CorruptMessageError, match="missing"):
        store.fetch(ALICE, "INBOX", 1)


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
    [path] = message_files(store_root)
    assert path.stat().st_mode & 0o777 == 0o600
    assert store_root.stat().st_mode & 0o777 == 0o700
    assert (store_root / "index.sqlite3").stat().st_mode & 0o777 == 0o600


CRASH = textwrap.dedent(
    """
    import os, secrets, sys
    from pathlib import Path
    from relay.store import MailStore, MasterKey
    store = MailStore.open(Path(sys.argv[1]), MasterKey.load(Path(sys.argv[2])))
    mailbox = store._mailbox(sys.argv[3])
    # The file is written and fsynced; the process dies before the commit.
    store._write_file(mailbox, secrets.token_bytes(16), b"Subject: lost\\r\\n\\r\\nx\\r\\n")
    (mailbox.directory / ".tmp-0123").write_bytes(b"half written")
    os._exit(9)
    """
)


def test_crash_between_file_write_and_commit_leaves_an_orphan_that_open_removes(
    store_root: Path, master_key: MasterKey, tmp_path: Path
) -> None:
    with MailStore.open(store_root, master_key, sanity_checks=True) as s:
        s.ensure_mailbox(ALICE)
        s.deliver(ALICE, make_message(), delivery_key="kept", internal_date=WHEN)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH,
            str(store_root),
            str(tmp_path / "master.key"),
            ALICE,
        ],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr.decode()
    assert len(list((store_root / "messages").rglob("*"))) == 4  # dir + 3 files
    with MailStore.open(store_root, master_key, sanity_checks=True) as s:
        assert len(message_files(store_root)) == 1
        assert [m.uid for m in s.messages(ALICE, "INBOX")] == [1]
        assert s.fetch(ALICE, "INBOX", 1) == make_message()
        assert (
            s.deliver(
                ALICE, make_message(), delivery_key="next", internal_date=WHEN
            ).uid
            == 2
        )


def test_sanity_checks_refuse_an_index_row_without_its_file(
    store_root: Path, master_key: MasterKey
) -> None:
    with MailStore.open(store_root, master_key) as s:
        s.ensure_mailbox(ALICE)
        s.deliver(ALICE, make_message(), delivery_key="k", internal_date=WHEN)
    message_files(store_root)[0].unlink()
    with pytest.raises(CorruptMessageError, match="missing"):
        MailStore.open(store_root, master_key, sanity_checks=True)


def test_batch_reads_return_what_exists_and_detect_tampering(
    store: MailStore, store_root: Path
) -> None:
    for k in range(3):
        store.deliver(
            ALICE,
            make_message(subject=f"s{k}"),
            delivery_key=f"k{k}",
            internal_date=WHEN,
        )
    bodies = store.fetch_many(ALICE, "INBOX", [3, 1, 7])
    assert sorted(bodies) == [1, 3]
    assert bodies[3] == store.fetch(ALICE, "INBOX", 3)
    structures = store.structures(ALICE, "INBOX", [2, 9])
    assert list(structures) == [2]
    assert structures[2] == store.structure(ALICE, "INBOX", 2)
    assert store.headers(ALICE, "INBOX", [2, 9]) == {2: structures[2].header}
    store.store_flags(ALICE, "INBOX", [1], ["\\Deleted"], FlagMode.ADD)
    store.expunge(ALICE, "INBOX")
    assert sorted(store.fetch_many(ALICE, "INBOX", [1, 2, 3])) == [2, 3]
    path = message_files(store_root)[0]  # UID 2's or 3's: 1's file is gone
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data) + b"x")
    with pytest.raises(CorruptMessageError, match="size"):
        store.fetch_many(ALICE, "INBOX", [2, 3])
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptMessageError, match="integrity"):
        store.fetch_many(ALICE, "INBOX", [2, 3])
    path.unlink()
    with pytest.raises(CorruptMessageError, match="missing"):
        store.fetch_many(ALICE, "INBOX", [2, 3])
