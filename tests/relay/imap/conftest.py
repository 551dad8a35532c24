"""A relay serving IMAP on loopback, and clients to talk to it.

Reuses the SMTP harness (``tests.support.relay_fixtures``: test PKI,
directory seed, accounts) and turns the IMAP listeners on, on ephemeral
ports. Blocking clients (``imaplib``) run in a thread through
``Harness.run`` while the relay serves.
"""

from __future__ import annotations

import dataclasses
import imaplib
import itertools
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from relay.config import ImapSettings, Listener
from tests.support.relay_fixtures import (
    PASSWORD,
    Harness,
    TlsFiles,
    relay_config,
    started,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

WHEN = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
_keys = itertools.count(1)


@pytest.fixture
async def imap_relay(tmp_path: Path, tls_files: TlsFiles) -> AsyncIterator[Harness]:
    cfg = relay_config(tmp_path, tls_files.directory, None)
    listener = Listener(host="127.0.0.1", port=0)
    cfg = dataclasses.replace(
        cfg, imap=ImapSettings(plain=listener, implicit=listener, timeout=30.0)
    )
    async with started(tls_files, cfg) as harness:
        yield harness


def imaps(h: Harness, login: str | None = None) -> imaplib.IMAP4_SSL:
    """An implicit-TLS session, logged in when ``login`` is given."""
    host, port = h.address("imaps")
    client = imaplib.IMAP4_SSL(host, port, ssl_context=h.client_context(), timeout=10)
    if login is not None:
        client.login(login, PASSWORD)
    return client


def message(
    subject: str = "Compte rendu",
    body: str = "Bonjour,\r\nLe compte rendu est joint.\r\n",
    sender: str = "paul.durand@medecin.mssante.fr",
    to: str = "zoe.moreau@medecin.mssante.fr",
    message_id: str = "<m1@medecin.mssante.fr>",
) -> bytes:
    return (
        f"From: Paul Durand <{sender}>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 2 Mar 2026 10:00:00 +0100\r\n"
        f"Message-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def deliver(h: Harness, address: str, data: bytes, folder: str = "INBOX") -> int:
    store = h.running.store
    store.ensure_mailbox(address)
    return store.deliver(
        address,
        data,
        delivery_key=f"test-{next(_keys)}",
        internal_date=WHEN,
        folder=folder,
    ).uid
