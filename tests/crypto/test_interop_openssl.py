"""Interoperability with ``openssl cms``, both directions.

What we sign and encrypt, OpenSSL verifies and decrypts; what OpenSSL signs
and encrypts (RSA PKCS#1 v1.5 and PSS, ECDSA, AES-CBC EnvelopedData, AES-GCM
AuthEnvelopedData with RSA-OAEP), we verify and decrypt.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from mssante.crypto import (
    Reason,
    Recipient,
    RecipientProfile,
    SignatureScheme,
    decrypt,
    encrypt,
    sign,
    sign_and_encrypt,
    unwrap,
    verify,
)
from mssante.crypto.smime import split_message
from tests.crypto.conftest import ALICE, MESSAGE, NOW, People

if TYPE_CHECKING:
    from pathlib import Path

    from mssante.crypto.testpki import Issued

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
ENTITY = split_message(MESSAGE)[1]


def openssl(*args: str | Path, data: bytes = b"") -> bytes:
    done = subprocess.run(
        ["openssl", "cms", *map(str, args)],
        input=data,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def files(tmp_path: Path, people: People, who: Issued) -> tuple[Path, Path, Path]:
    (tmp_path / "ca.pem").write_bytes(people.pki.root_pem)
    (tmp_path / "cert.pem").write_bytes(who.cert_pem + who.chain_pem)
    (tmp_path / "key.pem").write_bytes(who.key_pem)
    return tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"


@pytest.mark.parametrize("detached", [True, False])
@pytest.mark.parametrize(
    ("who", "scheme"),
    [
        ("alice", SignatureScheme.PKCS1V15),
        ("alice", SignatureScheme.PSS),
        ("alice_ec", SignatureScheme.PKCS1V15),
    ],
)
def test_openssl_verifies_what_we_sign(
    people: People, tmp_path: Path, who: str, scheme: SignatureScheme, detached: bool
) -> None:
    signer = getattr(people, who)
    ca, _, _ = files(tmp_path, people, signer)
    signed = sign(ENTITY, signer, at=NOW, scheme=scheme, detached=detached)

    out = openssl("-verify", "-CAfile", ca, "-purpose", "smimesign", data=signed)

    assert out == ENTITY


@pytest.mark.parametrize("profile", list(RecipientProfile))
def test_openssl_decrypts_what_we_encrypt(
    people: People, tmp_path: Path, profile: RecipientProfile
) -> None:
    _, cert, key = files(tmp_path, people, people.bob)
    sealed = encrypt(
        ENTITY, [Recipient(people.alice.cert), Recipient(people.bob.cert, profile)]
    )

    out = openssl("-decrypt", "-recip", cert, "-inkey", key, data=sealed)

    assert out == ENTITY


def test_openssl_unwraps_our_sign_then_encrypt(people: People, tmp_path: Path) -> None:
    ca, cert, key = files(tmp_path, people, people.bob)
    sealed = sign_and_encrypt(ENTITY, people.alice, [people.bob.cert], at=NOW)

    signed = openssl("-decrypt", "-recip", cert, "-inkey", key, data=sealed)
    out = openssl("-verify", "-CAfile", ca, data=signed)

    assert out == ENTITY


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("-nodetach",),
        ("-keyopt", "rsa_padding_mode:pss", "-keyopt", "rsa_pss_saltlen:32"),
        ("-md", "sha512"),
    ],
    ids=["detached", "opaque", "pss", "sha512"],
)
def test_we_verify_what_openssl_signs(
    people: People, tmp_path: Path, options: tuple[str, ...]
) -> None:
    _, cert, key = files(tmp_path, people, people.alice)
    signed = openssl("-sign", "-signer", cert, "-inkey", key, *options, data=ENTITY)

    result = verify(signed, people.trust, at=NOW, sender=ALICE)

    assert result.reason is Reason.VALID, result.detail
    assert split_message(result.content)[1] == ENTITY


def test_we_verify_what_openssl_signs_with_ecdsa(
    people: People, tmp_path: Path
) -> None:
    _, cert, key = files(tmp_path, people, people.alice_ec)
    signed = openssl("-sign", "-signer", cert, "-inkey", key, data=ENTITY)

    assert verify(signed, people.trust, at=NOW).ok


def test_openssl_signature_over_tampered_content_is_bad(
    people: People, tmp_path: Path
) -> None:
    _, cert, key = files(tmp_path, people, people.alice)
    signed = openssl("-sign", "-signer", cert, "-inkey", key, data=ENTITY)

    tampered = signed.replace(b"compte rendu", b"compte-rendu")

    assert verify(tampered, people.trust, at=NOW).reason is Reason.BAD_SIGNATURE


def test_openssl_signature_without_certificates_needs_the_directory_one(
    people: People, tmp_path: Path
) -> None:
    _, cert, key = files(tmp_path, people, people.alice)
    signed = openssl("-sign", "-signer", cert, "-inkey", key, "-nocerts", data=ENTITY)

    assert verify(signed, people.trust, at=NOW).reason is Reason.UNTRUSTED
    assert verify(signed, people.trust, at=NOW, certificates=[people.alice.cert]).ok


@pytest.mark.parametrize(
    "options",
    [
        ("-aes-256-cbc",),
        (
            "-aes-256-gcm",
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:sha256",
        ),
        ("-aes-256-cbc", "-keyopt", "rsa_padding_mode:oaep"),
    ],
    ids=["cbc-pkcs1", "gcm-oaep256", "cbc-oaep-sha1"],
)
def test_we_decrypt_what_openssl_encrypts(
    people: People, tmp_path: Path, options: tuple[str, ...]
) -> None:
    _, cert, _ = files(tmp_path, people, people.bob)
    cipher, *keyopts = options  # -keyopt applies to the -recip before it
    sealed = openssl("-encrypt", cipher, "-recip", cert, *keyopts, data=ENTITY)

    assert decrypt(sealed, people.bob) == ENTITY


def test_we_unwrap_openssl_sign_then_encrypt(people: People, tmp_path: Path) -> None:
    _, alice_cert, alice_key = files(tmp_path, people, people.alice)
    (tmp_path / "bob.pem").write_bytes(people.bob.cert_pem)
    signed = openssl("-sign", "-signer", alice_cert, "-inkey", alice_key, data=ENTITY)
    sealed = openssl(
        "-encrypt", "-aes-256-cbc", "-recip", tmp_path / "bob.pem", data=signed
    )

    result = unwrap(sealed, people.trust, at=NOW, recipient=people.bob, sender=ALICE)

    assert result.encrypted
    assert result.verification is not None
    assert result.verification.ok
    assert result.message == ENTITY


@pytest.mark.parametrize(
    "options",
    [("-noattr",), ("-keyid",)],
    ids=["no-signed-attributes", "ski-signer-id"],
)
def test_we_verify_openssl_signature_variants(
    people: People, tmp_path: Path, options: tuple[str, ...]
) -> None:
    _, cert, key = files(tmp_path, people, people.alice)
    signed = openssl("-sign", "-signer", cert, "-inkey", key, *options, data=ENTITY)

    result = verify(signed, people.trust, at=NOW)

    assert result.reason is Reason.VALID, result.detail
    assert result.signing_time is None or "-keyid" in options


def test_we_skip_recipient_infos_that_are_not_key_transport(
    people: People, tmp_path: Path
) -> None:
    _, cert, _ = files(tmp_path, people, people.bob)
    sealed = openssl(
        "-encrypt",
        "-aes-256-cbc",
        "-secretkey",
        "00" * 32,
        "-secretkeyid",
        "01",
        "-recip",
        cert,
        data=ENTITY,
    )

    assert decrypt(sealed, people.bob) == ENTITY


def test_triple_des_from_openssl_is_unsupported(people: People, tmp_path: Path) -> None:
    from mssante.crypto import UnsupportedError

    _, cert, _ = files(tmp_path, people, people.bob)
    sealed = openssl("-encrypt", "-des3", "-recip", cert, data=ENTITY)

    with pytest.raises(UnsupportedError):
        decrypt(sealed, people.bob)
