"""Identifier validation: each rule, its clear error, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from directory import identifiers as ids
from directory.errors import InvalidFieldError
from tests.directory.samples import INS_1, luhn_complete

digits = st.text(alphabet="0123456789", min_size=1, max_size=20)


@given(digits)
def test_luhn_completion_always_validates(stem: str) -> None:
    assert ids.luhn_valid(luhn_complete(stem))


@given(digits, st.integers(min_value=1, max_value=9))
def test_luhn_detects_any_single_digit_change(stem: str, delta: int) -> None:
    full = luhn_complete(stem)
    changed = full[:-1] + str((int(full[-1]) + delta) % 10)
    assert not ids.luhn_valid(changed)


@pytest.mark.parametrize("value", ["10285900311", " 10285900311 "])
def test_rpps_accepted(value: str) -> None:
    assert ids.rpps(value) == "10285900311"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10285900312", "Luhn"),
        ("1028590031", "11 digits"),
        ("1028590031A", "11 digits"),
        ("", "11 digits"),
    ],
)
def test_rpps_refused_with_reason(value: str, reason: str) -> None:
    with pytest.raises(InvalidFieldError, match=reason) as info:
        ids.rpps(value)
    assert info.value.field == "rpps"
    assert info.value.value == value


def test_national_id_forms() -> None:
    assert ids.national_practitioner_id("810285900311") == "810285900311"
    assert ids.national_practitioner_id("10285900311") == "810285900311"
    adeli = luhn_complete("75100123")
    assert ids.national_practitioner_id("0" + adeli) == "0" + adeli
    with pytest.raises(InvalidFieldError, match="8 \\+ RPPS"):
        ids.national_practitioner_id("710285900311")
    bad_adeli = adeli[:-1] + str((int(adeli[-1]) + 1) % 10)
    with pytest.raises(InvalidFieldError, match="ADELI key"):
        ids.national_practitioner_id("0" + bad_adeli)


@pytest.mark.parametrize("value", ["755623014", "2A6131864", "2a2819488", "2A0308245"])
def test_finess_accepted_including_corsica(value: str) -> None:
    assert ids.finess(value) == value.upper()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("755623015", "Luhn"),
        ("2C6131864", "9 digits"),
        ("75562301", "9 digits"),
        ("7A5623014", "9 digits"),
    ],
)
def test_finess_refused(value: str, reason: str) -> None:
    with pytest.raises(InvalidFieldError, match=reason):
        ids.finess(value)


def test_siret_luhn_and_la_poste_rule() -> None:
    siret = luhn_complete("7356230140001")
    assert ids.siret(siret) == siret
    assert ids.siret("356 000 000 00048") == "35600000000048"  # head office: plain Luhn
    # A La Poste establishment: digit sum divisible by 5, Luhn not required.
    la_poste = next(
        f"3560000000{n:04d}"
        for n in range(10000)
        if sum(map(int, f"3560000000{n:04d}")) % 5 == 0
        and not ids.luhn_valid(f"3560000000{n:04d}")
    )
    assert ids.siret(la_poste) == la_poste
    with pytest.raises(InvalidFieldError, match="divisible by 5"):
        ids.siret(la_poste[:-1] + str((int(la_poste[-1]) + 1) % 10))
    with pytest.raises(InvalidFieldError, match="Luhn"):
        ids.siret(siret[:-1] + str((int(siret[-1]) + 1) % 10))


def test_structure_id_forms() -> None:
    assert ids.national_structure_id("1755623014") == "1755623014"
    assert ids.national_structure_id("12a6131864") == "12A6131864"
    with pytest.raises(InvalidFieldError, match="1 \\+ FINESS or 3 \\+ SIRET"):
        ids.national_structure_id("755623014")


def test_ins_key_and_corsican_nir() -> None:
    assert ids.ins(INS_1) == INS_1
    nir = "2850299012345"
    assert ids.ins(f"{nir}{97 - int(nir) % 97:02d}")
    corsican = "185012A012345"
    key = 97 - int("185011901 2345".replace(" ", "")) % 97
    assert ids.ins(f"{corsican}{key:02d}") == f"{corsican}{key:02d}"
    corsican_b = "185012B012345"
    key_b = 97 - int("1850118012345") % 97
    assert ids.ins(f"{corsican_b}{key_b:02d}")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (INS_1[:-2] + f"{(int(INS_1[-2:]) % 97) + 1:02d}", "key"),
        (INS_1[:-1], "15 characters"),
        ("4" + INS_1[1:], "15 characters"),
        ("1800175X2345600", "15 characters"),
    ],
)
def test_ins_refused(value: str, reason: str) -> None:
    with pytest.raises(InvalidFieldError, match=reason):
        ids.ins(value)


@given(
    st.sampled_from("12"),
    st.integers(0, 99),
    st.integers(1, 12),
    st.sampled_from(["75", "13", "2A", "2B", "99"]),
    st.integers(0, 999),
    st.integers(0, 999),
)
def test_every_nir_with_its_key_is_an_ins(
    sex: str, year: int, month: int, dept: str, commune: int, order: int
) -> None:
    nir = f"{sex}{year:02d}{month:02d}{dept}{commune:03d}{order:03d}"
    value = f"{nir}{ids.ins_key(nir):02d}"
    assert ids.ins(value) == value


def test_ins_oid_production_mode() -> None:
    assert ids.ins_oid(ids.INS_NIR_OID, production=True) == ids.INS_NIR_OID
    assert ids.ins_oid(ids.INS_NIA_OID, production=True) == ids.INS_NIA_OID
    assert ids.ins_oid(ids.INS_DEMO_OID, production=False) == ids.INS_DEMO_OID
    for oid in (ids.INS_NIR_TEST_OID, ids.INS_DEMO_OID):
        with pytest.raises(InvalidFieldError, match="production"):
            ids.ins_oid(oid, production=True)
    with pytest.raises(InvalidFieldError, match="not an INS OID"):
        ids.ins_oid("1.2.3", production=False)


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("Jean.Dupont@Medecin.MSSante.FR", "Jean.Dupont@medecin.mssante.fr"),
        ("<a@b.fr>", "a@b.fr"),
        ("o'neil+x@ch-paris-1.mssante.fr", "o'neil+x@ch-paris-1.mssante.fr"),
    ],
)
def test_address_canonical_form(value: str, canonical: str) -> None:
    assert ids.address(value) == canonical


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "@b.fr",
        "a@",
        "a..b@c.fr",
        ".a@c.fr",
        "a@localhost",
        "a b@c.fr",
        "a@-c.fr",
        "x" * 65 + "@c.fr",
        '"quoted"@c.fr',
        "a@[127.0.0.1]",
    ],
)
def test_address_refused(value: str) -> None:
    with pytest.raises(InvalidFieldError) as info:
        ids.address(value)
    assert info.value.field == "address"


def test_distinguished_name_normalised() -> None:
    assert ids.distinguished_name(" cn = mx.b.fr ,o=Hôpital B\\, Lyon, c=FR") == (
        "CN=mx.b.fr,O=Hôpital B\\, Lyon,C=FR"
    )
    with pytest.raises(InvalidFieldError, match="distinguished name"):
        ids.distinguished_name("no equals sign")


def test_fingerprint_forms() -> None:
    fp = "AB:" * 31 + "AB"
    assert ids.sha256_fingerprint(fp) == "ab" * 32
    with pytest.raises(InvalidFieldError, match="SHA-256"):
        ids.sha256_fingerprint("abc")


@given(st.text(alphabet="ab9.-_+é!", max_size=8))
def test_plain_local_part_is_a_subset_of_the_dot_atom_rule(local: str) -> None:
    if local and ids.is_plain_local_part(local):
        assert ids.address(f"{local}@example.fr") == f"{local}@example.fr"


@given(st.text(alphabet="0123456789 a", min_size=8, max_size=12))
def test_is_rpps_and_is_adeli_agree_with_the_validators(value: str) -> None:
    for check, validate in ((ids.is_rpps, ids.rpps), (ids.is_adeli, ids.adeli)):
        try:
            valid = validate(value) == value
        except InvalidFieldError:
            valid = False
        assert check(value) == valid
