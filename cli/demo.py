"""``mssante demo``: the embedded directory loaded with demo data.

Idempotent: a second run imports the same files (all unchanged) and keeps the
entries it added before. Demo patients use the INS demonstration OID
(1.2.250.1.213.1.4.11), which production mode refuses.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

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

if TYPE_CHECKING:
    from directory.config import DirectoryConfig
    from directory.protocol import Directory
    from relay.config import Config

DEMO_DIR: Final = Path(__file__).resolve().parent.parent / "conf" / "demo"
MSSANTE_FILE: Final = "Extraction_Correspondance_MSSante_202611220300.txt"
RPPS_FILE: Final = "PS_LibreAcces_Personne_activite_202611220300.txt"


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
            domain="mssante.fr",
            certificates=(
                OperatorCertificate(
                    subject_dn="CN=mx.mssante.fr,O=Operateur National Demo,C=FR"
                ),
            ),
            description="national operator (demo)",
            source="demo",
        ),
        Delegation(
            account="secretariat.cardio",
            mailbox="helene.d-almeida.1870@medecin.mssante.fr",
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


async def run_demo(
    directory_config: DirectoryConfig, config: Config, out: IO[str]
) -> int:
    directory = await open_directory(directory_config)
    try:
        counts = await load_demo(directory, config.relay.domain)
    finally:
        await directory.close()
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
        f"  mssante{conf} directory show helene.d-almeida.1870@medecin.mssante.fr\n"
        f"  mssante{conf} directory show 10009051870\n"
        f"  mssante{conf} directory search dupont --kind patient\n"
        f"  mssante{conf} directory export --format json --kind operator\n"
        "\n(The SMTP and IMAP listeners come with the relay; this demo serves the directory.)\n"
    )
    return 0
