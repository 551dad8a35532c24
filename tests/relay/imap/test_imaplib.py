"""The IMAP server driven by stdlib imaplib over STARTTLS and implicit TLS."""

from __future__ import annotations

import imaplib
from typing import Any

import pytest

from tests.relay.imap.conftest import deliver, imaps, message
from tests.support.relay_fixtures import (
    DOCTOR,
    PASSWORD,
    PATIENT,
    Harness,
    patient_address,
)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_login_is_disabled_before_starttls_and_works_after(
    imap_relay: Harness,
) -> None:
    h = imap_relay

    def session() -> tuple[str, str]:
        host, port = h.address("imap")
        client = imaplib.IMAP4(host, port, timeout=10)
        caps_before = " ".join(client.capabilities)
        try:
            client.login(DOCTOR.address, PASSWORD)
        except imaplib.IMAP4.error as exc:
            refused = repr(exc.args)
        else:
            refused = ""
        client.starttls(ssl_context=h.client_context())
        typ, _ = client.login(DOCTOR.address, PASSWORD)
        client.logout()
        return refused, caps_before + " / " + typ

    refused, caps = await h.run(session)
    assert "PRIVACYREQUIRED" in refused
    assert "LOGINDISABLED" in caps
    assert "STARTTLS" in caps
    assert caps.endswith("/ OK")


async def test_select_fetch_and_opening_a_message_is_audited(
    imap_relay: Harness,
) -> None:
    h = imap_relay
    deliver(h, DOCTOR.address, message())

    def session() -> dict[str, Any]:
        client = imaps(h, DOCTOR.address)
        out: dict[str, Any] = {}
        out["select"] = client.select("INBOX")
        out["peek"] = client.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out["flags_after_peek"] = client.fetch("1", "(FLAGS)")
        out["body"] = client.fetch("1", "(BODY[TEXT] ENVELOPE RFC822.SIZE)")
        out["flags_after_body"] = client.fetch("1", "(FLAGS)")
        out["structure"] = client.fetch("1", "(BODYSTRUCTURE)")
        client.logout()
        return out

    out = await h.run(session)
    assert out["select"] == ("OK", [b"1"])
    peek = out["peek"]
    assert peek[0] == "OK"
    assert peek[1][0][1] == b"Subject: Compte rendu\r\n\r\n"
    assert b"\\Seen" not in out["flags_after_peek"][1][0]
    body = out["body"][1][0]
    assert body[1] == b"Bonjour,\r\nLe compte rendu est joint.\r\n"
    rest = out["body"][1][1]
    assert b'"Compte rendu"' in rest
    assert b"\\Seen" in out["flags_after_body"][1][0]
    assert b'("text" "plain" ("charset" "utf-8")' in out["structure"][1][0]
    reads = [e for e in h.audit_events() if e["event"] == "message.read"]
    assert len(reads) == 1
    assert reads[0]["actor"] == DOCTOR.address
    assert reads[0]["mailbox"] == DOCTOR.address
    assert "subject" not in reads[0]


async def test_search_keys(imap_relay: Harness) -> None:
    h = imap_relay
    deliver(
        h, DOCTOR.address, message(subject="Bilan sanguin", body="Glycémie normale\r\n")
    )
    deliver(
        h,
        DOCTOR.address,
        message(subject="Radio", sender="urgences@ch-paris-1.mssante.fr"),
    )

    def session() -> dict[str, Any]:
        client = imaps(h, DOCTOR.address)
        client.select("INBOX")
        client.store("2", "+FLAGS", "(\\Flagged)")
        out = {
            "all": client.search(None, "ALL"),
            "subject": client.search(None, "SUBJECT", "bilan"),
            "from": client.search(None, "FROM", "urgences"),
            "body": client.uid(
                "SEARCH",
                "CHARSET",
                "UTF-8",
                "BODY",
                "glycémie".encode(),  # type: ignore[arg-type]  # imaplib sends bytes as they are
            ),
            "flagged": client.search(None, "FLAGGED"),
            "not_or": client.search(None, "NOT", "OR", "FLAGGED", "SUBJECT", "bilan"),
            "since": client.search(None, "SINCE", "1-Mar-2026", "BEFORE", "3-Mar-2026"),
            "larger": client.search(None, "LARGER", "100000"),
        }
        client.logout()
        return out

    out = await h.run(session)
    assert out["all"] == ("OK", [b"1 2"])
    assert out["subject"] == ("OK", [b"1"])
    assert out["from"] == ("OK", [b"2"])
    assert out["body"] == ("OK", [b"1"])
    assert out["flagged"] == ("OK", [b"2"])
    assert out["not_or"] == ("OK", [b""])
    assert out["since"] == ("OK", [b"1 2"])
    assert out["larger"] == ("OK", [b""])


