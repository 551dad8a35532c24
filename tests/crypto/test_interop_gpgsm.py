"""Interoperability with GnuPG's ``gpgsm``, both directions.

gpgsm runs in its own ``GNUPGHOME`` (a temporary directory) with the test
root imported and marked trusted in ``trustlist.txt``; CRL checks are off
there (gpgsm fetches CRLs through dirmngr, which these tests do not run).
gpgsm is a CMS tool, not a MIME one: it gets and gives DER.

gpgsm 2.2 has neither RSA-OAEP nor AuthEnvelopedData (AES-GCM; added in
GnuPG 2.3), so what we encrypt for it uses the COMPAT profile (RSA PKCS#1
v1.5 + AES-256-CBC); the tests below pin that it fails on the MODERN one, so
that a newer gpgsm shows up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12

from mssante.crypto import Reason, Recipient, RecipientProfile
from mssante.crypto.cms import (
    SignatureScheme,
    decrypt_envelope,
    encrypt_envelope,
    sign_data,
    verify_signed_data,
)
from tests.crypto.conftest import NOW, People

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from mssante.crypto.testpki import Issued

pytestmark = pytest.mark.skipif(shutil.which("gpgsm") is None, reason="no gpgsm")
PASSPHRASE = b"interop"
P12_ATTEMPTS = 5
CONTENT = b"Content-Type: text/plain\r\n\r\nBonjour\r\n"


@dataclass(frozen=True, slots=True)
class Gpgsm:
    home: Path

    def run(self, *args: str, data: bytes = b"", check: bool = True) -> bytes:
        done = self._run(args, data)
        if check:
            assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    def succeeds(self, *args: str, data: bytes = b"") -> bool:
        return self._run(args, data).returncode == 0

    def _run(
        self, args: tuple[str, ...], data: bytes
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "gpgsm",
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase-fd",
                "0",
                *args,
            ],
            input=data or PASSPHRASE + b"\n",
            capture_output=True,
            env={**os.environ, "GNUPGHOME": str(self.home)},
            check=False,
        )

    def file(self, name: str, data: bytes) -> str:
        path = self.home / name
        path.write_bytes(data)
        return str(path)


def fingerprint(who: Issued) -> str:
    return who.cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - gpgsm's key id


@pytest.fixture(scope="module")
def gpgsm(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpgsm]:
    home = tmp_path_factory.mktemp("gpgsm")
    home.chmod(0o700)
    (home / "gpgsm.conf").write_text("disable-crl-checks\n")
    (home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
    root = people.pki.root
    (home / "trustlist.txt").write_text(f"{fingerprint(root)} S relax\n")
    g = Gpgsm(home)
    certs = root.cert_pem + people.pki.intermediates_pem
    certs += people.alice.cert_pem + people.bob.cert_pem + people.alice_ec.cert_pem
    g.run("--import", g.file("certs.pem", certs), data=b"\n")
    encryption = (
        PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())  # noqa: S303 - what gpgsm 2.2 reads
        .build(PASSPHRASE)
    )
    for who in (people.alice, people.bob):
        # gpgsm 2.2 fails to read about 1 PKCS#12 file in 80 ("error at
        # bag.data"), depending on the random salt and IV of the file: a new
        # serialization of the same key is read. Passphrase of the file, then
        # the new protection passphrase (twice).
        path = ""
        for _ in range(P12_ATTEMPTS):
            p12 = pkcs12.serialize_key_and_certificates(
                b"k", who.key, None, None, encryption
            )
            path = g.file("key.p12", p12)
            if g.succeeds("--import", path, data=PASSPHRASE + b"\n" * 3):
                break
        else:
            g.run("--import", path, data=PASSPHRASE + b"\n" * 3)  # the error
    try:
        yield g
    finally:
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(home)},
            check=False,
            capture_output=True,
        )


@pytest.mark.parametrize(
    ("who", "scheme"),
    [
        ("alice", SignatureScheme.PKCS1V15),
        ("alice", SignatureScheme.PSS),
        ("alice_ec", SignatureScheme.PKCS1V15),
    ],
)
@pytest.mark.parametrize("detached", [True, False])
def test_gpgsm_verifies_what_we_sign(
    people: People, gpgsm: Gpgsm, who: str, scheme: SignatureScheme, detached: bool
) -> None:
    der = sign_data(
        CONTENT, getattr(people, who), at=NOW, scheme=scheme, detached=detached
    )
    args = ["--verify", gpgsm.file("sig.der", der)]
    if detached:
        args.append(gpgsm.file("content", CONTENT))

    done = subprocess.run(
        ["gpgsm", "--batch", "--status-fd", "1", *args],
        capture_output=True,
        env={**os.environ, "GNUPGHOME": str(gpgsm.home)},
        check=False,
    )

    assert b"[GNUPG:] GOODSIG" in done.stdout, done.stderr.decode()
    assert b"[GNUPG:] VALIDSIG" in done.stdout


def test_gpgsm_decrypts_what_we_encrypt_with_the_compat_profile(
    people: People, gpgsm: Gpgsm
) -> None:
    der = encrypt_envelope(
        CONTENT, [Recipient(people.bob.cert, RecipientProfile.COMPAT)]
    )

    out = gpgsm.run("--decrypt", gpgsm.file("env.der", der), data=b"")

    assert out == CONTENT


def test_gpgsm_22_cannot_open_the_modern_profile(people: People, gpgsm: Gpgsm) -> None:
    der = encrypt_envelope(CONTENT, [people.bob.cert])

    out = gpgsm.run("--decrypt", gpgsm.file("env.der", der), data=b"", check=False)

    assert out != CONTENT


@pytest.mark.parametrize("detached", [True, False])
def test_we_verify_what_gpgsm_signs(
    people: People, gpgsm: Gpgsm, detached: bool
) -> None:
    content = gpgsm.file("content", CONTENT)
    mode = "--detach-sign" if detached else "--sign"

    der = gpgsm.run(mode, "-u", fingerprint(people.alice), content, data=b"")

    result = verify_signed_data(
        der, people.trust, at=NOW, content=CONTENT if detached else None
    )
    assert result.reason is Reason.VALID, result.detail
    assert result.content == CONTENT


def test_gpgsm_signature_over_other_content_is_bad(
    people: People, gpgsm: Gpgsm
) -> None:
    der = gpgsm.run(
        "--detach-sign",
        "-u",
        fingerprint(people.alice),
        gpgsm.file("content", CONTENT),
        data=b"",
    )

    result = verify_signed_data(der, people.trust, at=NOW, content=CONTENT + b"!")

    assert result.reason is Reason.BAD_SIGNATURE


def test_we_decrypt_what_gpgsm_encrypts(people: People, gpgsm: Gpgsm) -> None:
    der = gpgsm.run(
        "--encrypt",
        "--cipher-algo",
        "AES256",
        "-r",
        fingerprint(people.bob),
        gpgsm.file("content", CONTENT),
        data=b"",
    )

    assert decrypt_envelope(der, people.bob) == CONTENT
