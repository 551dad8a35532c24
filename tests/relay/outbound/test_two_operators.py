"""Mail between two operators over mutual TLS: delivery, replies, DSNs, refusals.

Two real relays (A and B) on loopback, a real DNS server answering MX for
both domains; everything goes through SMTP submission, A's outbound queue,
B's MX listener and B's store, and back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest

from mssante import parse_dsn
from relay.queue.outbound import State
from tests.relay.outbound.conftest import (
    DOCTOR_A,
    DOCTOR_B,
    DOMAIN_B,
    IP_B,
    MX_B,
    message,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.relay.outbound.conftest import Certificates, Pair, Side


def _dsns(side: Side, address: str) -> list[bytes]:
    return [m for m in side.messages(address) if b"multipart/report" in m]


def _not_dsns(side: Side, address: str) -> list[bytes]:
    return [m for m in side.messages(address) if b"multipart/report" not in m]


async def test_a_message_crosses_operators_and_the_reply_comes_back(
    operators: Callable[..., contextlib.AbstractAsyncContextManager[Pair]],
) -> None:
    async with operators() as pair:
        original = message(DOCTOR_A, DOCTOR_B)
        assert await pair.send(pair.a, [DOCTOR_B], original) == {}
        await pair.b.wait_for(lambda: len(_not_dsns(pair.b, DOCTOR_B)) == 1)
        received = _not_dsns(pair.b, DOCTOR_B)[0]
        # Dot-stuffing survived both hops; A's trace and B's are both there.
        assert b"\r\n.ligne qui commence par un point\r\n" in received
        assert received.count(b"Received: from") == 2
        assert received.startswith(b"Return-Path: <" + DOCTOR_A.encode() + b">")

        # A records the relay once B's 250 is back, which may come after B
        # stored the message (B stores before it answers).
        await pair.a.wait_for(lambda: len(pair.a.events("message.relayed")) == 1)
        [relayed] = pair.a.events("message.relayed")
        assert relayed["recipient"] == DOCTOR_B
        assert relayed["remote_mta"] == MX_B
        assert relayed["tls"].startswith("TLSv1.3")
        [accepted] = pair.b.events("message.accepted")
        assert accepted["channel"] == "mx"

        # B took NOTIFY=SUCCESS over (it offers DSN): its "delivered" notice
        # comes back to A's sender over MX, with A's ENVID.
        await pair.a.wait_for(lambda: len(_dsns(pair.a, DOCTOR_A)) == 1)
        dsn = parse_dsn(_dsns(pair.a, DOCTOR_A)[0])
        assert dsn.original_envelope_id == "env-1"
        assert [(r.final_recipient, r.action.value) for r in dsn.recipients] == [
            (DOCTOR_B, "delivered")
        ]

        reply = message(
            DOCTOR_B,
            DOCTOR_A,
            "Re: Compte rendu",
            In_Reply_To="<1@operateur-a.example>",
        )
        assert await pair.send(pair.b, [DOCTOR_A], reply, rcpt_options=[]) == {}
        await pair.a.wait_for(lambda: len(_not_dsns(pair.a, DOCTOR_A)) == 1)
        assert b"Subject: Re: Compte rendu" in _not_dsns(pair.a, DOCTOR_A)[0]

        queue = pair.a.running.outbound_queue
        assert queue is not None
        assert await asyncio.to_thread(queue.messages) == []


async def test_a_recipient_the_peer_refuses_bounces_with_a_failure_notice(
    operators: Callable[..., contextlib.AbstractAsyncContextManager[Pair]],
) -> None:
    unknown = "inconnu@" + DOMAIN_B
    async with operators() as pair:
        assert await pair.send(pair.a, [unknown], message(DOCTOR_A, unknown)) == {}
        await pair.a.wait_for(lambda: len(_dsns(pair.a, DOCTOR_A)) == 1)
        dsn = parse_dsn(_dsns(pair.a, DOCTOR_A)[0])
        [status] = dsn.recipients
        assert (status.final_recipient, status.action.value) == (unknown, "failed")
        assert status.status == "5.1.1"
        assert status.diagnostic_code is not None
        assert "550" in status.diagnostic_code
        [bounced] = pair.a.events("message.bounced")
        assert bounced["recipient"] == unknown
        assert bounced["code"] == "5.1.1"


async def test_a_domain_outside_the_trust_space_is_refused_at_rcpt(
    operators: Callable[..., contextlib.AbstractAsyncContextManager[Pair]],
) -> None:
    async with operators() as pair:
        refused = await pair.send(
            pair.a,
            [DOCTOR_B, "someone@gmail.example"],
            message(DOCTOR_A, DOCTOR_B),
        )
        assert list(refused) == ["someone@gmail.example"]
        code, text = refused["someone@gmail.example"]
        assert (code, text[:5]) == (550, b"5.7.1")


@contextlib.asynccontextmanager
async def _starttls_stripper(port: int) -> AsyncIterator[str]:
    """A man in the middle that hides STARTTLS from B's EHLO reply."""
    address = "127.0.0.4"

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, strip: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                if strip and b"STARTTLS" in line.upper():
                    continue
                writer.write(line)
                await writer.drain()
        writer.close()

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        server_reader, server_writer = await asyncio.open_connection(IP_B, port)
        await asyncio.gather(
            pipe(server_reader, client_writer, strip=True),
            pipe(client_reader, server_writer, strip=False),
        )

    server = await asyncio.start_server(handle, address, port)
    try:
        yield address
    finally:
        server.close()
        await server.wait_closed()