async def test_append_copy_move_expunge_with_uidplus(imap_relay: Harness) -> None:
    h = imap_relay

    def session() -> dict[str, Any]:
        client = imaps(h, DOCTOR.address)
        out: dict[str, Any] = {}
        out["append"] = client.append("INBOX", "(\\Draft)", None, message())
        client.select("INBOX")
        out["copy"] = client.uid("COPY", "1", "Archive")
        out["copyuid"] = client.response("COPYUID")
        out["move"] = client.uid("MOVE", "1", "Trash")
        out["inbox"] = client.search(None, "ALL")
        client.select("Trash")
        client.store("1", "+FLAGS", "(\\Deleted)")
        out["expunge"] = client.expunge()
        out["status"] = client.status("Archive", "(MESSAGES UIDNEXT)")
        out["create"] = client.create("Projets/2026")
        out["list"] = client.list()
        out["rename"] = client.rename("Projets", "Dossiers")
        out["delete"] = client.delete("Dossiers/2026")
        out["lsub"] = client.lsub()
        client.logout()
        return out

    out = await h.run(session)
    assert out["append"][0] == "OK"
    assert b"APPENDUID" in out["append"][1][0]
    assert out["copy"][0] == "OK"
    _, source, dest = out["copyuid"][1][0].split()
    assert (source, dest) == (b"1", b"1")
    assert out["move"][0] == "OK"
    assert out["inbox"] == ("OK", [b""])
    assert out["expunge"] == ("OK", [b"1"])
    assert out["status"] == ("OK", [b'"Archive" (MESSAGES 1 UIDNEXT 2)'])
    names = b"\n".join(out["list"][1])
    assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in names
    assert b'"/" "Projets/2026"' in names
    assert out["rename"][0] == "OK"
    assert out["delete"][0] == "OK"


async def test_changes_reach_a_second_session(imap_relay: Harness) -> None:
    h = imap_relay
    deliver(h, DOCTOR.address, message())

    def sessions() -> tuple[Any, Any, Any]:
        one = imaps(h, DOCTOR.address)
        two = imaps(h, DOCTOR.address)
        one.select("INBOX")
        two.select("INBOX")
        one.store("1", "+FLAGS", "(\\Flagged)")
        one.append("INBOX", None, None, message(message_id="<m2@x>"))
        two.noop()
        exists = two.response("EXISTS")
        fetch = two.response("FETCH")
        one.store("1", "+FLAGS", "(\\Deleted)")
        one.expunge()
        two.noop()
        expunge = two.response("EXPUNGE")
        one.logout()
        two.logout()
        return exists, fetch, expunge

    exists, fetch, expunge = await h.run(sessions)
    assert exists[1][-1] == b"2"
    assert b"\\Flagged" in fetch[1][0]
    assert expunge == ("EXPUNGE", [b"1"])


async def test_other_accounts_mailboxes_do_not_exist(imap_relay: Harness) -> None:
    h = imap_relay
    deliver(h, patient_address(PATIENT), message(to=patient_address(PATIENT)))

    def session() -> tuple[Any, Any, Any]:
        client = imaps(h, DOCTOR.address)
        other = f"Shared/{patient_address(PATIENT)}/INBOX"
        select = client.select(other)
        status = client.status(other, "(MESSAGES)")
        missing = client.select("Shared/nobody@nowhere.example/INBOX")
        client.logout()
        return select, status, missing

    select, status, missing = await h.run(session)
    assert select[0] == "NO"
    assert b"[NONEXISTENT]" in select[1][0]
    assert status[0] == "NO"
    assert select[1] == missing[1]
    refused = [e for e in h.audit_events() if e["event"] == "imap.access.refused"]
    assert refused


async def test_delegate_reaches_the_delegated_mailbox_under_shared(
    imap_relay: Harness,
) -> None:
    h = imap_relay
    deliver(h, DOCTOR.address, message())

    def session() -> tuple[Any, Any, Any]:
        client = imaps(h, "secretaire-1")
        listing = client.list()
        namespace = client.namespace()
        select = client.select(f"Shared/{DOCTOR.address}/INBOX")
        client.fetch("1", "(BODY[])")
        client.logout()
        return listing, namespace, select

    listing, namespace, select = await h.run(session)
    assert f'"/" "Shared/{DOCTOR.address}/INBOX"'.encode() in b"\n".join(listing[1])
    assert namespace[0] == "OK"
    assert select == ("OK", [b"1"])
    reads = [e for e in h.audit_events() if e["event"] == "message.read"]
    assert reads[0]["actor"] == "secretaire-1"
    assert reads[0]["via"] == "delegation"


async def test_failed_logins_are_audited_and_throttled(imap_relay: Harness) -> None:
    h = imap_relay

    def attempts() -> list[str]:
        out = []
        for _ in range(4):
            client = imaps(h)
            try:
                client.login(DOCTOR.address, "wrong password 1!")
            except imaplib.IMAP4.error as exc:
                out.append(repr(exc.args))
            client.logout()
        return out

    errors = await h.run(attempts)
    assert "AUTHENTICATIONFAILED" in errors[0]
    assert "UNAVAILABLE" in errors[-1]  # locked out after max_failures (3)
    events = [e["event"] for e in h.audit_events()]
    assert events.count("imap.login.failed") == 3
    assert "auth.locked" in events
