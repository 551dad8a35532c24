"""TLS on the relay's listeners: 1.3, or 1.2 with the four MSSanté suites only."""

from __future__ import annotations

import smtplib
import ssl
import warnings
from typing import TYPE_CHECKING

import pytest

from relay.tls import MSSANTE_TLS12_CIPHERS

if TYPE_CHECKING:
    from tests.support.relay_fixtures import Harness


def _handshake(relay: Harness, ctx: ssl.SSLContext) -> tuple[str, str]:
    host, port = relay.address("submission")
    with smtplib.SMTP(host, port, timeout=10) as c:
        c.starttls(context=ctx)
        sock = c.sock
        assert isinstance(sock, ssl.SSLSocket)
        cipher = sock.cipher()
        assert cipher is not None
        return sock.version() or "", cipher[0]


def _client(
    relay: Harness, version: ssl.TLSVersion, ciphers: str | None = None
) -> ssl.SSLContext:
    ctx = relay.client_context()
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


async def test_tls13_is_offered(relay: Harness) -> None:
    version, _ = await relay.run(lambda: _handshake(relay, relay.client_context()))
    assert version == "TLSv1.3"


@pytest.mark.parametrize("suite", MSSANTE_TLS12_CIPHERS.split(":"))
async def test_tls12_with_each_mssante_suite(relay: Harness, suite: str) -> None:
    ctx = _client(relay, ssl.TLSVersion.TLSv1_2, suite)
    assert await relay.run(lambda: _handshake(relay, ctx)) == ("TLSv1.2", suite)


@pytest.mark.parametrize(
    "suite",
    ["AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305", "DHE-RSA-AES256-GCM-SHA384"],
)
async def test_tls12_with_another_suite_is_refused(relay: Harness, suite: str) -> None:
    ctx = _client(relay, ssl.TLSVersion.TLSv1_2, suite)
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await relay.run(lambda: _handshake(relay, ctx))


async def test_tls11_is_refused(relay: Harness) -> None:
    ctx = relay.client_context()
    with warnings.catch_warnings():
        # Python deprecates TLS 1.1; offering it is the point of this test.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await relay.run(lambda: _handshake(relay, ctx))
