"""atheris harness for the S/MIME and CMS parsers (run outside CI).

Invariant (as h11's): every entry point either parses or raises
``CryptoError``; verification never raises at all. Any other exception is a
finding. Seeded with real signed and encrypted messages of the test PKI.

Run::

    pip install atheris
    python tests/fuzz/fuzz_smime.py -atheris_runs=100000 [corpus_dir]

Not collected by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from datetime import UTC, datetime

from mssante.crypto import CryptoError, Recipient, RecipientProfile, TrustStore
from mssante.crypto.cms import content_type_of, decrypt_envelope, verify_signed_data
from mssante.crypto.smime import (
    encrypt,
    kind_of,
    sign,
    sign_and_encrypt,
    unwrap,
    verify,
)
from mssante.crypto.testpki import TestPKI

AT = datetime(2026, 1, 1, tzinfo=UTC)
PKI = TestPKI(at=AT)
ALICE = PKI.practitioner("alice@hopital.mssante.test")
BOB = PKI.practitioner("bob@cabinet.mssante.test")
TRUST = TrustStore(roots=(PKI.root.cert,), crls=PKI.crls())
MESSAGE = b"Subject: x\r\nContent-Type: text/plain\r\n\r\nBonjour\r\n"
SEEDS = (
    sign(MESSAGE, ALICE, at=AT),
    sign(MESSAGE, ALICE, at=AT, detached=False),
    encrypt(MESSAGE, [BOB.cert]),
    encrypt(MESSAGE, [Recipient(BOB.cert, RecipientProfile.COMPAT)]),
    sign_and_encrypt(MESSAGE, ALICE, [BOB.cert], at=AT),
)


def one_input(data: bytes) -> None:
    for parse in (
        lambda: content_type_of(data),
        lambda: decrypt_envelope(data, BOB),
        lambda: kind_of(data),
        lambda: unwrap(data, TRUST, at=AT, recipient=BOB),
    ):
        with contextlib.suppress(CryptoError):
            parse()
    verify_signed_data(data, TRUST, at=AT)
    verify(data, TRUST, at=AT)


def main() -> None:
    atheris = importlib.import_module("atheris")
    if len(sys.argv) > 1 and not sys.argv[-1].startswith("-"):
        corpus = sys.argv[-1]
        from pathlib import Path

        Path(corpus).mkdir(exist_ok=True)
        for i, seed in enumerate(SEEDS):
            (Path(corpus) / f"seed{i}").write_bytes(seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