REFUSALS = [
    "not whitelisted",
    "expired",
    "revoked",
    "wrong MX name",
    "STARTTLS stripped",
]


@pytest.mark.parametrize("case", REFUSALS)
async def test_an_unverifiable_peer_gets_nothing(
    operators: Callable[..., contextlib.AbstractAsyncContextManager[Pair]],
    certificates: Certificates,
    case: str,
) -> None:
    knobs: dict[str, object] = {}
    if case == "not whitelisted":
        knobs["a_whitelists"] = certificates.stranger[2]
    elif case == "expired":
        knobs["b_cert"] = certificates.b_expired
    elif case == "revoked":
        knobs["b_cert"] = certificates.b_revoked
        knobs["a_delivery"] = {"crl_files": [str(certificates.crl)]}
    expected = {
        "not whitelisted": "is not whitelisted for " + DOMAIN_B,
        "expired": "certificate has expired",
        "revoked": "certificate revoked",
        "wrong MX name": "Hostname mismatch",
        "STARTTLS stripped": "does not offer STARTTLS",
    }[case]
    async with contextlib.AsyncExitStack() as stack:
        pair = await stack.enter_async_context(operators(**knobs))
        if case == "wrong MX name":
            pair.dns.remove(DOMAIN_B)
            pair.dns.add(DOMAIN_B, "MX", "10 mx.ailleurs.example.")
            pair.dns.add("mx.ailleurs.example", "A", IP_B)
        elif case == "STARTTLS stripped":
            proxy = await stack.enter_async_context(_starttls_stripper(pair.port))
            pair.dns.remove(MX_B)
            pair.dns.add(MX_B, "A", proxy)
        assert await pair.send(pair.a, [DOCTOR_B], message(DOCTOR_A, DOCTOR_B)) == {}
        await pair.a.wait_for(lambda: bool(pair.a.events("message.deferred")))
        deferred = pair.a.events("message.deferred")[0]
        assert expected in deferred["reason"], deferred["reason"]
        assert deferred["code"].startswith("4.")
        assert pair.b.messages(DOCTOR_B) == []
        assert pair.b.events("message.accepted") == []
        queue = pair.a.running.outbound_queue
        assert queue is not None
        [(_, [recipient])] = await asyncio.to_thread(queue.messages)
        assert recipient.state is State.QUEUED
        assert recipient.attempts >= 1


async def test_a_deferral_past_the_queue_lifetime_bounces(
    operators: Callable[..., contextlib.AbstractAsyncContextManager[Pair]],
    certificates: Certificates,
) -> None:
    async with operators(
        a_whitelists=certificates.stranger[2], a_delivery={"queue_lifetime": 1.0}
    ) as pair:
        assert await pair.send(pair.a, [DOCTOR_B], message(DOCTOR_A, DOCTOR_B)) == {}
        await pair.a.wait_for(lambda: len(_dsns(pair.a, DOCTOR_A)) == 1)
        dsn = parse_dsn(_dsns(pair.a, DOCTOR_A)[0])
        [status] = dsn.recipients
        assert status.action.value == "failed"
        assert status.diagnostic_code is not None
        assert "gave up" in status.diagnostic_code
        assert pair.b.messages(DOCTOR_B) == []


async def test_a_sender_who_asked_gets_one_delay_notice(
    operators: Callable[..., contextlib.AbstractAsyncContextManager[Pair]],
    certificates: Certificates,
) -> None:
    async with operators(
        a_whitelists=certificates.stranger[2], a_delivery={"delay_warning": 0.5}
    ) as pair:
        assert await pair.send(pair.a, [DOCTOR_B], message(DOCTOR_A, DOCTOR_B)) == {}
        await pair.a.wait_for(lambda: len(_dsns(pair.a, DOCTOR_A)) == 1)
        dsn = parse_dsn(_dsns(pair.a, DOCTOR_A)[0])
        [status] = dsn.recipients
        assert status.action.value == "delayed"
        assert status.status.startswith("4.")
        assert status.will_retry_until is not None
        # Further deferrals send no second notice.
        await pair.a.wait_for(lambda: len(pair.a.events("message.deferred")) >= 3)
        assert len(_dsns(pair.a, DOCTOR_A)) == 1
