"""The spool's group commit: one file and one sync round for the messages
that end together, each still acknowledged only once it is on disk."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.queue.commit import SpoolCommitter
from relay.queue.spool import Envelope, Recipient, Spool, SpoolError

if TYPE_CHECKING:
    from pathlib import Path

KEY = b"s" * 32
AT = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)


def envelope(n: int) -> Envelope:
    return Envelope(
        sender=f"s{n}@medecin.mssante.fr",
        recipients=(Recipient(address="r@ch-paris-1.mssante.fr", notify=("SUCCESS",)),),
        received_at=AT,
        channel="submission",
    )


def test_batch_file_holds_every_message_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", KEY)
    written = spool.write_batch(
        [(envelope(n), b"message %d\r\n" % n) for n in range(3)]
    )
    assert spool.pending() == [written[0].queue_id]
    assert len({e.queue_id for e in written}) == 3
    read = spool.read(written[0].queue_id)
    assert [(e, m) for e, m in read] == [
        (written[n], b"message %d\r\n" % n) for n in range(3)
    ]


def test_batch_file_reveals_no_content(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", KEY)
    [written] = spool.write_batch([(envelope(1), b"Subject: MARKER-42\r\n")])
    assert b"MARKER-42" not in (tmp_path / "spool" / written.queue_id).read_bytes()


def test_edited_envelope_fails_its_integrity_check(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", KEY)
    [written] = spool.write_batch([(envelope(1), b"message\r\n")])
    path = tmp_path / "spool" / written.queue_id
    data = path.read_bytes()
    # Same length, another sender: the record no longer opens.
    path.write_bytes(data.replace(b"s1@medecin", b"x1@medecin"))
    with pytest.raises(SpoolError, match="integrity"):
        spool.read(written.queue_id)


def test_truncated_batch_file_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", KEY)
    [written] = spool.write_batch([(envelope(1), b"message\r\n")])
    path = tmp_path / "spool" / written.queue_id
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(SpoolError, match="truncated"):
        spool.read(written.queue_id)


def test_spool_file_of_format_1_is_still_read(tmp_path: Path) -> None:
    # One message per file, the envelope as a JSON line, the queue id as
    # associated data: what the relay wrote before group commit.
    spool = Spool(tmp_path / "spool", KEY)
    queue_id = "20261123T103000000000-abcdef012345"
    old = envelope(1)
    head = json.loads(old.to_json())
    head["queue_id"] = queue_id
    nonce = os.urandom(12)
    sealed = AESGCM(KEY).encrypt(nonce, b"old message\r\n", queue_id.encode())
    (tmp_path / "spool" / queue_id).write_bytes(
        json.dumps(head).encode() + b"\n" + nonce + sealed
    )
    [(read, message)] = spool.read(queue_id)
    assert read.queue_id == queue_id
    assert read.sender == old.sender
    assert message == b"old message\r\n"


async def test_messages_ending_together_share_one_spool_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", KEY)
    announced: list[str] = []
    committer = SpoolCommitter(spool, announced.append)
    try:
        written = await asyncio.gather(
            *(committer.write(envelope(n), b"message %d\r\n" % n) for n in range(10))
        )
    finally:
        await committer.close()
    # All ten were waiting when the write started: one file, one sync round.
    assert len(announced) == 1
    assert spool.pending() == sorted(announced)
    stored = {e.queue_id: m for name in spool.pending() for e, m in spool.read(name)}
    assert stored == {e.queue_id: b"message %d\r\n" % n for n, e in enumerate(written)}


async def test_a_failed_group_write_fails_every_message_of_the_group(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool", KEY)
    (tmp_path / "spool" / "tmp").rmdir()  # the next file cannot be created
    announced: list[str] = []
    committer = SpoolCommitter(spool, announced.append)
    try:
        results = await asyncio.gather(
            *(committer.write(envelope(n), b"m\r\n") for n in range(3)),
            return_exceptions=True,
        )
    finally:
        await committer.close()
    assert all(isinstance(r, SpoolError) for r in results)
    assert announced == []
    assert spool.pending() == []
