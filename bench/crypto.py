"""Benchmark of end-to-end S/MIME: ours against ``openssl cms``, same inputs, same run.

Owns area ``crypto`` of ``python -m bench``. For messages of 10 KB, 1 MB and
10 MB (a MIME entity with a base64 attachment, as practice software sends):

- ``sign_encrypt``: sign (``multipart/signed``, RSA 2048, SHA-256) then
  encrypt to two recipients (RSA-OAEP-SHA-256, AES-256-GCM
  AuthEnvelopedData); reference: ``openssl cms -sign`` then ``openssl cms
  -encrypt -aes-256-gcm`` with OAEP key options, on the same files;
- ``decrypt_verify``: decrypt, verify the signature and validate the signer's
  path with CRLs; reference: ``openssl cms -decrypt`` then ``openssl cms
  -verify -crl_check_all``.

What must stay true: both sides get the same bytes and keys from one
:class:`mssante.crypto.testpki.TestPKI`; each figure is the median of
``--repeat`` runs; the reference includes process start-up and file I/O (that
is what a relay shelling out to openssl would pay), ours runs in-process. The
output ends with ``BENCH crypto <metric> ours=<n> ref=<n> ratio=<ours/ref>
unit=ms`` lines. Goal: ratio ≤ 1.5 at 1 MB and 10 MB.
"""

from __future__ import annotations

import argparse
import base64
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench.figures import Figure
from mssante.crypto import Recipient, TrustStore, sign_and_encrypt, unwrap
from mssante.crypto.testpki import TestPKI

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

SIZES: Final = {"10KB": 10 * 1024, "1MB": 1024 * 1024, "10MB": 10 * 1024 * 1024}
GOAL_RATIO: Final = 1.5
SENDER: Final = "alice.martin@hopital.mssante.test"
RECIPIENT: Final = "bob.durand@cabinet.mssante.test"


def _figure(metric: str, ours: float, ref: float, unit: str = "ms") -> Figure:
    return Figure("crypto", metric, ours, ref, unit)


def message(size: int) -> bytes:
    """A MIME entity of about ``size`` bytes with a base64 attachment."""
    raw = random.Random(size).randbytes(size * 3 // 4)
    return (
        b'Content-Type: application/octet-stream; name="IHE_XDM.ZIP"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\r\n\r\n'
        + base64.encodebytes(raw).replace(b"\n", b"\r\n")
    )


def median_ms(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def openssl(*args: str | Path) -> None:
    done = subprocess.run(
        ["openssl", "cms", *map(str, args)], capture_output=True, check=False
    )
    if done.returncode:
        raise RuntimeError(done.stderr.decode(errors="replace"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench crypto")
    parser.add_argument(
        "--sizes", default=",".join(SIZES), help="of " + ",".join(SIZES)
    )
    parser.add_argument("--repeat", type=int, default=0, help="runs per figure")
    args = parser.parse_args(argv)
    if shutil.which("openssl") is None:
        print("bench crypto: openssl not found")
        return 2
    now = datetime.now(UTC)
    pki = TestPKI(at=now)
    alice = pki.practitioner(SENDER)
    bob = pki.practitioner(RECIPIENT)
    trust = TrustStore(roots=(pki.root.cert,), crls=pki.crls())
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-crypto-") as tmp:
        d = Path(tmp)
        (d / "alice.pem").write_bytes(alice.cert_pem)
        (d / "chain.pem").write_bytes(alice.chain_pem)
        (d / "alice.key").write_bytes(alice.key_pem)
        (d / "bob.pem").write_bytes(bob.cert_pem)
        (d / "bob.key").write_bytes(bob.key_pem)
        (d / "ca.pem").write_bytes(pki.root_pem)
        # openssl cms has no -CRLfile: CRLs go into the CAfile
        (d / "ca_crls.pem").write_bytes(
            pki.root_pem
            + b"".join(
                x509.load_der_x509_crl(c).public_bytes(serialization.Encoding.PEM)
                for c in pki.crls()
            )
        )
        oaep = ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"]
        for name in args.sizes.split(","):
            size = SIZES[name]
            repeat = args.repeat or (15 if size < 100_000 else 5)
            entity = message(size)
            (d / "msg").write_bytes(entity)

            def ours_seal(
                entity: bytes = entity,
                recipients: tuple[Recipient, ...] = (
                    Recipient(bob.cert),
                    Recipient(alice.cert),
                ),
            ) -> bytes:
                return sign_and_encrypt(entity, alice, recipients, at=now)

            def ref_seal() -> None:
                openssl(
                    "-sign",
                    "-in",
                    d / "msg",
                    "-signer",
                    d / "alice.pem",
                    "-inkey",
                    d / "alice.key",
                    "-certfile",
                    d / "chain.pem",
                    "-out",
                    d / "signed",
                )
                openssl(
                    "-encrypt",
                    "-aes-256-gcm",
                    "-in",
                    d / "signed",
                    "-recip",
                    d / "bob.pem",
                    *oaep,
                    "-recip",
                    d / "alice.pem",
                    *oaep,
                    "-out",
                    d / "sealed",
                )

            sealed = ours_seal()
            (d / "ours.eml").write_bytes(sealed)

            def ours_open(sealed: bytes = sealed) -> None:
                result = unwrap(sealed, trust, at=now, recipient=bob, sender=SENDER)
                assert result.verification is not None  # noqa: S101
                assert result.verification.ok, result.verification.detail  # noqa: S101

            def ref_open() -> None:
                openssl(
                    "-decrypt",
                    "-in",
                    d / "sealed",
                    "-recip",
                    d / "bob.pem",
                    "-inkey",
                    d / "bob.key",
                    "-out",
                    d / "opened",
                )
                openssl(
                    "-verify",
                    "-in",
                    d / "opened",
                    "-CAfile",
                    d / "ca_crls.pem",
                    "-crl_check_all",
                    "-out",
                    d / "content",
                )

            figures.append(
                _figure(
                    f"sign_encrypt_{name}",
                    median_ms(ours_seal, repeat),
                    median_ms(ref_seal, repeat),
                )
            )
            figures.append(
                _figure(
                    f"decrypt_verify_{name}",
                    median_ms(ours_open, repeat),
                    median_ms(ref_open, repeat),
                )
            )
            # cross-check: openssl opens ours, the run is worthless otherwise
            openssl(
                "-decrypt",
                "-in",
                d / "ours.eml",
                "-recip",
                d / "bob.pem",
                "-inkey",
                d / "bob.key",
                "-out",
                d / "x",
            )
            openssl("-verify", "-in", d / "x", "-CAfile", d / "ca.pem", "-out", d / "y")
    print(f"{'metric':<22} {'ours ms':>10} {'openssl ms':>11} {'ratio':>7}")
    for f in figures:
        print(f"{f.metric:<22} {f.ours:>10.2f} {f.ref:>11.2f} {f.ratio:>7.2f}")
    print(f"goal: ratio <= {GOAL_RATIO} at 1MB and 10MB")
    for f in figures:
        print(f.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
