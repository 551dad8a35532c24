"""Fixtures of the crypto tests: one IGC-Santé-like PKI per session.

The PKI is generated at the real current time (``NOW``) so that foreign tools
that read the clock (``gpgsm``) agree with it; our own code always receives
``at`` explicitly. Generating it costs about a second (RSA keys); it is built
once and its leaves are shared, read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from mssante.crypto import TrustStore
from mssante.crypto.testpki import Issued, TestPKI

NOW = datetime.now(UTC).replace(microsecond=0)
ALICE = "alice.martin@hopital.mssante.test"
BOB = "bob.durand@cabinet.mssante.test"
CAROL = "carol.petit@clinique.mssante.test"
ORG = "secretariat@hopital.mssante.test"
MESSAGE = (
    b"From: Alice Martin <" + ALICE.encode() + b">\r\n"
    b"To: <" + BOB.encode() + b">\r\n"
    b"Subject: Compte rendu\r\n"
    b"Message-ID: <1@hopital.mssante.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Bonjour,\r\nle compte rendu est joint.\r\n"
)


@dataclass(frozen=True, slots=True)
class People:
    pki: TestPKI
    alice: Issued  # RSA, sign + encrypt
    alice_ec: Issued  # ECDSA P-256, signature only
    bob: Issued
    carol: Issued
    org: Issued
    expired: Issued
    revoked: Issued
    wrong_usage: Issued
    untrusted: Issued
    trust: TrustStore


@pytest.fixture(scope="session")
def people() -> People:
    pki = TestPKI(at=NOW)
    revoked = pki.revoked(ALICE)
    return People(
        pki=pki,
        alice=pki.practitioner(ALICE, name="MARTIN Alice", rpps="10000000007"),
        alice_ec=pki.practitioner(ALICE, name="MARTIN Alice", key="ec"),
        bob=pki.practitioner(BOB, name="DURAND Bob"),
        carol=pki.practitioner(CAROL, name="PETIT Carol"),
        org=pki.organisation(ORG, finess="010000024"),
        expired=pki.expired(ALICE),
        revoked=revoked,
        wrong_usage=pki.wrong_usage(ALICE),
        untrusted=pki.untrusted(ALICE),
        trust=TrustStore(
            roots=(pki.root.cert,), intermediates=pki.intermediates, crls=pki.crls()
        ),
    )
