"""Every read of a message's content is in the audit trail, \\Seen or not
(DESIGN §7: who read what, when), once per message and selection."""

from __future__ import annotations

from tests.relay.imap.conftest import deliver, imaps, message
from tests.support.relay_fixtures import DOCTOR, Harness


def _reads(h: Harness) -> list[dict[str, object]]:
    return [r for r in h.audit_events() if r["event"] == "message.read"]


async def test_a_peek_at_the_body_is_a_read(imap_relay: Harness) -> None:
    h = imap_relay
    deliver(h, DOCTOR.address, message(message_id="<peek@medecin.mssante.fr>"))

    def peek() -> None:
        client = imaps(h, DOCTOR.address)
        client.select("INBOX", readonly=True)
        client.uid("FETCH", "1", "(BODY.PEEK[])")
        client.uid("FETCH", "1", "(BODY.PEEK[TEXT])")  # same selection: once
        client.uid("FETCH", "1", "(FLAGS BODY.PEEK[HEADER.FIELDS (DATE)])")
        client.logout()

    await h.run(peek)
    [read] = _reads(h)
    assert read["actor"] == DOCTOR.address
    assert read["mailbox"] == DOCTOR.address
    assert read["via"] == "owner"
    assert read["message_ref"] == h.running.audit.message_ref(
        "<peek@medecin.mssante.fr>"
    )
    # Nothing was marked \Seen.
    [info] = h.running.store.messages(DOCTOR.address, "INBOX")
    assert "\\Seen" not in info.flags


async def test_listing_headers_is_not_a_read(imap_relay: Harness) -> None:
    h = imap_relay
    deliver(h, DOCTOR.address, message())

    def headers() -> None:
        client = imaps(h, DOCTOR.address)
        client.select("INBOX")
        client.uid("FETCH", "1:*", "(UID FLAGS ENVELOPE RFC822.SIZE BODY.PEEK[HEADER])")
        client.logout()

    await h.run(headers)
    assert _reads(h) == []


async def test_each_new_selection_audits_its_own_reads(imap_relay: Harness) -> None:
    h = imap_relay
    deliver(h, DOCTOR.address, message())

    def twice() -> None:
        client = imaps(h, DOCTOR.address)
        for _ in range(2):
            client.select("INBOX")
            client.uid("FETCH", "1", "(BODY[])")
        client.logout()

    await h.run(twice)
    assert len(_reads(h)) == 2


async def test_fetch_rfc822_returns_the_message_marks_it_seen_and_is_a_read(
    imap_relay: Harness,
) -> None:
    h = imap_relay
    data = message(message_id="<whole@medecin.mssante.fr>")
    deliver(h, DOCTOR.address, data)

    def whole() -> object:
        client = imaps(h, DOCTOR.address)
        client.select("INBOX")
        status, fetched = client.fetch("1", "(RFC822)")
        assert status == "OK"
        client.logout()
        return fetched[0]

    fetched = await h.run(whole)
    assert isinstance(fetched, tuple)
    assert fetched[1].endswith(data)  # after the Return-Path the relay adds
    [info] = h.running.store.messages(DOCTOR.address, "INBOX")
    assert "\\Seen" in info.flags
    assert len(_reads(h)) == 1
