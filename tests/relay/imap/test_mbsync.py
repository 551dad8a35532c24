"""A foreign sync client as a subprocess: mbsync (isync) against the relay.

mbsync copies the INBOX to a local Maildir, then a flag set and a message
written locally go back to the server. Skipped when mbsync is absent, except
in CI (``CI`` set), where it must be installed (``.ci/install --test``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import TYPE_CHECKING

import pytest

from tests.relay.imap.conftest import deliver, message
from tests.support.relay_fixtures import DOCTOR, PASSWORD, Harness

if TYPE_CHECKING:
    from pathlib import Path


def _require_mbsync() -> str:
    path = shutil.which("mbsync")
    if path is not None:
        return path
    if os.environ.get("CI"):
        pytest.fail("mbsync not found; CI must install isync (.ci/install --test)")
    pytest.skip("mbsync not installed (apt-get install isync)")


async def _mbsync(binary: str, home: Path, config: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--config",
        str(config),
        "--all",
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = (out + err).decode("utf-8", "replace")
    assert proc.returncode == 0, text
    return text


def _config(h: Harness, home: Path) -> Path:
    _host, port = h.address("imaps")
    mail = home / "mail"
    mail.mkdir()
    config = home / "mbsyncrc"
    config.write_text(
        f"""IMAPAccount relay
Host localhost
Port {port}
User {DOCTOR.address}
Pass {PASSWORD}
SSLType IMAPS
CertificateFile {h.ca_file}

IMAPStore remote
Account relay

MaildirStore local
Path {mail}/
Inbox {mail}/INBOX
SubFolders Verbatim

Channel inbox
Far :remote:
Near :local:
Patterns INBOX
Create Near
Expunge None
SyncState *
Sync All
"""
    )
    config.chmod(0o600)
    return config


def _message_id(data: bytes) -> bytes:
    for line in data.splitlines():
        if line.lower().startswith(b"message-id:"):
            return line.partition(b":")[2].strip()
    return b""


def _files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (folder / sub).iterdir())


async def test_mbsync_syncs_the_inbox_to_a_maildir_and_back(
    imap_relay: Harness, tmp_path: Path
) -> None:
    binary = _require_mbsync()
    h = imap_relay
    deliver(h, DOCTOR.address, message(message_id="<a@medecin.mssante.fr>"))
    deliver(h, DOCTOR.address, message(message_id="<b@medecin.mssante.fr>"))
    home = tmp_path / "home"
    home.mkdir()
    config = _config(h, home)
    inbox = home / "mail" / "INBOX"

    await _mbsync(binary, home, config)
    local = {_message_id(p.read_bytes()): p for p in _files(inbox)}
    assert sorted(local) == [b"<a@medecin.mssante.fr>", b"<b@medecin.mssante.fr>"]

    # Locally: the first message read (Maildir flag S), a new message written.
    seen = local[b"<a@medecin.mssante.fr>"]
    name = seen.name.partition(":")[0]
    seen.rename(inbox / "cur" / f"{name}:2,S")
    draft = message(subject="Réponse locale", message_id="<c@medecin.mssante.fr>")
    (inbox / "new" / "1780000000.mbsync-test.localhost").write_bytes(draft)

    await _mbsync(binary, home, config)
    store = h.running.store
    on_server = {
        _message_id(store.fetch(DOCTOR.address, "INBOX", info.uid)): info
        for info in store.messages(DOCTOR.address, "INBOX")
    }
    assert sorted(on_server) == [
        b"<a@medecin.mssante.fr>",
        b"<b@medecin.mssante.fr>",
        b"<c@medecin.mssante.fr>",
    ]
    assert on_server[b"<a@medecin.mssante.fr>"].seen
    assert not on_server[b"<b@medecin.mssante.fr>"].seen
