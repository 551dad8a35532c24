"""FETCH of body sections, partials and structures of a multipart message;
a patient's proxy reaching the patient's mailbox read-only."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from directory.model import ProxyGrant, ProxyScope
from relay.accounts import AccountKind
from tests.relay.imap.conftest import deliver, imaps, message
from tests.support.relay_fixtures import (
    DOCTOR,
    PASSWORD,
    PATIENT,
    Harness,
    patient_address,
)

MULTIPART = (
    b"From: Paul Durand <paul.durand@medecin.mssante.fr>\r\n"
    b"To: zoe.moreau@medecin.mssante.fr\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sultats?=\r\n"
    b"Message-ID: <mp@x>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Voir la piece jointe.\r\n"
    b"--b1\r\n"
    b"Content-Type: application/pdf; name=cr.pdf\r\n"
    b"Content-Disposition: attachment; filename=cr.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--b1--\r\n"
)


async def test_sections_partials_and_multipart_structure(imap_relay: Harness) -> None:
    h = imap_relay
    deliver(h, DOCTOR.address, MULTIPART)

    def session() -> dict[str, Any]:
        c = imaps(h, DOCTOR.address)
        c.select("INBOX")
        out = {
            "part1": c.fetch("1", "(BODY.PEEK[1])"),
            "mime2": c.fetch("1", "(BODY.PEEK[2.MIME])"),
            "partial": c.fetch("1", "(BODY.PEEK[2]<0.4>)"),
            "not": c.fetch(
                "1",
                "(BODY.PEEK[HEADER.FIELDS.NOT (FROM TO MESSAGE-ID MIME-VERSION CONTENT-TYPE)])",
            ),
            "missing": c.fetch("1", "(BODY.PEEK[7])"),
            "structure": c.fetch("1", "(BODYSTRUCTURE)"),
            "search": c.search("UTF-8", "SUBJECT", "résultats".encode()),  # type: ignore[arg-type]  # imaplib sends bytes as they are
            "flags": c.fetch("1", "(FLAGS)"),
        }
        c.logout()
        return out

    out = await h.run(session)
    assert out["part1"][1][0][1] == b"Voir la piece jointe."
    assert out["mime2"][1][0][1].startswith(b"Content-Type: application/pdf")
    assert out["partial"][1][0][0].endswith(b"BODY[2]<0> {4}")
    assert out["partial"][1][0][1] == b"JVBE"
    assert out["not"][1][0][1] == b"Subject: =?utf-8?q?R=C3=A9sultats?=\r\n\r\n"
    assert out["missing"][1][0][1] == b""
    structure = out["structure"][1][0]
    assert b'"mixed"' in structure
    assert b'("attachment" ("filename" "cr.pdf"))' in structure
    assert out["search"] == ("OK", [b"1"])
    assert b"\\Seen" not in out["flags"][1][0]


async def test_proxy_reads_the_patients_mailbox_read_only(imap_relay: Harness) -> None:
    h = imap_relay
    patient = patient_address(PATIENT)
    grant = ProxyGrant(
        account="aidant-1",
        scope=ProxyScope.READ,
        granted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    await h.running.directory.replace(dataclasses.replace(PATIENT, proxies=(grant,)))
    h.running.accounts.create("aidant-1", AccountKind.PROXY, PASSWORD)
    deliver(h, patient, message(to=patient))

    def session() -> tuple[bool, Any, Any, Any]:
        c = imaps(h, "aidant-1")
        name = f"Shared/{patient}/INBOX"
        # The proxied mailbox is listed, not only reachable by name.
        _, listed = c.list("Shared/", "*")
        assert any(
            isinstance(line, bytes) and name.encode() in line for line in listed
        ), listed
        try:
            c.select(name)
            answered_read_only = False
        except c.readonly:  # the server answered [READ-ONLY]
            answered_read_only = True
        select = c.select(name, readonly=True)
        fetch = c.fetch("1", "(BODY[])")
        # imaplib refuses STORE itself on a read-only folder; UID STORE
        # reaches the server.
        store = c.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        c.logout()
        return answered_read_only, select, fetch, store

    answered_read_only, select, fetch, store = await h.run(session)
    assert answered_read_only
    assert select[0] == "OK"
    assert fetch[1][0][1] == message(to=patient)
    assert store[0] == "NO"
    assert b"READ-ONLY" in store[1][0]
    reads = [e for e in h.audit_events() if e["event"] == "message.read"]
    assert reads[-1]["actor"] == "aidant-1"
    assert reads[-1]["mailbox"] == patient
    assert reads[-1]["via"] == "proxy"
