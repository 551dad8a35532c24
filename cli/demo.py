"""``mssante demo``: the embedded directory loaded with demo data.

Idempotent: a second run imports the same files (all unchanged) and keeps the
entries it added before. Demo patients use the INS demonstration OID
(1.2.250.1.213.1.4.11), which production mode refuses.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from cryptography import x509

from directory import identifiers as ids
from directory.config import open_directory
from directory.errors import EntryExistsError
from directory.importers import import_file
from directory.model import (
    Delegation,
    DelegationScope,
    Entry,
    Operator,
    OperatorCertificate,
    Patient,
    Sex,
)
from mssante.crypto.testpki import TestPKI
from relay.accounts import AccountKind, AccountStore
from relay.app import load_master_key
from relay.config import ConfigError

if TYPE_CHECKING:
    from directory.config import DirectoryConfig
    from directory.protocol import Directory
    from relay.config import Config, TlsSettings

DEMO_DIR: Final = Path(__file__).resolve().parent.parent / "conf" / "demo"
MSSANTE_FILE: Final = "Extraction_Correspondance_MSSante_202611220300.txt"
RPPS_FILE: Final = "PS_LibreAcces_Personne_activite_202611220300.txt"


DEMO_PATIENT_NIR: Final = "2850275123456"
OTHER_OPERATOR_DOMAIN: Final = "hopital-b.example"
OTHER_OPERATOR_HOST: Final = "mx.hopital-b.example"
OTHER_OPERATOR_DN: Final = (
    f"CN={OTHER_OPERATOR_HOST},OU=MSSANTE,O=OPERATEUR DEMO B,C=FR"
)
DEMO_PRACTITIONER: Final = "helene.d-almeida.1870@medecin.mssante.fr"
DEMO_STAFF: Final = "secretariat.cardio"
DEMO_ACCOUNTS_FILE: Final = "demo-accounts.txt"
# Renew the demo certificates when they have less than this left.
RENEW_BEFORE: Final = timedelta(days=30)


def _ins(nir: str) -> str:
    return f"{nir}{ids.ins_key(nir):02d}"


def demo_entries(domain: str) -> list[Entry]:
    """The hand-made part of the demo: patients, operators, a delegation."""
    patients = [
        (
            "2850275123456",
            "DUPONT",
            "Marie Anne",
            Sex.F,
            date(1985, 2, 14),
            "75056",
            True,
        ),
        ("1920513055012", "MARTIN", "Paul", Sex.M, date(1992, 5, 3), "13055", True),
        ("2010269123001", "LEROY", "Camille", Sex.F, date(2001, 2, 9), "69123", False),
    ]
    entries: list[Entry] = [
        Patient(
            ins=_ins(nir),
            ins_oid=ids.INS_DEMO_OID,
            birth_name=name,
            first_names=first,
            sex=sex,
            birth_date=born,
            birth_place=place,
            qualified=qualified,
            address=f"{_ins(nir)}@patient.{domain}" if qualified else None,
            source="demo",
        )
        for nir, name, first, sex, born, place, qualified in patients
    ]
    entries += [
        Operator(
            domain=domain,
            certificates=(
                OperatorCertificate(subject_dn=f"CN=mx.{domain},O=Operateur Demo,C=FR"),
            ),
            description="this relay (demo)",
            source="demo",
        ),
        Operator(
            domain=OTHER_OPERATOR_DOMAIN,
            certificates=(OperatorCertificate(subject_dn=OTHER_OPERATOR_DN),),
            description="another operator (demo): its certificate is in data/tls/",
            source="demo",
        ),
        Delegation(
            account=DEMO_STAFF,
            mailbox=DEMO_PRACTITIONER,
            scope=DelegationScope.READ_SEND,
            granted_by="810009051870",
            source="demo",
        ),
    ]
    return entries


async def load_demo(directory: Directory, domain: str) -> dict[str, int]:
    """Import the demo extraction files and add the demo entries."""
    report_mss = await import_file(directory, DEMO_DIR / MSSANTE_FILE, "mssante")
    report_rpps = await import_file(directory, DEMO_DIR / RPPS_FILE, "rpps")
    added = 0
    for entry in demo_entries(domain):
        try:
            await directory.add(entry)
            added += 1
        except EntryExistsError:
            pass
    return {
        "mailboxes_added": report_mss.added,
        "mailboxes_unchanged": report_mss.unchanged,
        "practitioners_added": report_rpps.added,
        "practitioners_unchanged": report_rpps.unchanged,
        "demo_entries_added": added,
    }


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _needs_certificates(tls: TlsSettings, now: datetime) -> bool:
    if not (tls.cert_file.exists() and tls.key_file.exists()):
        return True
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    return cert.not_valid_after_utc - now < RENEW_BEFORE


def make_demo_tls(tls: TlsSettings, now: datetime) -> bool:
    """A throwaway IGC-Santé-like CA, the relay's certificate, and another
    operator's client certificate, where the config expects them.

    Returns True when new files were written. No key is ever committed: they
    are generated here, in the data directory, mode 0600.
    """
    if not _needs_certificates(tls, now):
        return False
    pki = TestPKI(now, organisation="MSSANTE DEMO")
    server = pki.server(("localhost",), ("127.0.0.1", "::1"))
    operator = pki.operator(
        OTHER_OPERATOR_HOST, organisation="OPERATEUR DEMO B", unit="MSSANTE"
    )
    tls.cert_file.parent.mkdir(parents=True, exist_ok=True)
    tls.cert_file.write_bytes(server.fullchain_pem)
    _write_private(tls.key_file, server.key_pem)
    anchors = tls.trust_anchors_file or tls.cert_file.with_name("ca.pem")
    # Root and intermediates: some clients (swaks) send only their leaf.
    anchors.write_bytes(pki.root_pem + pki.intermediates_pem)
    tls_dir = tls.cert_file.parent
    (tls_dir / "operator-b.pem").write_bytes(operator.fullchain_pem)
    _write_private(tls_dir / "operator-b.key", operator.key_pem)
    return True


def _demo_accounts(config: Config, patient: str) -> list[tuple[str, AccountKind, str]]:
    return [
        (DEMO_PRACTITIONER, AccountKind.PRACTITIONER, DEMO_PRACTITIONER),
        (DEMO_STAFF, AccountKind.STAFF, ""),
        (patient, AccountKind.PATIENT, patient),
    ]


def ensure_demo_accounts(config: Config, patient: str) -> dict[str, str]:
    """Create the demo logins once; their passwords are kept in the data dir."""
    data_dir = config.relay.data_dir
    saved = data_dir / DEMO_ACCOUNTS_FILE
    passwords: dict[str, str] = {}
    if saved.exists():
        for line in saved.read_text(encoding="utf-8").splitlines():
            login, _, secret = line.partition(" ")
            passwords[login] = secret
    store = AccountStore.for_config(config)
    try:
        for login, kind, mailbox in _demo_accounts(config, patient):
            if store.get(login) is not None and login in passwords:
                continue
            secret = "Demo-" + secrets.token_urlsafe(12) + "-1"
            if store.get(login) is None:
                store.create(login, kind, secret, [mailbox] if mailbox else [])
            else:
                store.set_password(login, secret)
            passwords[login] = secret
    finally:
        store.close()
    _write_private(
        saved, "".join(f"{k} {v}\n" for k, v in passwords.items()).encode("utf-8")
    )
    return passwords


def _connect_help(config: Config, passwords: dict[str, str], patient: str) -> str:
    tls = config.tls
    assert tls is not None  # noqa: S101 - checked by run_demo
    smtp = config.smtp
    ca = tls.trust_anchors_file or tls.cert_file.with_name("ca.pem")
    tls_dir = tls.cert_file.parent
    practitioner = DEMO_PRACTITIONER
    return (
        "\nConnect (trust the demo CA: " + str(ca) + "):\n"
        f"  submission STARTTLS  {smtp.submission.host}:{smtp.submission.port}\n"
        f"  submission TLS       {smtp.submissions.host}:{smtp.submissions.port}\n"
        f"  MX (operators)       {smtp.mx.host}:{smtp.mx.port}\n"
        + (
            f"  IMAP STARTTLS        {config.imap.plain.host}:{config.imap.plain.port}\n"
            if config.imap.plain.enabled
            else ""
        )
        + (
            f"  IMAP TLS             {config.imap.implicit.host}:{config.imap.implicit.port}\n"
            if config.imap.implicit.enabled
            else ""
        )
        + (
            f"  patients (HTTPS)     https://{config.web.listener.host}:"
            f"{config.web.listener.port}/compte (self-service; /activate, /recover)\n"
            if config.web.listener.enabled
            else ""
        )
        + "Accounts (login / password), also in "
        + str(config.relay.data_dir / DEMO_ACCOUNTS_FILE)
        + ":\n"
        + "".join(f"  {login} / {passwords[login]}\n" for login in passwords)
        + "\nTry it:\n"
        f"  swaks --server {smtp.submission.host}:{smtp.submission.port} --tls"
        f" --tls-ca-path {ca} --auth PLAIN --auth-user {practitioner}"
        f" --auth-password '{passwords[practitioner]}' --from {practitioner}"
        f" --to {patient} --header 'Subject: test'\n"
        f"  swaks --server {smtp.mx.host}:{smtp.mx.port} --tls --tls-ca-path {ca}"
        f" --tls-cert {tls_dir / 'operator-b.pem'} --tls-key {tls_dir / 'operator-b.key'}"
        f" --from dr.martin@{OTHER_OPERATOR_DOMAIN} --to {practitioner}\n"
        + (
            f"  curl --cacert {ca} --user '{patient}:{passwords[patient]}'"
            f" 'imaps://{config.imap.implicit.host}:{config.imap.implicit.port}/INBOX;UID=1'\n"
            if config.imap.implicit.enabled
            else ""
        )
        + "  (or any IMAP client: Thunderbird, mutt, mbsync, with the CA above)\n"
    )


async def run_demo(
    directory_config: DirectoryConfig,
    config: Config,
    out: IO[str],
    *,
    serve: bool = True,
) -> int:
    if config.tls is None:
        raise ConfigError("tls: the demo needs a [tls] table (see conf/relay.toml)")
    now = datetime.now(UTC)
    load_master_key(config)
    renewed = make_demo_tls(config.tls, now)
    directory = await open_directory(directory_config)
    try:
        counts = await load_demo(directory, config.relay.domain)
        operator_dn = _operator_dn(config.tls)
        if renewed or operator_dn != OTHER_OPERATOR_DN:
            await _whitelist_demo_operator(directory, operator_dn)
    finally:
        await directory.close()
    patient = f"{_ins(DEMO_PATIENT_NIR)}@{config.relay.patient_domain}"
    passwords = ensure_demo_accounts(config, patient)
    where = (
        directory_config.sqlite_path
        if directory_config.backend == "sqlite"
        else directory_config.ldap
    )
    conf = f" --config {config.source}" if config.source else ""
    out.write(
        "mssante demo: trust directory ready\n"
        f"  directory: {directory_config.backend.value} ({where})\n"
        + "".join(f"  {k.replace('_', ' ')}: {v}\n" for k, v in counts.items())
        + "\nBrowse it:\n"
        f"  mssante{conf} directory search moreau\n"
        f"  mssante{conf} directory show {DEMO_PRACTITIONER}\n"
        f"  mssante{conf} directory show 10009051870\n"
        f"  mssante{conf} directory search dupont --kind patient\n"
        f"  mssante{conf} audit show --mailbox {DEMO_PRACTITIONER}\n"
        + _connect_help(config, passwords, patient)
    )
    if not serve:
        return 0
    from cli.serve import serve as serve_relay

    config = dataclasses.replace(config, directory=directory_config)
    return await serve_relay(config, out)


def _operator_dn(tls: TlsSettings) -> str:
    pem = (tls.cert_file.parent / "operator-b.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()


async def _whitelist_demo_operator(directory: Directory, subject_dn: str) -> None:
    entry = Operator(
        domain=OTHER_OPERATOR_DOMAIN,
        certificates=(OperatorCertificate(subject_dn=subject_dn),),
        description="another operator (demo): its certificate is in data/tls/",
        source="demo",
    )
    try:
        await directory.add(entry)
    except EntryExistsError:
        await directory.replace(entry)
