"""FETCH and SEARCH answered from the session's read cache stay right when
other sessions change the folder, and without a cache at all."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest

from relay.imap import _session
from tests.relay.imap.conftest import deliver, imaps, message
from tests.support.relay_fixtures import DOCTOR, Harness

if TYPE_CHECKING:
    import imaplib

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _mime(text_part: bytes, encoding: str, charset: str, subject: str) -> bytes:
    return (
        b"From: Paul Durand <paul.durand@medecin.mssante.fr>\r\n"
        b"To: zoe.moreau@medecin.mssante.fr\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Date: Mon, 2 Mar 2026 10:00:00 +0100\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: "
        + encoding.encode()
        + b"\r\n\r\n"
        + text_part
        + b"\r\n--b1\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"attachment hidden-word").replace(b"\n", b"\r\n")
        + b"--b1--\r\n"
    )


def _search(client: imaplib.IMAP4_SSL, *criteria: str | bytes) -> bytes:
    typ, data = client.uid("SEARCH", *criteria)  # type: ignore[arg-type]
    assert typ == "OK"
    found = data[0]
    assert isinstance(found, bytes)
    return found


async def test_search_decodes_text_parts_and_encoded_words_and_skips_attachments(
    imap_relay: Harness,
) -> None:
    h = imap_relay
    deliver(
        h,
        DOCTOR.address,
        _mime(
            base64.encodebytes("Hémoglobine glyquée élevée".encode()),
            "base64",
            "utf-8",
            "=?utf-8?q?R=C3=A9sultat_urgent?=",
        ),
    )
    deliver(
        h,
        DOCTOR.address,
        _mime(b"Cr=E9atinine normale", "quoted-printable", "iso-8859-1", "Bilan"),
    )

    def session() -> dict[str, bytes]:
        client = imaps(h, DOCTOR.address)
        client.select("INBOX")
        out = {
            "subject": _search(
                client, "CHARSET", "UTF-8", "SUBJECT", "résultat".encode()
            ),
            "text_b64": _search(client, "CHARSET", "UTF-8", "TEXT", "GLYQUÉE".encode()),
            "body_qp": _search(
                client, "CHARSET", "UTF-8", "BODY", "créatinine".encode()
            ),
            "attachment": _search(client, "TEXT", "hidden-word"),
            "header_via_text": _search(client, "TEXT", "zoe.moreau"),
            "sent": _search(client, "SENTON", "2-Mar-2026"),
            "again": _search(client, "CHARSET", "UTF-8", "TEXT", "GLYQUÉE".encode()),
        }
        client.logout()
        return out

    out = await h.run(session)
    assert out["subject"] == b"1"
    assert out["text_b64"] == b"1"
    assert out["body_qp"] == b"2"
    assert out["attachment"] == b""
    assert out["header_via_text"] == b"1 2"
    assert out["sent"] == b"1 2"
    assert out["again"] == b"1"


async def test_search_sees_flags_another_session_changed_before_they_are_told(
    imap_relay: Harness,
) -> None:
    h = imap_relay
    for k in range(3):
        deliver(h, DOCTOR.address, message(subject=f"Compte rendu {k}"))

    def session() -> dict[str, Any]:
        reader = imaps(h, DOCTOR.address)
        reader.select("INBOX")
        out: dict[str, Any] = {"before": _search(reader, "UNSEEN")}
        other = imaps(h, DOCTOR.address)
        other.select("INBOX")
        other.uid("STORE", "2", "+FLAGS", "(\\Seen)")
        other.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
        other.expunge()
        other.logout()
        # No NOOP in between: the changes are still pending for the reader.
        out["unseen"] = _search(reader, "UNSEEN")
        out["seq"] = reader.search(None, "ALL")
        reader.logout()
        return out

    out = await h.run(session)
    assert out["before"] == b"1 2 3"
    assert out["unseen"] == b"1"  # 2 now read, 3 expunged
    assert out["seq"] == ("OK", [b"1 2"])


async def test_new_messages_are_searched_and_fetched_after_the_cache_was_built(
    imap_relay: Harness,
) -> None:
    h = imap_relay
    deliver(h, DOCTOR.address, message(subject="Ancien"))

    def session() -> dict[str, Any]:
        client = imaps(h, DOCTOR.address)
        client.select("INBOX")
        out: dict[str, Any] = {"old": _search(client, "SUBJECT", "nouveau")}
        client.fetch("1", "(BODY.PEEK[HEADER])")
        deliver(h, DOCTOR.address, message(subject="Nouveau"))
        client.noop()  # told: * 2 EXISTS
        out["new"] = _search(client, "SUBJECT", "nouveau")
        out["unseen"] = _search(client, "UNSEEN")
        out["headers"] = client.fetch("1:2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out["size"] = client.fetch("2", "(RFC822.SIZE INTERNALDATE)")
        out["text"] = client.fetch("2", "(RFC822.TEXT)")
        out["body"] = client.fetch("2", "(BODY)")
        client.logout()
        return out

    out = await h.run(session)
    assert out["old"] == b""
    assert out["new"] == b"2"
    assert out["unseen"] == b"1 2"
    headers = out["headers"][1]
    assert headers[0][1] == b"Subject: Ancien\r\n\r\n"
    assert headers[2][1] == b"Subject: Nouveau\r\n\r\n"
    assert b"RFC822.SIZE " in out["size"][1][0]
    assert b'INTERNALDATE " 2-Mar-2026 09:30:00 +0000"' in out["size"][1][0]
    assert out["text"][1][0][1] == b"Bonjour,\r\nLe compte rendu est joint.\r\n"
    assert b'BODY ("text" "plain"' in out["body"][1][0]


async def test_reads_are_right_when_the_cache_budget_is_spent(
    imap_relay: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_session, "DEFAULT_CACHE_BUDGET", 0)
    h = imap_relay
    for k in range(4):
        deliver(h, DOCTOR.address, message(subject=f"Rapport {k}", body=f"mot{k}\r\n"))

    def session() -> dict[str, Any]:
        client = imaps(h, DOCTOR.address)
        client.select("INBOX")
        out = {
            "subject": _search(client, "SUBJECT", '"rapport 2"'),
            "body": _search(client, "BODY", "mot3"),
            "fetch": client.fetch("1:4", "(UID BODY.PEEK[TEXT])"),
            "opened": client.fetch("4", "(BODY[TEXT])"),
            "flags": client.fetch("4", "(FLAGS)"),
        }
        client.logout()
        return out

    out = await h.run(session)
    assert out["subject"] == b"3"
    assert out["body"] == b"4"
    texts = [item[1] for item in out["fetch"][1] if isinstance(item, tuple)]
    assert texts == [b"mot0\r\n", b"mot1\r\n", b"mot2\r\n", b"mot3\r\n"]
    assert out["opened"][1][0][1] == b"mot3\r\n"
    assert b"\\Seen" in out["opened"][1][1] or b"\\Seen" in out["flags"][1][0]


def test_read_cache_keeps_what_its_budget_allows_and_returns_the_rest() -> None:
    cache = _session.ReadCache(budget=10)
    rest = cache.admit(cache.bodies, {1: "abcd", 2: "efgh", 3: "ijkl"}, len)
    assert cache.bodies == {1: "abcd", 2: "efgh"}
    assert rest == {3: "ijkl"}
    cache.forget([1])
    assert cache.bodies == {2: "efgh"}
    cache.clear()
    assert cache.used == 0
    assert not cache.bodies
