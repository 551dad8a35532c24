"""What only the LDAP backend has: TLS, binds, ACLs, schema, DIT, failures.

The generic behaviour is in test_contract.py (run against slapd too). These
tests use the session's slapd (``tests.support.ldap_fixtures``), except the
ones that stop a server: they start their own.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import pytest

from directory.devpki import make_server_pki
from directory.errors import DirectoryUnavailableError
from directory.ldap import LdapDirectory, field_attributes
from directory.model import (
    CLASS_OF,
    Activity,
    Delegation,
    DelegationScope,
    Kind,
    key_of,
)
from directory.slapd import MSSANTE_SCHEMA, SCHEMA_DIR, Slapd
from tests.directory import samples

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.ldap_fixtures import SlapdServer

pytestmark = pytest.mark.slapd

RELAY_PASSWORD = "relay-password"


@pytest.fixture
async def populated(ldap_directory: LdapDirectory) -> LdapDirectory:
    """A patient, an unlisted and a published mailbox, a practitioner."""
    await ldap_directory.add(samples.patient())
    await ldap_directory.add(samples.org_mailbox(published=False))
    await ldap_directory.add(samples.mailbox())
    await ldap_directory.add(samples.practitioner())
    return ldap_directory


# --- TLS and binds -----------------------------------------------------------


def test_plain_bind_without_starttls_is_refused(slapd: SlapdServer) -> None:
    done = slapd.slapd.run_tool(
        "ldapwhoami",
        bind_dn=slapd.relay_dn,
        password_file=slapd.relay_password_file,
        starttls=False,
    )
    assert done.returncode == 13  # confidentialityRequired
    assert "confidentiality required" in done.stderr.lower()
    with_tls = slapd.slapd.run_tool(
        "ldapwhoami", bind_dn=slapd.relay_dn, password_file=slapd.relay_password_file
    )
    assert with_tls.stdout.strip() == f"dn:{slapd.relay_dn}"


async def test_wrong_password_is_unavailable(
    slapd: SlapdServer, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    with pytest.raises(DirectoryUnavailableError, match="InvalidCredentials"):
        await LdapDirectory.open(slapd.config(bind_password_file=wrong))


async def test_server_certificate_from_another_ca_is_refused(
    slapd: SlapdServer, tmp_path: Path
) -> None:
    other = make_server_pki(tmp_path / "other-pki")
    with pytest.raises(DirectoryUnavailableError, match=r"(?i)certificate"):
        await LdapDirectory.open(slapd.config(ca_file=other.ca_file))


async def test_host_name_localhost_is_verified_too(slapd: SlapdServer) -> None:
    uri = f"ldap://localhost:{slapd.slapd.port}"
    directory = await LdapDirectory.open(slapd.config(uri=uri))
    try:
        assert await directory.count(Kind.MAILBOX) == 0
    finally:
        await directory.close()


async def test_uri_must_be_ldap_or_ldaps(slapd: SlapdServer) -> None:
    with pytest.raises(ValueError, match=r"directory\.ldap\.uri"):
        await LdapDirectory.open(slapd.config(uri="ldapi:///var/run/slapd.sock"))


async def test_stopped_server_fails_closed(tmp_path: Path) -> None:
    pki = make_server_pki(tmp_path / "pki")
    with Slapd.start(
        tmp_path / "slapd",
        tls_cert=pki.cert_file,
        tls_key=pki.key_file,
        ca_file=pki.ca_file,
    ) as server:
        config = server.relay_config(pki.ca_file, RELAY_PASSWORD, timeout=1.0)
        directory = await LdapDirectory.open(config)
        try:
            await directory.add(samples.mailbox())
            server.stop()
            with pytest.raises(DirectoryUnavailableError):
                await directory.mailbox("zoe.moreau@medecin.mssante.fr")
            with pytest.raises(DirectoryUnavailableError):
                await directory.resolve("zoe.moreau@medecin.mssante.fr")
        finally:
            await directory.close()
        with pytest.raises(DirectoryUnavailableError):
            await LdapDirectory.open(config)


async def test_closed_directory_is_unavailable(slapd: SlapdServer) -> None:
    directory = await LdapDirectory.open(slapd.config())
    await directory.close()
    with pytest.raises(DirectoryUnavailableError, match="closed"):
        await directory.count(Kind.PATIENT)


# --- ACLs (conf/slapd/acl.ldif) ------------------------------------------------


async def test_ordinary_user_reads_published_entries_only(
    slapd: SlapdServer, populated: LdapDirectory
) -> None:
    base = slapd.slapd.base_dn

    def seen(where: str, search_filter: str = "(objectClass=*)") -> list[str]:
        found = slapd.search(
            slapd.reader_dn, slapd.reader_password_file, where, search_filter
        )
        return list(found)

    assert seen(f"ou=patients,{base}") == []
    assert seen(base, "(objectClass=mssPatient)") == []
    assert seen(base, f"(mssIns={samples.INS_1})") == []
    assert seen(f"ou=mailboxes,{base}", "(objectClass=mssMailbox)") == [
        f"mssKey=zoe.moreau@medecin.mssante.fr,ou=mailboxes,{base}"
    ]
    assert seen(base, "(mssPublished=FALSE)") == []
    assert len(seen(base, "(objectClass=mssPractitioner)")) == 1
    assert seen(f"cn=meta,{base}") == []


async def test_ordinary_user_cannot_write(
    slapd: SlapdServer, populated: LdapDirectory
) -> None:
    dn = f"mssKey=zoe.moreau@medecin.mssante.fr,ou=mailboxes,{slapd.slapd.base_dn}"
    done = slapd.slapd.run_tool(
        "ldapmodify",
        stdin=f"dn: {dn}\nchangetype: modify\nreplace: mssPublished\nmssPublished: FALSE\n",
        bind_dn=slapd.reader_dn,
        password_file=slapd.reader_password_file,
    )
    assert done.returncode == 50  # insufficientAccessRights


async def test_relay_reads_patients_and_unlisted_mailboxes(
    slapd: SlapdServer, populated: LdapDirectory
) -> None:
    base = slapd.slapd.base_dn
    relay = (slapd.relay_dn, slapd.relay_password_file)
    assert (
        len(slapd.search(*relay, f"ou=patients,{base}", "(objectClass=mssPatient)"))
        == 1
    )
    assert len(slapd.search(*relay, base, "(mssPublished=FALSE)")) == 1
    assert await populated.patient(samples.INS_1) is not None
    unlisted = await populated.mailbox("urgences@ch-paris-1.mssante.fr")
    assert unlisted is not None
    assert unlisted.published is False


async def test_anonymous_reads_nothing(
    slapd: SlapdServer, populated: LdapDirectory
) -> None:
    # RFC 4513 §5.1.1 anonymous bind, over StartTLS
    assert slapd.search("", None, slapd.slapd.base_dn) == {}
    assert slapd.search("", None, slapd.slapd.base_dn, "(objectClass=mssMailbox)") == {}


async def test_identities_are_not_readable_by_others(slapd: SlapdServer) -> None:
    found = slapd.search(
        slapd.reader_dn,
        slapd.reader_password_file,
        slapd.slapd.base_dn,
        "(objectClass=applicationProcess)",
        "*",
        "userPassword",
    )
    assert list(found) == [slapd.reader_dn]  # itself only
    assert "userPassword" not in found[slapd.reader_dn]  # and not its password


# --- schema and DIT -----------------------------------------------------------------


def test_schema_is_loaded(slapd: SlapdServer) -> None:
    found = slapd.search(
        slapd.reader_dn,
        slapd.reader_password_file,
        "cn=Subschema",
        "(objectClass=subschema)",
        "-s",
        "base",
        "objectClasses",
    )
    text = " ".join(found["cn=Subschema"]["objectClasses"])
    for name in ("mssPractitioner", "mssMailbox", "mssPatient", "mssOperator"):
        assert f"'{name}'" in text


def test_ldif_and_schema_files_define_the_same_names() -> None:
    def names(path: Path) -> list[str]:
        return sorted(re.findall(r"NAME '([A-Za-z]+)'", path.read_text()))

    assert names(MSSANTE_SCHEMA) == names(SCHEMA_DIR / "mssante.schema")
    assert len(names(MSSANTE_SCHEMA)) > 50


@pytest.mark.parametrize("kind", list(Kind))
def test_every_model_field_has_an_attribute(kind: Kind) -> None:
    fields = {f.name for f in dataclasses.fields(CLASS_OF[kind])}
    assert set(field_attributes(kind)) == fields
    schema = MSSANTE_SCHEMA.read_text()
    standard = {"sn", "givenName", "o", "displayName", "description"}
    for attr in field_attributes(kind).values():
        assert attr in standard or f"'{attr}'" in schema


async def test_fields_are_real_attributes(
    slapd: SlapdServer, populated: LdapDirectory
) -> None:
    base = slapd.slapd.base_dn
    relay = (slapd.relay_dn, slapd.relay_password_file)
    mailboxes = slapd.search(
        *relay, f"ou=mailboxes,{base}", "(mssMail=urgences@ch-paris-1.mssante.fr)", "*"
    )
    (attrs,) = mailboxes.values()
    patients = slapd.search(
        *relay, f"ou=patients,{base}", "(objectClass=mssPatient)", "*"
    )
    assert list(patients) == [f"mssKey={samples.INS_1},ou=patients,{base}"]
    (patient,) = patients.values()
    assert attrs["mssBalType"] == ["ORG"]
    assert attrs["mssPublished"] == ["FALSE"]
    assert attrs["mssOwnerId"] == ["1" + samples.FINESS_1]
    assert attrs["mssStatus"] == ["active"]
    assert patient["mssBirthName"] == ["DUPONT"]
    assert patient["mssBlockedSender"] == ["spam@medecin.mssante.fr"]


async def test_local_part_is_case_exact(ldap_directory: LdapDirectory) -> None:
    await ldap_directory.add(samples.mailbox("Jean@medecin.mssante.fr"))
    await ldap_directory.add(
        samples.mailbox("jean@medecin.mssante.fr", display_name="j")
    )
    upper = await ldap_directory.mailbox("Jean@MEDECIN.mssante.fr")
    lower = await ldap_directory.mailbox("jean@medecin.mssante.fr")
    assert upper is not None
    assert lower is not None
    assert (upper.address, lower.display_name) == ("Jean@medecin.mssante.fr", "j")
    assert await ldap_directory.count(Kind.MAILBOX) == 2


@pytest.mark.parametrize(
    "account",
    [
        "a,b+c=d",
        '#"quoted" <x>;',
        " leading space",
        "trailing space ",
        "a  b",
        "\\back*(x)",
    ],
)
async def test_any_key_is_a_safe_rdn(
    ldap_directory: LdapDirectory, account: str
) -> None:
    delegation = Delegation(
        account=account,
        mailbox="zoe.moreau@medecin.mssante.fr",
        scope=DelegationScope.READ,
    )
    await ldap_directory.add(delegation)
    assert await ldap_directory.get(Kind.DELEGATION, delegation.key) == delegation
    assert await ldap_directory.delegations(account=account) == [delegation]
    assert [key_of(d) async for d in ldap_directory.entries(Kind.DELEGATION)] == [
        delegation.key
    ]


async def test_nested_items_keep_order_and_repeats(
    ldap_directory: LdapDirectory,
) -> None:
    b = Activity(structure_name="B")
    a = Activity(structure_name="A")
    practitioner = samples.practitioner(activities=(b, a, b))
    await ldap_directory.add(practitioner)
    stored = await ldap_directory.practitioner(samples.RPPS_1)
    assert stored is not None
    assert stored.activities == (b, a, b)


async def test_meta_names_with_equals_sign(ldap_directory: LdapDirectory) -> None:
    await ldap_directory.set_meta("a=b", "1")
    await ldap_directory.set_meta("a", "2=3")
    assert await ldap_directory.get_meta("a=b") == "1"
    assert await ldap_directory.get_meta("a") == "2=3"


async def test_large_import_pages_and_streams_in_key_order(
    ldap_directory: LdapDirectory,
) -> None:
    from directory.protocol import ImportRun

    boxes = [
        dataclasses.replace(
            samples.mailbox(f"m{i:04d}@medecin.mssante.fr"), source="mssante"
        )
        for i in range(1200)
    ]
    counts = await ldap_directory.import_batch(boxes[::-1], ImportRun("mssante", "r1"))
    assert counts.added == 1200
    again = await ldap_directory.import_batch(boxes, ImportRun("mssante", "r2"))
    assert again.unchanged == 1200
    streamed = [key_of(m) async for m in ldap_directory.entries(Kind.MAILBOX)]
    assert streamed == sorted(m.address for m in boxes)
    assert await ldap_directory.count(Kind.MAILBOX) == 1200
    assert (
        await ldap_directory.suspend_absent(Kind.MAILBOX, ImportRun("mssante", "r2"))
        == []
    )


async def test_relay_identity_cannot_change_or_delete_consent_records(
    slapd: SlapdServer, populated: LdapDirectory
) -> None:
    from directory.consent import OptOut

    await populated.change_consent(samples.INS_1, OptOut(), actor="cli", now=samples.T0)
    base = slapd.slapd.base_dn
    dn = f"mssConsentSeq=1,mssKey={samples.INS_1},ou=patients,{base}"
    relay = {"bind_dn": slapd.relay_dn, "password_file": slapd.relay_password_file}
    modify = slapd.slapd.run_tool(
        "ldapmodify",
        stdin=f"dn: {dn}\nchangetype: modify\nreplace: mssConsentData\nmssConsentData: {{}}\n",
        **relay,  # type: ignore[arg-type]
    )
    delete = slapd.slapd.run_tool("ldapdelete", dn, **relay)  # type: ignore[arg-type]
    assert (modify.returncode, delete.returncode) == (
        50,
        50,
    )  # insufficientAccessRights
    [record] = await populated.consent_history(samples.INS_1)
    assert record.details == {}
    assert record.actor == "cli"
