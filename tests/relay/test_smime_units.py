"""The pure helpers of ``relay.smime``: what counts as signed, the trace field."""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING

import pytest

from mssante.crypto import Reason, Verification
from relay.config import ConfigError, SmimePeer, SmimeSettings
from relay.smime import (
    SIGNATURE_HEADER,
    TrustSource,
    may_be_smime_signed,
    signature_header,
    strip_field,
)

if TYPE_CHECKING:
    from pathlib import Path

    from mssante.crypto.testpki import TestPKI

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _headers(text: str) -> email.message.Message:
    return BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        text.encode() + b"\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("content_type", "signed"),
    [
        (
            'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256',
            True,
        ),
        ('multipart/signed; protocol="application/x-pkcs7-signature"', True),
        ('multipart/signed; protocol="application/pgp-signature"', False),
        ("application/pkcs7-mime; smime-type=signed-data", True),
        ("application/pkcs7-mime", True),  # RFC 8551 §3.2.2: smime-type optional
        ("application/pkcs7-mime; smime-type=enveloped-data", False),
        ("application/pkcs7-mime; smime-type=authEnveloped-data", False),
        ("text/plain; charset=utf-8", False),
        ("multipart/mixed; boundary=x", False),
    ],
)
def test_only_smime_signatures_are_checked(content_type: str, signed: bool) -> None:
    assert may_be_smime_signed(_headers(f"Content-Type: {content_type}")) is signed


def test_trace_field_is_removed_with_its_folded_lines() -> None:
    head = (
        b"From: a@x.example\r\n"
        b"x-mssante-signature: verified;\r\n"
        b"\tsigner=a@x.example\r\n"
        b"Subject: s\r\n"
        b"X-MSSante-Signature: failed\r\n"
        b"\r\n"
    )
    assert strip_field(head, SIGNATURE_HEADER) == (
        b"From: a@x.example\r\nSubject: s\r\n\r\n"
    )


def test_header_without_the_trace_field_is_returned_as_is() -> None:
    head = b"From: a@x.example\r\nX-MSSante-Signatures: other\r\n\r\n"
    assert strip_field(head, SIGNATURE_HEADER) is head


def test_trace_field_values() -> None:
    ok = Verification(Reason.VALID, signing_time=AT)
    bad = Verification(Reason.BAD_SIGNATURE)
    assert signature_header(ok, "a@x.example", at=AT, by="mx") == (
        "X-MSSante-Signature: verified; signer=a@x.example;"
        " signed=2026-11-23T10:00:00+00:00; at=2026-11-23T10:00:00+00:00; by=mx"
    )
    assert signature_header(bad, "", at=AT, by="mx") == (
        "X-MSSante-Signature: failed; reason=bad-signature;"
        " at=2026-11-23T10:00:00+00:00; by=mx"
    )


def _settings(anchors: Path) -> SmimeSettings:
    return SmimeSettings(
        trust_anchors_file=anchors, defaults=SmimePeer(seal_unsigned=False)
    )


def test_anchors_without_a_root_are_refused(pki: TestPKI, tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_bytes(pki.intermediates_pem)
    with pytest.raises(
        ConfigError, match=r"smime\.trust_anchors_file: .* no self-signed"
    ):
        TrustSource(_settings(tmp_path / "a.pem"))


def test_anchors_that_are_not_pem_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match=r"smime\.trust_anchors_file: "):
        TrustSource(_settings(tmp_path / "a.pem"))


def test_pem_crl_files_are_accepted_and_bad_ones_named(
    pki: TestPKI, tmp_path: Path
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "a.pem").write_bytes(pki.root_pem + pki.intermediates_pem)
    pem = x509.load_der_x509_crl(pki.crls()[0]).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "one.crl").write_bytes(pem)
    settings = SmimeSettings(
        trust_anchors_file=tmp_path / "a.pem",
        crl_files=(tmp_path / "one.crl",),
        defaults=SmimePeer(seal_unsigned=False),
    )
    assert len(TrustSource(settings).current().crls) == 1
    (tmp_path / "one.crl").write_bytes(b"-----BEGIN X509 CRL-----\nxx\n")
    with pytest.raises(ConfigError, match=r"smime\.crl_files: "):
        TrustSource(settings)
