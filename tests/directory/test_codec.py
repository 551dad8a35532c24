"""The content codec: one encoding per entry, trusted decoding of our own rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import marshal
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from directory import identifiers as ids
from directory.model import (
    Entry,
    Kind,
    Status,
    content_digest,
    decode_content,
    encode_content,
    entry_from_values,
    entry_values,
    kind_of,
    to_record,
)
from directory.sqlite import SqliteDirectory
from tests.directory import samples
from tests.directory.test_contract import all_samples

if TYPE_CHECKING:
    from pathlib import Path

SAMPLES = [*all_samples(), samples.patient(samples.INS_1, qualified=True)]


def digest_input_before(entry: Entry) -> str:
    """What content_digest hashed before the content codec: sorted-key JSON
    of the record without status and source."""
    record = to_record(entry)
    del record["status"], record["source"]
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("entry", SAMPLES, ids=lambda e: type(e).__name__)
def test_content_is_the_sorted_record_so_stored_digests_stay_valid(
    entry: Entry,
) -> None:
    content = encode_content(entry)

    assert content == digest_input_before(entry)
    assert (
        content_digest(entry)
        == hashlib.blake2b(content.encode(), digest_size=16).hexdigest()
    )


@pytest.mark.parametrize("entry", SAMPLES, ids=lambda e: type(e).__name__)
def test_content_decodes_to_an_equal_entry(entry: Entry) -> None:
    kind = kind_of(entry)
    suspended = dataclasses.replace(entry, status=Status.SUSPENDED)

    assert decode_content(kind, encode_content(entry), "active", entry.source) == entry
    assert decode_content(kind, encode_content(entry), "suspended", entry.source) == (
        suspended
    )


@pytest.mark.parametrize("entry", SAMPLES, ids=lambda e: type(e).__name__)
def test_older_full_records_decode_with_status_and_source_from_columns(
    entry: Entry,
) -> None:
    record = to_record(entry)
    record["status"] = "revoked"

    decoded = decode_content(kind_of(entry), json.dumps(record), "active", "x")

    assert decoded == dataclasses.replace(entry, status=Status.ACTIVE, source="x")


@pytest.mark.parametrize("entry", SAMPLES, ids=lambda e: type(e).__name__)
def test_values_cross_marshal_and_come_back_equal(entry: Entry) -> None:
    values = marshal.loads(marshal.dumps(entry_values(entry)))  # noqa: S302 - own bytes

    assert entry_from_values(kind_of(entry), values) == entry


@given(st.text(alphabet="0123456789", min_size=1, max_size=20))
def test_pairwise_luhn_agrees_with_the_textbook_rule(digits: str) -> None:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    assert ids.luhn_valid(digits) == (total % 10 == 0)


async def test_a_second_directory_on_the_file_reads_what_the_first_wrote(
    tmp_path: Path,
) -> None:
    writer = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    reader = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        assert await reader.mailbox(samples.mailbox().address) is None
        await writer.add(samples.mailbox())
        assert await reader.mailbox(samples.mailbox().address) == samples.mailbox()
        await writer.set_status(Kind.MAILBOX, samples.mailbox().address, Status.REVOKED)
        found = await reader.resolve(samples.mailbox().address)
        assert found is not None
        assert found.status is Status.REVOKED
    finally:
        await reader.close()
        await writer.close()
