"""Loading certificates and keys, trust stores, and S/MIME usage checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from mssante.crypto import (
    Credential,
    CryptoError,
    MalformedError,
    Reason,
    TrustStore,
    UnsupportedError,
    certificate_addresses,
    load_certificate,
    load_certificates,
    load_private_key,
    sign,
    validate_smime_certificate,
    verify,
)
from mssante.crypto.certs import _run_to_completion
from mssante.crypto.testpki import Usage
from tests.crypto.conftest import ALICE, MESSAGE, NOW, People

if TYPE_CHECKING:
    from collections.abc import Generator


def test_certificate_loads_from_pem_and_der(people: People) -> None:
    assert load_certificate(people.alice.cert_pem) == people.alice.cert
    assert load_certificate(people.alice.cert_der) == people.alice.cert
    assert load_certificates(people.alice.cert_pem + people.alice.chain_pem) == (
        people.alice.cert,
        people.pki.persons.cert,
    )


@pytest.mark.parametrize("loader", [load_certificate, load_certificates])
def test_garbage_is_not_a_certificate(loader: object) -> None:
    assert callable(loader)
    with pytest.raises(MalformedError):
        loader(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(MalformedError):
        load_certificate(b"\x30\x00")


def test_private_key_loads_from_pem_der_and_encrypted_pem(people: People) -> None:
    key = people.alice.key
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    protected = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )

    assert load_private_key(der).public_key() == key.public_key()
    assert (
        load_private_key(protected, password=b"secret").public_key() == key.public_key()
    )
    with pytest.raises(MalformedError):
        load_private_key(protected)
    with pytest.raises(MalformedError):
        load_private_key(b"garbage")


def test_key_outside_the_profile_is_unsupported() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    with pytest.raises(UnsupportedError):
        load_private_key(pem)


def test_credential_from_pem_signs_like_the_original(people: People) -> None:
    alice = people.alice
    credential = Credential.from_pem(alice.cert_pem, alice.key_pem, alice.chain_pem)
    bare = Credential.from_pem(alice.cert_pem, alice.key_pem)

    assert credential.chain == (people.pki.persons.cert,)
    assert bare.chain == ()
    assert verify(sign(MESSAGE, credential, at=NOW), people.trust, at=NOW).ok
    assert "key" not in repr(credential).replace("public_key", "")


def test_trust_store_from_pem(people: People) -> None:
    pki = people.pki
    store = TrustStore.from_pem(pki.root_pem, pki.intermediates_pem, pki.crls())

    assert store.roots == (pki.root.cert,)
    assert store.intermediates == pki.intermediates
    assert TrustStore.from_pem(pki.root_pem).intermediates == ()
    assert verify(sign(MESSAGE, people.alice, at=NOW), store, at=NOW).ok


def test_addresses_come_from_san_and_legacy_subject_email(people: People) -> None:
    pki = people.pki
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "legacy"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "Legacy@Example.test"),
        ]
    )
    legacy = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(pki.persons.cert.subject)
        .public_key(people.alice.key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW)
        .sign(pki.persons.key, hashes.SHA256())
    )

    assert certificate_addresses(people.alice.cert) == (ALICE,)
    assert certificate_addresses(legacy) == ("legacy@example.test",)


@pytest.mark.parametrize(
    ("usage", "purpose", "reason"),
    [
        (Usage.SIGNATURE, "encrypt", Reason.WRONG_USAGE),
        (Usage.ENCRYPTION, "sign", Reason.WRONG_USAGE),
        (Usage.ENCRYPTION, "encrypt", Reason.VALID),
        (Usage.SIGNATURE, "sign", Reason.VALID),
    ],
)
def test_key_usage_must_allow_the_operation(
    people: People, usage: Usage, purpose: str, reason: Reason
) -> None:
    cert = people.pki.practitioner(ALICE, usage=usage).cert

    got, _ = validate_smime_certificate(
        cert,
        people.trust,
        at=NOW,
        purpose="sign" if purpose == "sign" else "encrypt",
    )

    assert got is reason


def test_garbage_crl_makes_validation_malformed(people: People) -> None:
    store = TrustStore(roots=people.trust.roots, crls=(b"\x30\x03\x02\x01\x00",))

    got, _ = validate_smime_certificate(people.alice.cert, store, at=NOW)

    assert got is Reason.MALFORMED


def test_a_coroutine_that_waits_is_refused() -> None:
    class Later:
        def __await__(self) -> Generator[None, None, None]:
            yield

    async def waits() -> int:
        await Later()
        return 1

    with pytest.raises(CryptoError):
        _run_to_completion(waits())


def test_certificate_without_key_usage_extension_may_sign(people: People) -> None:
    from datetime import timedelta

    pki = people.pki
    cert = (
        x509.CertificateBuilder()
        .subject_name(people.alice.cert.subject)
        .issuer_name(pki.persons.cert.subject)
        .public_key(people.alice.key.public_key())
        .serial_number(3)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(pki.persons.key, hashes.SHA256())
    )
    soft = TrustStore(roots=people.trust.roots, revocation_mode="soft-fail")

    got, detail = validate_smime_certificate(
        cert, soft, at=NOW, extra=[pki.persons.cert]
    )

    assert got is Reason.VALID, detail


def test_crl_that_is_not_der_is_refused_when_the_store_is_built(
    people: People,
) -> None:
    with pytest.raises(MalformedError):
        TrustStore(roots=people.trust.roots, crls=(b"not a CRL",))
