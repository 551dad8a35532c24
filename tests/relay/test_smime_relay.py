"""End-to-end protection in the relay: verification at DATA, sealing, encryption.

A real relay on loopback with an ``[smime]`` table pointing at the session's
test PKI (anchors, CRLs, the operator's sealing credential); directory
entries get their certificates through the running relay's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import os
import shutil
import smtplib
import subprocess
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import pytest

from directory.config import DirectoryConfig, open_directory
from directory.model import CertificateUsage
from mssante.crypto import Kind, TrustStore, encrypt, kind_of, sign, unwrap, verify
from relay.app import run_relay
from relay.audit import AUDIT_FILE_NAME, AuditTrail, records
from relay.config import ConfigError, parse
from relay.queue.deliver import LocalDelivery
from relay.queue.spool import Envelope, Spool
from relay.queue.spool import Recipient as SpoolRecipient
from relay.smime import RelaySmime
from relay.store import MailStore, MasterKey
from tests.relay.test_smtp import message
from tests.support.relay_fixtures import (
    COLLEAGUE,
    DOCTOR,
    PATIENT,
    SEAL_ADDRESS,
    URGENCES,
    patient_address,
    relay_config,
    started,
    with_certificates,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from mssante.crypto.testpki import TestPKI
    from relay.config import Config
    from tests.support.relay_fixtures import Harness, SmimeFiles, TlsFiles

SIGNATURE: Final = "X-MSSante-Signature"
SIGN = CertificateUsage.SIGNATURE
ENCRYPT = CertificateUsage.ENCRYPTION


def _config(tmp_path: Path, tls_files: TlsFiles, smime: dict[str, Any]) -> Config:
    return relay_config(tmp_path, tls_files.directory, None, extra={"smime": smime})


@contextlib.asynccontextmanager
async def _relay(
    tmp_path: Path, tls_files: TlsFiles, smime: dict[str, Any]
) -> AsyncIterator[Harness]:
    async with started(tls_files, _config(tmp_path, tls_files, smime)) as harness:
        yield harness


@pytest.fixture
async def relay_smime(
    tmp_path: Path, tls_files: TlsFiles, smime_files: SmimeFiles
) -> AsyncIterator[Harness]:
    """Verify, refuse invalid signatures, seal and encrypt (the defaults)."""
    async with _relay(tmp_path, tls_files, smime_files.table()) as h:
        directory = h.running.directory
        await directory.replace(
            with_certificates(
                DOCTOR, (SIGN, smime_files.doctor_signer), (ENCRYPT, smime_files.doctor)
            )
        )
        await directory.replace(
            with_certificates(URGENCES, (ENCRYPT, smime_files.urgences))
        )
        yield h


def _trust(pki: TestPKI) -> TrustStore:
    return TrustStore.from_pem(pki.root_pem, pki.intermediates_pem, pki.crls())


def _now() -> datetime:
    return datetime.now(UTC)


def _signed(files: SmimeFiles, to: str = COLLEAGUE.address) -> bytes:
    return sign(message(DOCTOR.address, to), files.doctor_signer, at=_now())


def _tampered(files: SmimeFiles) -> bytes:
    signed = _signed(files)
    assert b"veuillez trouver" in signed
    return signed.replace(b"veuillez trouver", b"veuillez ignorer")


def _send(h: Harness, data: bytes, to: str = COLLEAGUE.address) -> tuple[int, str]:
    def send() -> tuple[int, str]:
        with h.submission() as client:
            try:
                client.sendmail(DOCTOR.address, [to], data)
            except smtplib.SMTPDataError as exc:
                text = exc.smtp_error
                return exc.smtp_code, text.decode() if isinstance(text, bytes) else text
        return 250, ""

    return send()


def _header(stored: bytes, name: str = SIGNATURE) -> list[str]:
    parsed = email.message_from_bytes(stored, policy=email.policy.compat32)
    return [str(v) for v in parsed.get_all(name) or []]


def _openssl_verify(path: Path, anchors: Path) -> subprocess.CompletedProcess[bytes]:
    command = ["openssl", "cms", "-verify", "-in", str(path), "-CAfile", str(anchors)]
    return subprocess.run(
        [*command, "-purpose", "smimesign"], capture_output=True, check=False
    )


def _kill_agents(homes: list[Path]) -> None:
    for home in homes:
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(home)},
            check=False,
            capture_output=True,
        )


def _events(h: Harness, name: str) -> list[dict[str, Any]]:
    return [e for e in h.audit_events() if e["event"] == name]


# -- verification at acceptance ---------------------------------------------------


async def test_signed_message_is_verified_traced_and_audited(
    relay_smime: Harness, smime_files: SmimeFiles, pki: TestPKI
) -> None:
    code, _ = await relay_smime.run(lambda: _send(relay_smime, _signed(smime_files)))
    assert code == 250
    await relay_smime.delivered()
    [stored] = relay_smime.messages(COLLEAGUE.address)
    [trace] = _header(stored)
    assert trace.startswith(f"verified; signer={DOCTOR.address}; signed=")
    assert "; by=localhost" in trace
    # Not sealed again, not encrypted (the colleague has no certificate).
    assert kind_of(stored) is Kind.SIGNED
    assert verify(stored, _trust(pki), at=_now(), sender=DOCTOR.address).ok
    [event] = _events(relay_smime, "smime.verification.succeeded")
    assert event["signer"] == DOCTOR.address
    assert event["reason"] == "valid"
    assert event["message_ref"]


async def test_tampered_signature_is_refused_and_nothing_is_stored(
    relay_smime: Harness, smime_files: SmimeFiles
) -> None:
    code, text = await relay_smime.run(
        lambda: _send(relay_smime, _tampered(smime_files))
    )
    assert (code, text.split()[0]) == (550, "5.7.7")
    await relay_smime.delivered()
    assert relay_smime.messages(COLLEAGUE.address) == []
    assert relay_smime.messages(DOCTOR.address, "Sent") == []
    [event] = _events(relay_smime, "smime.verification.failed")
    assert (event["reason"], event["code"]) == ("bad-signature", "5.7.7")
    assert _events(relay_smime, "message.rejected")[0]["code"] == "5.7.7"


async def test_signature_by_a_certificate_of_another_address_is_refused(
    relay_smime: Harness, pki: TestPKI
) -> None:
    other = pki.practitioner("quelquun@medecin.mssante.fr", key="ec")
    data = sign(message(DOCTOR.address, COLLEAGUE.address), other, at=_now())
    code, text = await relay_smime.run(lambda: _send(relay_smime, data))
    assert (code, text.split()[0]) == (550, "5.7.5")
    [event] = _events(relay_smime, "smime.verification.failed")
    assert event["reason"] == "address-mismatch"


async def test_signer_not_listed_in_the_directory_for_the_sender_is_refused(
    relay_smime: Harness, pki: TestPKI
) -> None:
    # A valid certificate naming the doctor, but not the one the directory
    # lists for the doctor's signatures.
    unlisted = pki.practitioner(DOCTOR.address, key="ec")
    data = sign(message(DOCTOR.address, COLLEAGUE.address), unlisted, at=_now())
    code, text = await relay_smime.run(lambda: _send(relay_smime, data))
    assert (code, text.split()[0]) == (550, "5.7.5")
    [event] = _events(relay_smime, "smime.verification.failed")
    assert event["reason"] == "untrusted"


async def test_warn_mode_delivers_with_the_failed_header(
    tmp_path: Path, tls_files: TlsFiles, smime_files: SmimeFiles
) -> None:
    # The override names the sender's domain: its operator chose "warn".
    table = smime_files.table(
        peers={"medecin.mssante.fr": {"invalid_signature": "warn"}}
    )
    async with _relay(tmp_path, tls_files, table) as h:
        code, _ = await h.run(lambda: _send(h, _tampered(smime_files)))
        assert code == 250
        await h.delivered()
        [stored] = h.messages(COLLEAGUE.address)
        [event] = _events(h, "smime.verification.failed")
    [trace] = _header(stored)
    assert trace.startswith("failed; reason=bad-signature; at=")
    assert event["code"] == "2.6.0"


async def test_unknown_revocation_status_is_a_temporary_failure(
    tmp_path: Path, tls_files: TlsFiles, smime_files: SmimeFiles
) -> None:
    # No CRL configured while the certificates name a distribution point.
    async with _relay(tmp_path, tls_files, smime_files.table(crls=False)) as h:
        code, text = await h.run(lambda: _send(h, _signed(smime_files)))
        await h.delivered()
        assert h.messages(COLLEAGUE.address) == []
        [event] = _events(h, "smime.verification.failed")
    assert (code, text.split()[0]) == (451, "4.7.5")
    assert event["reason"] == "revocation-unknown"


async def test_signature_field_sent_by_a_client_is_removed(
    relay_smime: Harness,
) -> None:
    forged = message(
        DOCTOR.address,
        COLLEAGUE.address,
        X_MSSante_Signature=f"verified; signer={DOCTOR.address}",
    )
    assert SIGNATURE.encode() in forged
    code, _ = await relay_smime.run(lambda: _send(relay_smime, forged))
    assert code == 250
    await relay_smime.delivered()
    [stored] = relay_smime.messages(COLLEAGUE.address)
    assert _header(stored) == []


# -- sealing --------------------------------------------------------------------------


async def test_unsigned_local_message_is_sealed_and_the_seal_verifies(
    relay_smime: Harness, pki: TestPKI
) -> None:
    code, _ = await relay_smime.run(
        lambda: _send(relay_smime, message(DOCTOR.address, COLLEAGUE.address))
    )
    assert code == 250
    await relay_smime.delivered()
    [stored] = relay_smime.messages(COLLEAGUE.address)
    assert kind_of(stored) is Kind.SIGNED
    checked = verify(stored, _trust(pki), at=_now(), sender=SEAL_ADDRESS)
    assert checked.ok, checked.detail
    assert b"veuillez trouver le compte rendu" in checked.content
    assert _header(stored, "From") == [DOCTOR.address]
    [event] = _events(relay_smime, "smime.message.sealed")
    assert event["sender"] == DOCTOR.address


async def test_patient_without_certificate_gets_readable_mime(
    relay_smime: Harness,
) -> None:
    to = patient_address(PATIENT)
    code, _ = await relay_smime.run(
        lambda: _send(relay_smime, message(DOCTOR.address, to), to)
    )
    assert code == 250
    await relay_smime.delivered()
    [stored] = relay_smime.messages(to)
    # Sealed as multipart/signed: the first part is the message, as sent.
    assert kind_of(stored) is Kind.SIGNED
    assert b"veuillez trouver le compte rendu" in stored
    encrypted = {
        e["recipient"] for e in _events(relay_smime, "smime.message.encrypted")
    }
    assert to not in encrypted


# -- encryption -----------------------------------------------------------------------


async def test_recipient_with_a_certificate_gets_a_copy_only_its_key_opens(
    relay_smime: Harness, smime_files: SmimeFiles, pki: TestPKI
) -> None:
    code, _ = await relay_smime.run(
        lambda: _send(
            relay_smime, message(DOCTOR.address, URGENCES.address), URGENCES.address
        )
    )
    assert code == 250
    await relay_smime.delivered()
    [stored] = relay_smime.messages(URGENCES.address)
    assert kind_of(stored) is Kind.AUTH_ENVELOPED  # MODERN: AES-256-GCM + OAEP
    assert b"veuillez trouver" not in stored
    opened = unwrap(stored, _trust(pki), at=_now(), recipient=smime_files.urgences)
    assert opened.encrypted
    assert opened.verification is not None  # the seal, inside the envelope
    assert opened.verification.ok
    assert b"veuillez trouver le compte rendu" in opened.message
    # The sender's Sent copy is encrypted to the sender's own certificate.
    [sent] = relay_smime.messages(DOCTOR.address, "Sent")
    mine = unwrap(sent, _trust(pki), at=_now(), recipient=smime_files.doctor)
    assert mine.encrypted
    recipients = {
        e["recipient"] for e in _events(relay_smime, "smime.message.encrypted")
    }
    assert recipients == {URGENCES.address, DOCTOR.address}


async def test_peer_override_turns_sealing_and_encryption_off_for_its_domain(
    tmp_path: Path, tls_files: TlsFiles, smime_files: SmimeFiles
) -> None:
    table = smime_files.table(
        peers={
            "ch-paris-1.mssante.fr": {"seal_unsigned": False, "encrypt": False},
            "medecin.mssante.fr": {"profile": "compat"},
        }
    )
    async with _relay(tmp_path, tls_files, table) as h:
        await h.running.directory.replace(
            with_certificates(URGENCES, (ENCRYPT, smime_files.urgences))
        )
        await h.running.directory.replace(
            with_certificates(DOCTOR, (ENCRYPT, smime_files.doctor))
        )
        data = message(DOCTOR.address, URGENCES.address)

        def send() -> None:
            with h.submission() as client:
                client.sendmail(
                    DOCTOR.address, [URGENCES.address, COLLEAGUE.address], data
                )

        await h.run(send)
        await h.delivered()
        [plain] = h.messages(URGENCES.address)
        [sealed] = h.messages(COLLEAGUE.address)
        [sent] = h.messages(DOCTOR.address, "Sent")
    assert kind_of(plain) is Kind.PLAIN
    assert kind_of(sealed) is Kind.SIGNED
    # The sender's domain asks for the compatibility profile (AES-256-CBC).
    assert kind_of(sent) is Kind.ENVELOPED


async def test_start_record_says_smime_is_off_without_the_table(
    relay: Harness,
) -> None:
    [off] = _events(relay, "relay.started")
    assert off["smime"] == "off"


async def test_start_record_describes_smime_when_on(relay_smime: Harness) -> None:
    [on] = _events(relay_smime, "relay.started")
    assert on["smime"]["seal_unsigned"] is True
    assert on["smime"]["invalid_signature"] == "refuse"


async def test_unreadable_trust_anchors_stop_the_start_naming_the_key(
    tmp_path: Path, tls_files: TlsFiles, smime_files: SmimeFiles
) -> None:
    table = smime_files.table(trust_anchors_file=str(tmp_path / "absent.pem"))
    cfg = _config(tmp_path, tls_files, table)
    with pytest.raises(ConfigError, match=r"smime\.trust_anchors_file: cannot read"):
        async with run_relay(cfg):
            pass


async def test_seal_key_that_does_not_match_stops_the_start(
    tmp_path: Path, tls_files: TlsFiles, smime_files: SmimeFiles
) -> None:
    table = smime_files.table(seal_key_file=str(tls_files.directory / "server.key"))
    cfg = _config(tmp_path, tls_files, table)
    with pytest.raises(ConfigError, match=r"smime\.seal_key_file: the key does not"):
        async with run_relay(cfg):
            pass


async def test_seal_verifies_with_openssl_cms(
    relay_smime: Harness, smime_files: SmimeFiles, tmp_path: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    await relay_smime.run(
        lambda: _send(relay_smime, message(DOCTOR.address, COLLEAGUE.address))
    )
    await relay_smime.delivered()
    [stored] = relay_smime.messages(COLLEAGUE.address)
    (tmp_path / "sealed.eml").write_bytes(stored)
    result = await asyncio.to_thread(
        _openssl_verify, tmp_path / "sealed.eml", smime_files.directory / "anchors.pem"
    )
    assert result.returncode == 0, result.stderr
    assert b"veuillez trouver le compte rendu" in result.stdout


async def test_signed_message_from_a_peer_operator_is_verified_and_not_sealed(
    relay_smime: Harness, pki: TestPKI
) -> None:
    remote = "dr.martin@hopital-b.example"
    signer = pki.practitioner(remote, key="ec")
    signed = sign(message(remote, DOCTOR.address), signer, at=_now())
    plain = message(remote, DOCTOR.address, message_id="<m2@hopital-b.example>")

    def send() -> None:
        with relay_smime.mx_operator() as client:
            client.sendmail(remote, [DOCTOR.address], signed)
            client.sendmail(remote, [DOCTOR.address], plain)

    await relay_smime.run(send)
    await relay_smime.delivered()
    # Delivered concurrently: tell the copies apart by Message-ID.
    by_id = {
        _header(m, "Message-ID")[0]: m for m in relay_smime.messages(DOCTOR.address)
    }
    first, second = by_id["<m1@medecin.mssante.fr>"], by_id["<m2@hopital-b.example>"]
    # The doctor has an encryption certificate: both copies are encrypted.
    assert kind_of(first) is Kind.AUTH_ENVELOPED
    [trace] = _header(first)
    assert trace.startswith(f"verified; signer={remote};")
    assert _header(second) == []
    assert _events(relay_smime, "smime.message.sealed") == []


async def test_replaced_crl_file_is_read_again(
    tmp_path: Path, tls_files: TlsFiles, smime_files: SmimeFiles, pki: TestPKI
) -> None:
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    for path in sorted(smime_files.directory.glob("*.crl")):
        (crl_dir / path.name).write_bytes(path.read_bytes())
    table = smime_files.table(crl_files=[str(p) for p in sorted(crl_dir.glob("*"))])
    signer = pki.revoked(DOCTOR.address, key="ec")  # listed on the next CRLs
    async with _relay(tmp_path, tls_files, table) as h:
        data = sign(message(DOCTOR.address, COLLEAGUE.address), signer, at=_now())
        before, _ = await h.run(lambda: _send(h, data))
        for n, crl in enumerate(pki.crls()):
            (crl_dir / f"ca-{n}.crl").write_bytes(crl)
        after, text = await h.run(lambda: _send(h, data))
        reasons = [e["reason"] for e in _events(h, "smime.verification.failed")]
    assert before == 250
    assert (after, text.split()[0]) == (550, "5.7.5")
    assert reasons == ["revoked"]


async def test_message_encrypted_by_its_author_is_stored_as_sent(
    relay_smime: Harness, smime_files: SmimeFiles
) -> None:
    data = encrypt(
        message(DOCTOR.address, URGENCES.address), [smime_files.urgences.cert]
    )
    code, _ = await relay_smime.run(lambda: _send(relay_smime, data, URGENCES.address))
    assert code == 250
    await relay_smime.delivered()
    [stored] = relay_smime.messages(URGENCES.address)
    assert stored.endswith(data.split(b"\r\n\r\n", 1)[1])
    assert _events(relay_smime, "smime.message.sealed") == []
    assert _events(relay_smime, "smime.message.encrypted") == []


@pytest.mark.skipif(shutil.which("gpg") is None, reason="no gpg")
async def test_recipient_preferring_openpgp_gets_a_pgp_mime_copy(
    relay_smime: Harness, tmp_path: Path
) -> None:
    from mssante.crypto.openpgp import Keyring
    from tests.crypto.test_openpgp import make_party

    party = await asyncio.to_thread(make_party, tmp_path / "pgp", URGENCES.address)
    homes = [party.home, relay_smime.config.relay.data_dir / "gnupg"]
    try:
        armored = party.keyring.export_public_key(party.fingerprint)
        await relay_smime.running.directory.replace(
            dataclasses.replace(
                URGENCES, pgp_key=armored.decode("ascii"), prefers_pgp=True
            )
        )
        code, _ = await relay_smime.run(
            lambda: _send(
                relay_smime, message(DOCTOR.address, URGENCES.address), URGENCES.address
            )
        )
        assert code == 250
        await relay_smime.delivered()
        [stored] = relay_smime.messages(URGENCES.address)
        opened = await asyncio.to_thread(Keyring(party.home).decrypt_and_verify, stored)
    finally:
        await asyncio.to_thread(_kill_agents, homes)
    assert b"multipart/encrypted" in stored.split(b"\r\n\r\n", 1)[0]
    # Inside: the relay's seal around the message as it was sent.
    assert kind_of(opened.message) is Kind.SIGNED
    assert b"veuillez trouver le compte rendu" in opened.message
    methods = {
        e["recipient"]: e["method"]
        for e in _events(relay_smime, "smime.message.encrypted")
    }
    assert methods == {URGENCES.address: "openpgp", DOCTOR.address: "smime"}


async def test_delivery_waits_when_the_directory_cannot_say_who_has_a_certificate(
    tmp_path: Path, smime_files: SmimeFiles
) -> None:
    # Real spool, store, audit trail and directory; the directory is closed,
    # so the relay cannot know whether the recipient has a certificate.
    master = MasterKey.generate(tmp_path / "master.key")
    spool = Spool.open(tmp_path, master.derive("spool"))
    store = MailStore.open(tmp_path / "mail", master)
    audit = AuditTrail(tmp_path / AUDIT_FILE_NAME, master.derive("audit"))
    directory = await open_directory(
        DirectoryConfig(sqlite_path=tmp_path / "directory.sqlite3")
    )
    await directory.close()
    settings = parse(
        {
            "relay": {"data_dir": str(tmp_path), "domain": "mssante.example"},
            "smime": smime_files.table(),
        },
        tmp_path,
    ).smime
    assert settings is not None
    protection = RelaySmime(settings, data_dir=tmp_path, hostname="h", audit=audit)
    spooled = spool.write(
        Envelope(
            sender=DOCTOR.address,
            recipients=(SpoolRecipient(address=URGENCES.address),),
            received_at=_now(),
            channel="submission",
        ),
        message(DOCTOR.address, URGENCES.address),
    )
    delivery = LocalDelivery(
        spool=spool,
        store=store,
        audit=audit,
        is_local=lambda _: True,
        clock=_now,
        retry_delays=(60.0,),
        protection=protection,
        directory=directory,
    )
    delivery.start()
    try:
        assert await delivery.drain(within=10)
        assert not store.has_mailbox(URGENCES.address)
        assert spool.pending() == [spooled.queue_id]
    finally:
        await delivery.stop()
        store.close()
        audit.close()
    failed = [
        r
        for r in records(tmp_path / AUDIT_FILE_NAME)
        if r["event"] == "directory.lookup.failed"
    ]
    assert failed[0]["queue_id"] == spooled.queue_id
