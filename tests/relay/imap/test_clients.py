"""Other real clients: aioimaplib (IDLE) and curl as a subprocess."""

from __future__ import annotations

import asyncio
import shutil

import aioimaplib
import pytest

from tests.relay.imap.conftest import deliver, message
from tests.support.relay_fixtures import DOCTOR, PASSWORD, Harness


# aioimaplib formats received bytes into its debug message ("%s" % bytes)
# before the logger filters by level: a BytesWarning under python -bb.
@pytest.mark.filterwarnings("ignore::BytesWarning")
async def test_idle_session_is_told_of_a_new_message(imap_relay: Harness) -> None:
    h = imap_relay
    host, port = h.address("imaps")
    client = aioimaplib.IMAP4_SSL(
        host, port, ssl_context=h.client_context(), timeout=10
    )
    await client.wait_hello_from_server()
    await client.login(DOCTOR.address, PASSWORD)
    await client.select("INBOX")
    idle = await client.idle_start(timeout=10)
    # aioimaplib has no event for the "+ idling" continuation: poll its flag.
    while not client.has_pending_idle():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await asyncio.to_thread(deliver, h, DOCTOR.address, message())
    push = await client.wait_server_push(timeout=10)
    client.idle_done()
    await asyncio.wait_for(idle, 10)
    response = await client.fetch("1", "(UID RFC822.SIZE)")
    await client.logout()
    assert push == [b"1 EXISTS"]
    assert response.result == "OK"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_fetches_a_message_over_imaps(imap_relay: Harness) -> None:
    h = imap_relay
    data = message(subject="Par curl")
    deliver(h, DOCTOR.address, data)
    host, port = h.address("imaps")
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--cacert",
        str(h.ca_file),
        "--resolve",
        f"localhost:{port}:{host}",
        "--user",
        f"{DOCTOR.address}:{PASSWORD}",
        f"imaps://localhost:{port}/INBOX;UID=1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    assert out == data
