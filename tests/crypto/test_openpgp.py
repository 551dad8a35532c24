"""PGP/MIME through our Keyring and against the ``gpg`` command line.

Two isolated keyrings (Alice's and Bob's), each in its own temporary
directory, with fast Curve25519 keys made by ``gpg --quick-gen-key``; each
holds the other's public key, as a relay would hold directory keys.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from mssante.crypto import MalformedError, OpenPGPError, Reason
from mssante.crypto.openpgp import Keyring
from tests.crypto.conftest import ALICE, BOB, MESSAGE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="no gpg")


@dataclass(frozen=True, slots=True)
class Party:
    home: Path
    fingerprint: str
    keyring: Keyring

    def gpg(self, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "gpg",
                "--batch",
                "--homedir",
                str(self.home),
                "--trust-model",
                "always",
                "--status-fd",
                "2",
                *args,
            ],
            input=data,
            capture_output=True,
            check=False,
        )


def make_party(home: Path, address: str) -> Party:
    home.mkdir(mode=0o700, exist_ok=True)
    home.chmod(0o700)
    base = ["gpg", "--batch", "--homedir", str(home), "--passphrase", ""]
    subprocess.run(
        [*base, "--quick-gen-key", f"<{address}>", "ed25519", "sign,cert", "never"],
        check=True,
        capture_output=True,
    )
    keyring = Keyring(home)
    listing = subprocess.run(
        ["gpg", "--homedir", str(home), "--with-colons", "--list-secret-keys"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")
    )
    subprocess.run(
        [*base, "--quick-add-key", fingerprint, "cv25519", "encr", "never"],
        check=True,
        capture_output=True,
    )
    return Party(home, fingerprint, keyring)


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Party, Party]]:
    alice = make_party(tmp_path_factory.mktemp("pgp-alice"), ALICE)
    bob = make_party(tmp_path_factory.mktemp("pgp-bob"), BOB)
    alice.keyring.import_keys(bob.keyring.export_public_key(bob.fingerprint))
    bob.keyring.import_keys(alice.keyring.export_public_key(alice.fingerprint))
    try:
        yield alice, bob
    finally:
        for party in (alice, bob):
            subprocess.run(
                ["gpgconf", "--kill", "gpg-agent"],
                env={**os.environ, "GNUPGHOME": str(party.home)},
                check=False,
                capture_output=True,
            )


def body_of(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[1]


def pgp_mime(armored: bytes) -> bytes:
    return (
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
        b' boundary="b1"\r\n\r\n--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\n'
        b"Version: 1\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\n"
        + armored
        + b"\r\n--b1--\r\n"
    )


def test_signed_and_encrypted_message_opens_with_its_signer(
    parties: tuple[Party, Party],
) -> None:
    alice, bob = parties
    sealed = alice.keyring.sign_and_encrypt(
        MESSAGE,
        signer=alice.fingerprint,
        recipients=[bob.fingerprint, alice.fingerprint],
    )

    opened = bob.keyring.decrypt_and_verify(sealed, expected_signer=alice.fingerprint)

    assert b"Bonjour" not in sealed
    assert b"multipart/encrypted" in sealed
    assert b"Subject: Compte rendu" in opened.message
    assert body_of(opened.message) == body_of(MESSAGE)
    assert opened.verification is not None
    assert opened.verification.ok
    assert opened.verification.signer_fingerprint == alice.fingerprint
    assert opened.verification.signing_time is not None
    # the sender keeps a readable copy
    assert alice.keyring.decrypt_and_verify(sealed).verification is not None


def test_signature_by_another_key_than_the_directory_one_is_untrusted(
    parties: tuple[Party, Party],
) -> None:
    alice, bob = parties
    sealed = alice.keyring.sign_and_encrypt(
        MESSAGE, signer=alice.fingerprint, recipients=[bob.fingerprint]
    )

    opened = bob.keyring.decrypt_and_verify(sealed, expected_signer=bob.fingerprint)

    assert opened.verification is not None
    assert opened.verification.reason is Reason.UNTRUSTED


def test_unsigned_message_has_no_verification(parties: tuple[Party, Party]) -> None:
    alice, bob = parties
    sealed = alice.keyring.sign_and_encrypt(
        MESSAGE, signer=None, recipients=[bob.fingerprint]
    )

    assert bob.keyring.decrypt_and_verify(sealed).verification is None


def test_tampered_ciphertext_does_not_decrypt(parties: tuple[Party, Party]) -> None:
    alice, bob = parties
    sealed = alice.keyring.sign_and_encrypt(
        MESSAGE, signer=alice.fingerprint, recipients=[bob.fingerprint]
    )
    head, armor = sealed.split(b"-----BEGIN PGP MESSAGE-----\r\n\r\n", 1)
    line = armor[:60]
    flipped = line[:30] + (b"A" if line[30:31] != b"A" else b"B") + line[31:]

    with pytest.raises(OpenPGPError):
        bob.keyring.decrypt_and_verify(
            head + b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + flipped + armor[60:]
        )


def test_message_for_someone_else_does_not_decrypt(
    parties: tuple[Party, Party],
) -> None:
    alice, bob = parties
    sealed = bob.keyring.sign_and_encrypt(
        MESSAGE, signer=None, recipients=[bob.fingerprint]
    )

    with pytest.raises(OpenPGPError):
        alice.keyring.decrypt_and_verify(sealed)


@pytest.mark.parametrize(
    "message",
    [
        MESSAGE,
        pgp_mime(b"no armor here"),
        pgp_mime(b"-----BEGIN PGP MESSAGE-----").replace(b"Version: 1", b"Version: 2"),
    ],
    ids=["plain", "no-armor", "bad-version"],
)
def test_not_pgp_mime_is_malformed(
    parties: tuple[Party, Party], message: bytes
) -> None:
    with pytest.raises(MalformedError):
        parties[1].keyring.decrypt_and_verify(message)


def test_gpg_cli_decrypts_and_verifies_what_we_produce(
    parties: tuple[Party, Party],
) -> None:
    alice, bob = parties
    sealed = alice.keyring.sign_and_encrypt(
        MESSAGE, signer=alice.fingerprint, recipients=[bob.fingerprint]
    )
    begin, end = b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----"
    armored = begin + sealed.split(begin, 1)[1].split(end, 1)[0] + end

    done = bob.gpg("--decrypt", data=armored)

    assert done.returncode == 0, done.stderr.decode()
    assert f"VALIDSIG {alice.fingerprint}".encode() in done.stderr
    assert body_of(done.stdout) == body_of(MESSAGE)


def test_we_open_what_gpg_cli_signs_and_encrypts(parties: tuple[Party, Party]) -> None:
    alice, bob = parties
    done = alice.gpg(
        "--armor",
        "--sign",
        "--encrypt",
        "-r",
        bob.fingerprint,
        "-u",
        alice.fingerprint,
        data=b"Content-Type: text/plain\r\n\r\nsalut\r\n",
    )
    assert done.returncode == 0, done.stderr.decode()

    opened = bob.keyring.decrypt_and_verify(
        pgp_mime(done.stdout), expected_signer=alice.fingerprint
    )

    assert opened.message == b"Content-Type: text/plain\r\n\r\nsalut\r\n"
    assert opened.verification is not None
    assert opened.verification.ok


def test_import_of_garbage_raises(parties: tuple[Party, Party]) -> None:
    with pytest.raises(OpenPGPError):
        parties[0].keyring.import_keys(b"not a key")
    with pytest.raises(OpenPGPError):
        parties[0].keyring.export_public_key("0" * 40)
    with pytest.raises(OpenPGPError):
        parties[0].keyring.sign_and_encrypt(MESSAGE, signer=None, recipients=["0" * 40])


def test_signature_by_a_key_we_do_not_hold_is_untrusted(
    parties: tuple[Party, Party], tmp_path: Path
) -> None:
    _, bob = parties
    carol = make_party(tmp_path / "carol", "carol@clinique.mssante.test")
    try:
        carol.keyring.import_keys(bob.keyring.export_public_key(bob.fingerprint))
        sealed = carol.keyring.sign_and_encrypt(
            MESSAGE, signer=carol.fingerprint, recipients=[bob.fingerprint]
        )

        opened = bob.keyring.decrypt_and_verify(sealed)

        assert opened.verification is not None
        assert opened.verification.reason is Reason.UNTRUSTED
    finally:
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(carol.home)},
            check=False,
            capture_output=True,
        )
