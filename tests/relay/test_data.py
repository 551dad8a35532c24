"""The DATA reader: end of data, dot-stuffing, pipelining after it, size limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support import smtp_wire
from tests.support.relay_fixtures import DOCTOR, URGENCES

if TYPE_CHECKING:
    from tests.support.relay_fixtures import Harness

HEAD = f"From: {DOCTOR.address}\r\nTo: {URGENCES.address}\r\nMessage-ID: <d@x>\r\n\r\n".encode()


@pytest.mark.parametrize("chunks", [1, 3, 50])
async def test_dot_stuffing_is_undone_and_pipelined_commands_survive(
    relay: Harness, chunks: int
) -> None:
    body = HEAD + b"..leading dot\r\n...two dots\r\nend.\r\n.x\r\n"
    wire = body + b".\r\nNOOP\r\nQUIT\r\n"
    replies = await relay.run(lambda: smtp_wire.transaction(relay, wire, chunks=chunks))
    assert replies[0].startswith(b"250 2.0.0 Ok: queued as")
    assert replies[1].startswith(b"250")  # NOOP, read after the end of data
    assert replies[2].startswith(b"221")
    await relay.delivered()
    [stored] = relay.messages(URGENCES.address)
    assert stored.endswith(b"\r\n\r\n.leading dot\r\n..two dots\r\nend.\r\nx\r\n")


async def test_empty_message_is_read_as_empty(relay: Harness) -> None:
    replies = await relay.run(lambda: smtp_wire.transaction(relay, b".\r\nQUIT\r\n"))
    # No From header: refused by the policy, but the framing was right.
    assert replies[0].startswith(b"554 5.6.0")
    assert replies[1].startswith(b"221")


async def test_oversized_data_is_read_to_its_end_and_refused(relay: Harness) -> None:
    big = HEAD + (b"A" * 76 + b"\r\n") * 4000 + b".\r\nNOOP\r\nQUIT\r\n"
    replies = await relay.run(lambda: smtp_wire.transaction(relay, big, chunks=7))
    assert replies[0].startswith(b"552 5.3.4")
    assert replies[1].startswith(b"250")
    await relay.delivered()
    assert relay.running.store.mailboxes() == []


async def test_long_lines_are_accepted(relay: Harness) -> None:
    body = HEAD + b"x" * 5000 + b"\r\n.\r\nQUIT\r\n"
    replies = await relay.run(lambda: smtp_wire.transaction(relay, body))
    assert replies[0].startswith(b"250 2.0.0")
