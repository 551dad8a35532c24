"""Fixtures of the mailbox store tests: a master key file and an open store."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING

import pytest

from relay.store import MailStore, MasterKey

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ALICE = "alice.martin@hopital.example"
BOB = "bob.durand@clinique.example"
WHEN = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def make_message(
    subject: str = "Compte rendu",
    body: str = "Bonjour,\nvoici le compte rendu.\n",
    attachment_name: str | None = None,
    *,
    sender: str = BOB,
    to: str = ALICE,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Dr Bob Durand <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<1234@clinique.example>"
    msg["Date"] = "Sun, 01 Mar 2026 10:30:00 +0100"
    msg.set_content(body)
    if attachment_name is not None:
        msg.add_attachment(
            b"%PDF-1.7 fake\n" * 20,
            maintype="application",
            subtype="pdf",
            filename=attachment_name,
        )
    return bytes(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))


@pytest.fixture
def master_key(tmp_path: Path) -> MasterKey:
    return MasterKey.generate(tmp_path / "master.key")


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_root: Path, master_key: MasterKey) -> Iterator[MailStore]:
    s = MailStore.open(store_root, master_key, sanity_checks=True)
    s.ensure_mailbox(ALICE)
    try:
        yield s
    finally:
        s.close()
