"""S/MIME round trips and every verification failure, through the public API."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mssante.crypto import (
    DecryptionError,
    Kind,
    MalformedError,
    Reason,
    Recipient,
    RecipientProfile,
    SignatureScheme,
    TrustStore,
    decrypt,
    encrypt,
    kind_of,
    sign,
    sign_and_encrypt,
    unwrap,
    verify,
)
from mssante.crypto.smime import canonicalize, join_message, split_message
from tests.crypto.conftest import ALICE, BOB, MESSAGE, NOW, People


def body_of(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("detached", [True, False])
@pytest.mark.parametrize(
    ("who", "scheme"),
    [
        ("alice", SignatureScheme.PKCS1V15),
        ("alice", SignatureScheme.PSS),
        ("alice_ec", SignatureScheme.PKCS1V15),
    ],
)
def test_signed_message_verifies_with_signer_and_time(
    people: People, who: str, scheme: SignatureScheme, detached: bool
) -> None:
    signer = getattr(people, who)
    signed = sign(MESSAGE, signer, at=NOW, scheme=scheme, detached=detached)

    result = verify(signed, people.trust, at=NOW, sender=ALICE)

    assert result.reason is Reason.VALID, result.detail
    assert result.ok
    assert result.signer == signer.cert
    assert result.signing_time == NOW
    assert body_of(result.content) == body_of(MESSAGE)
    assert kind_of(signed) is (Kind.SIGNED if detached else Kind.SIGNED_OPAQUE)


def test_outer_headers_stay_outside_the_signature(people: People) -> None:
    signed = sign(MESSAGE, people.alice, at=NOW)

    head, _ = split_message(signed)

    assert b"Subject: Compte rendu\r\n" in head
    assert signed.count(b"Subject:") == 1
    assert b"Content-Type: multipart/signed" in signed


def test_lf_only_message_is_canonicalised_before_signing(people: People) -> None:
    signed = sign(MESSAGE.replace(b"\r\n", b"\n"), people.alice, at=NOW)

    assert verify(signed.replace(b"\r\n", b"\n"), people.trust, at=NOW).ok


def test_tampered_content_is_a_bad_signature(people: People) -> None:
    signed = sign(MESSAGE, people.alice, at=NOW)

    tampered = signed.replace(b"le compte rendu", b"la facture")

    result = verify(tampered, people.trust, at=NOW)
    assert result.reason is Reason.BAD_SIGNATURE
    assert result.signer == people.alice.cert


def test_tampered_opaque_content_is_a_bad_signature(people: People) -> None:
    from mssante.crypto.cms import sign_data, verify_signed_data

    blob = sign_data(b"original", people.alice, at=NOW, detached=False)
    tampered = blob.replace(b"original", b"0riginal")

    result = verify_signed_data(tampered, people.trust, at=NOW)

    assert result.reason is Reason.BAD_SIGNATURE


def test_truncated_signature_is_malformed(people: People) -> None:
    signed = sign(MESSAGE, people.alice, at=NOW, detached=False)
    head, b64 = signed.split(b"\r\n\r\n", 1)
    der = base64.b64decode(b64)
    truncated = head + b"\r\n\r\n" + base64.encodebytes(der[: len(der) // 2])

    assert verify(truncated, people.trust, at=NOW).reason is Reason.MALFORMED


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("expired", Reason.EXPIRED),
        ("revoked", Reason.REVOKED),
        ("wrong_usage", Reason.WRONG_USAGE),
        ("untrusted", Reason.UNTRUSTED),
    ],
)
def test_signer_certificate_problems_have_their_reason(
    people: People, who: str, reason: Reason
) -> None:
    signer = getattr(people, who)
    signed = sign(
        MESSAGE, signer, at=NOW - timedelta(days=60) if who == "expired" else NOW
    )

    result = verify(signed, people.trust, at=NOW, sender=ALICE)

    assert result.reason is reason, result.detail


def test_signature_made_while_valid_but_checked_after_expiry_is_expired(
    people: People,
) -> None:
    later = NOW + timedelta(days=400)
    signed = sign(MESSAGE, people.alice, at=NOW)
    trust = TrustStore(roots=people.trust.roots, crls=people.pki.crls(at=later))

    result = verify(signed, trust, at=later)

    assert result.reason is Reason.EXPIRED


def test_signing_time_outside_certificate_validity_is_expired(people: People) -> None:
    signed = sign(MESSAGE, people.alice, at=NOW - timedelta(days=30))

    assert verify(signed, people.trust, at=NOW).reason is Reason.EXPIRED


def test_sender_not_named_in_certificate_is_address_mismatch(people: People) -> None:
    signed = sign(MESSAGE, people.bob, at=NOW)

    assert verify(signed, people.trust, at=NOW, sender=ALICE).reason is (
        Reason.ADDRESS_MISMATCH
    )
    assert verify(signed, people.trust, at=NOW, sender=BOB.upper()).ok


def test_missing_crl_is_revocation_unknown_unless_soft_fail(people: People) -> None:
    signed = sign(MESSAGE, people.alice, at=NOW)
    no_crl = TrustStore(roots=people.trust.roots)
    soft = TrustStore(roots=people.trust.roots, revocation_mode="soft-fail")

    assert verify(signed, no_crl, at=NOW).reason is Reason.REVOCATION_UNKNOWN
    assert verify(signed, soft, at=NOW).ok


def test_swapped_signer_certificate_is_a_bad_signature(people: People) -> None:
    from asn1crypto import cms
    from asn1crypto import x509 as asn1_x509

    signed = sign(MESSAGE, people.alice, at=NOW, detached=False)
    head, b64 = signed.split(b"\r\n\r\n", 1)
    info = cms.ContentInfo.load(base64.b64decode(b64))
    bob = asn1_x509.Certificate.load(people.bob.cert_der)
    info["content"]["certificates"][0] = cms.CertificateChoices({"certificate": bob})
    sid = info["content"]["signer_infos"][0]["sid"]
    sid.chosen["serial_number"] = bob.serial_number
    swapped = head + b"\r\n\r\n" + base64.encodebytes(info.dump(force=True))

    assert verify(swapped, people.trust, at=NOW).reason is Reason.BAD_SIGNATURE


def test_signer_certificate_left_out_is_found_among_given_certificates(
    people: People,
) -> None:
    from asn1crypto import cms

    signed = sign(MESSAGE, people.alice, at=NOW, detached=False)
    head, b64 = signed.split(b"\r\n\r\n", 1)
    info = cms.ContentInfo.load(base64.b64decode(b64))
    info["content"]["certificates"] = []
    stripped = head + b"\r\n\r\n" + base64.encodebytes(info.dump(force=True))

    assert verify(stripped, people.trust, at=NOW).reason is Reason.UNTRUSTED
    assert verify(stripped, people.trust, at=NOW, certificates=[people.alice.cert]).ok


@pytest.mark.parametrize(
    ("profiles", "kind"),
    [
        ((RecipientProfile.MODERN, RecipientProfile.MODERN), Kind.AUTH_ENVELOPED),
        ((RecipientProfile.MODERN, RecipientProfile.COMPAT), Kind.ENVELOPED),
    ],
)
def test_every_recipient_and_the_sender_can_decrypt(
    people: People, profiles: tuple[RecipientProfile, RecipientProfile], kind: Kind
) -> None:
    recipients = [
        Recipient(people.bob.cert, profiles[1]),
        Recipient(people.alice.cert, profiles[0]),
    ]
    sealed = encrypt(MESSAGE, recipients)

    assert kind_of(sealed) is kind
    assert b"Bonjour" not in sealed
    for who in (people.alice, people.bob):
        opened = decrypt(sealed, who)
        assert body_of(opened) == body_of(MESSAGE)
        assert b"Subject: Compte rendu" in opened
    with pytest.raises(DecryptionError):
        decrypt(sealed, people.carol)


def test_sign_then_encrypt_unwraps_to_verified_content(people: People) -> None:
    sealed = sign_and_encrypt(
        MESSAGE, people.alice, [people.bob.cert, people.alice.cert], at=NOW
    )

    result = unwrap(sealed, people.trust, at=NOW, recipient=people.bob, sender=ALICE)

    assert result.encrypted
    assert result.verification is not None
    assert result.verification.ok, result.verification.detail
    assert body_of(result.message) == body_of(MESSAGE)
    assert b"Subject: Compte rendu" in result.message


def test_unwrap_of_plain_message_returns_it_unsigned(people: People) -> None:
    result = unwrap(MESSAGE, people.trust, at=NOW)

    assert result == type(result)(canonicalize(MESSAGE), False, None)


def test_unwrap_stops_at_a_failed_signature(people: People) -> None:
    signed = sign(MESSAGE, people.untrusted, at=NOW)
    sealed = encrypt(signed, [people.bob.cert])

    result = unwrap(sealed, people.trust, at=NOW, recipient=people.bob)

    assert result.verification is not None
    assert result.verification.reason is Reason.UNTRUSTED


def test_unwrap_of_envelope_without_key_raises(people: People) -> None:
    sealed = encrypt(MESSAGE, [people.bob.cert])

    with pytest.raises(DecryptionError):
        unwrap(sealed, people.trust, at=NOW)


def test_tampered_gcm_ciphertext_does_not_decrypt(people: People) -> None:
    from mssante.crypto.cms import decrypt_envelope, encrypt_envelope

    blob = bytearray(encrypt_envelope(b"x" * 100, [people.bob.cert]))
    blob[-40] ^= 1

    with pytest.raises(DecryptionError):
        decrypt_envelope(bytes(blob), people.bob)


def test_tampered_cbc_padding_does_not_decrypt(people: People) -> None:
    from mssante.crypto.cms import decrypt_envelope, encrypt_envelope

    compat = Recipient(people.bob.cert, RecipientProfile.COMPAT)
    blob = bytearray(encrypt_envelope(b"x" * 100, [compat]))
    blob[-1] ^= 1

    with pytest.raises(DecryptionError):
        decrypt_envelope(bytes(blob), people.bob)


def test_decrypt_of_a_signed_message_is_malformed(people: People) -> None:
    with pytest.raises(MalformedError):
        decrypt(sign(MESSAGE, people.alice, at=NOW), people.alice)


def test_verify_of_unsigned_message_is_malformed(people: People) -> None:
    assert verify(MESSAGE, people.trust, at=NOW).reason is Reason.MALFORMED


def test_split_and_join_are_inverse_on_canonical_messages() -> None:
    outer, entity = split_message(MESSAGE)

    assert join_message(outer, entity).replace(b"MIME-Version: 1.0\r\n", b"") == (
        MESSAGE.replace(b"MIME-Version: 1.0\r\n", b"")
    )
    assert entity.startswith(b"Content-Type: text/plain")
    assert join_message(b"", entity) == entity


def test_folded_header_stays_with_its_field() -> None:
    outer, entity = split_message(
        b"Subject: a\r\n b\r\nContent-Type: text/plain;\r\n\tcharset=utf-8\r\n\r\nx"
    )

    assert outer == b"Subject: a\r\n b\r\n"
    assert entity == b"Content-Type: text/plain;\r\n\tcharset=utf-8\r\n\r\nx"


def test_rsa_key_is_2048_bits(people: People) -> None:
    key = people.alice.key
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048


def test_junk_after_a_boundary_is_malformed(people: People) -> None:
    signed = sign(MESSAGE, people.alice, at=NOW)
    boundary = signed.split(b'boundary="', 1)[1].split(b'"', 1)[0]

    broken = signed.replace(
        b"--" + boundary + b"\r\n", b"--" + boundary + b"junk\r\n", 1
    )

    assert verify(broken, people.trust, at=NOW).reason is Reason.MALFORMED


def test_second_part_must_be_the_signature(people: People) -> None:
    signed = sign(MESSAGE, people.alice, at=NOW)

    broken = signed.replace(b"application/pkcs7-signature;", b"text/plain;")

    assert verify(broken, people.trust, at=NOW).reason is Reason.MALFORMED


def test_too_many_layers_are_refused(people: People) -> None:
    from mssante.crypto.smime import MAX_LAYERS

    message = MESSAGE
    for _ in range(MAX_LAYERS + 1):
        message = sign(message, people.alice, at=NOW)

    with pytest.raises(MalformedError):
        unwrap(message, people.trust, at=NOW)


def test_a_base64_body_that_does_not_decode_is_malformed(people: People) -> None:
    sealed = encrypt(MESSAGE, [people.bob.cert])
    head, _, _ = sealed.partition(b"\r\n\r\n")

    with pytest.raises(MalformedError, match="bad base64"):
        decrypt(head + b"\r\n\r\nA\r\n", people.bob)  # one character: never base64


def test_a_7bit_body_is_taken_as_it_is_and_must_be_der(people: People) -> None:
    sealed = encrypt(MESSAGE, [people.bob.cert])
    head, _, _ = sealed.partition(b"\r\n\r\n")
    plain = head.replace(
        b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: 7bit"
    )
    assert plain != head

    with pytest.raises(MalformedError, match="not a CMS ContentInfo"):
        decrypt(plain + b"\r\n\r\nnot DER at all\r\n", people.bob)


def test_unknown_transfer_encoding_is_malformed(people: People) -> None:
    sealed = encrypt(MESSAGE, [people.bob.cert])

    broken = sealed.replace(b"Transfer-Encoding: base64", b"Transfer-Encoding: x-uue")

    with pytest.raises(MalformedError):
        decrypt(broken, people.bob)
