"""CMS structures at the edges of the profile: what is refused, and how."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest
from asn1crypto import algos, cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mssante.crypto import (
    DecryptionError,
    MalformedError,
    Reason,
    Recipient,
    UnsupportedError,
)
from mssante.crypto.cms import (
    SignatureScheme,
    content_type_of,
    decrypt_envelope,
    encrypt_envelope,
    sign_data,
    verify_signed_data,
)
from tests.crypto.conftest import NOW, People

if TYPE_CHECKING:
    from collections.abc import Callable

CONTENT = b"Content-Type: text/plain\r\n\r\nhello\r\n"


def edited(blob: bytes, edit: Callable[[cms.ContentInfo], None]) -> bytes:
    info = cms.ContentInfo.load(blob)
    edit(info)
    dumped: bytes = info.dump(force=True)
    return dumped


def first_signer(info: cms.ContentInfo) -> cms.SignerInfo:
    return info["content"]["signer_infos"][0]


def test_data_content_type_is_not_handled() -> None:
    blob = cms.ContentInfo({"content_type": "data", "content": b"x"}).dump()

    with pytest.raises(MalformedError):
        content_type_of(blob)
    with pytest.raises(MalformedError):
        content_type_of(b"\x30\x03\x02\x01")


def test_envelope_given_to_verify_is_malformed(people: People) -> None:
    blob = encrypt_envelope(CONTENT, [people.bob.cert])

    assert verify_signed_data(blob, people.trust, at=NOW).reason is Reason.MALFORMED


def test_detached_signature_without_content_is_malformed(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)

    assert verify_signed_data(blob, people.trust, at=NOW).reason is Reason.MALFORMED


def test_content_both_embedded_and_detached_is_malformed(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW, detached=False)

    result = verify_signed_data(blob, people.trust, at=NOW, content=CONTENT)

    assert result.reason is Reason.MALFORMED


def test_two_signers_are_malformed(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)

    def add_signer(info: cms.ContentInfo) -> None:
        infos = info["content"]["signer_infos"]
        info["content"]["signer_infos"] = [infos[0], infos[0]]

    result = verify_signed_data(
        edited(blob, add_signer), people.trust, at=NOW, content=CONTENT
    )

    assert result.reason is Reason.MALFORMED


def test_sha1_digest_is_refused(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)

    def to_sha1(info: cms.ContentInfo) -> None:
        first_signer(info)["digest_algorithm"] = {"algorithm": "sha1"}

    result = verify_signed_data(
        edited(blob, to_sha1), people.trust, at=NOW, content=CONTENT
    )

    assert result.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("attribute", ["message_digest", "content_type"])
def test_missing_mandatory_signed_attribute_is_malformed(
    people: People, attribute: str
) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)

    def drop(info: cms.ContentInfo) -> None:
        signer = first_signer(info)
        signer["signed_attrs"] = [
            a for a in signer["signed_attrs"] if a["type"].native != attribute
        ]

    result = verify_signed_data(
        edited(blob, drop), people.trust, at=NOW, content=CONTENT
    )

    assert result.reason is Reason.MALFORMED


def test_content_type_attribute_must_match(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)

    def retype(info: cms.ContentInfo) -> None:
        info["content"]["encap_content_info"]["content_type"] = "signed_data"

    result = verify_signed_data(
        edited(blob, retype), people.trust, at=NOW, content=CONTENT
    )

    assert result.reason is Reason.BAD_SIGNATURE


def test_signature_algorithm_must_fit_the_key(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)

    def to_ecdsa(info: cms.ContentInfo) -> None:
        first_signer(info)["signature_algorithm"] = {"algorithm": "sha256_ecdsa"}

    result = verify_signed_data(
        edited(blob, to_ecdsa), people.trust, at=NOW, content=CONTENT
    )

    assert result.reason is Reason.BAD_SIGNATURE
    assert "does not fit" in result.detail


def test_pss_with_sha1_is_refused(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)

    def to_pss_sha1(info: cms.ContentInfo) -> None:
        first_signer(info)["signature_algorithm"] = algos.SignedDigestAlgorithm(
            {
                "algorithm": "rsassa_pss",
                "parameters": algos.RSASSAPSSParams(
                    {"hash_algorithm": {"algorithm": "sha1"}, "salt_length": 20}
                ),
            }
        )

    result = verify_signed_data(
        edited(blob, to_pss_sha1), people.trust, at=NOW, content=CONTENT
    )

    assert result.reason is Reason.BAD_SIGNATURE
    assert "PSS" in result.detail


def test_encrypting_needs_an_rsa_recipient(people: People) -> None:
    with pytest.raises(UnsupportedError):
        encrypt_envelope(CONTENT, [people.alice_ec.cert])
    with pytest.raises(UnsupportedError):
        encrypt_envelope(CONTENT, [])


def test_decrypting_needs_an_rsa_key(people: People) -> None:
    blob = encrypt_envelope(CONTENT, [people.alice.cert])

    with pytest.raises(UnsupportedError):
        decrypt_envelope(blob, people.alice_ec)


def test_signed_data_is_not_an_envelope(people: People) -> None:
    with pytest.raises(MalformedError):
        decrypt_envelope(sign_data(CONTENT, people.alice, at=NOW), people.alice)


def test_unknown_key_transport_is_unsupported(people: People) -> None:
    blob = encrypt_envelope(CONTENT, [people.bob.cert])

    def to_other(info: cms.ContentInfo) -> None:
        ktri = info["content"]["recipient_infos"][0].chosen
        ktri["key_encryption_algorithm"] = {"algorithm": "1.2.3.4"}

    with pytest.raises(UnsupportedError):
        decrypt_envelope(edited(blob, to_other), people.bob)


def test_oaep_with_md5_is_unsupported(people: People) -> None:
    blob = encrypt_envelope(CONTENT, [people.bob.cert])

    def to_md5(info: cms.ContentInfo) -> None:
        ktri = info["content"]["recipient_infos"][0].chosen
        ktri["key_encryption_algorithm"] = {
            "algorithm": "rsaes_oaep",
            "parameters": {"hash_algorithm": {"algorithm": "md5"}},
        }

    with pytest.raises(UnsupportedError):
        decrypt_envelope(edited(blob, to_md5), people.bob)


def test_gcm_envelope_with_unknown_cipher_or_short_tag_is_refused(
    people: People,
) -> None:
    blob = encrypt_envelope(CONTENT, [people.bob.cert])

    def to_ccm(info: cms.ContentInfo) -> None:
        eci = info["content"]["auth_encrypted_content_info"]
        eci["content_encryption_algorithm"]["algorithm"] = "aes256_ccm"

    def short_tag(info: cms.ContentInfo) -> None:
        info["content"]["mac"] = info["content"]["mac"].native[:8]

    def no_content(info: cms.ContentInfo) -> None:
        del info["content"]["auth_encrypted_content_info"]["encrypted_content"]

    with pytest.raises(UnsupportedError):
        decrypt_envelope(edited(blob, to_ccm), people.bob)
    with pytest.raises(DecryptionError):
        decrypt_envelope(edited(blob, short_tag), people.bob)
    with pytest.raises(MalformedError):
        decrypt_envelope(edited(blob, no_content), people.bob)


def test_cbc_envelope_with_unknown_cipher_is_unsupported(people: People) -> None:
    from mssante.crypto import RecipientProfile

    blob = encrypt_envelope(
        CONTENT, [Recipient(people.bob.cert, RecipientProfile.COMPAT)]
    )

    def to_des(info: cms.ContentInfo) -> None:
        eci = info["content"]["encrypted_content_info"]
        eci["content_encryption_algorithm"] = {
            "algorithm": "tripledes_3key",
            "parameters": b"\x00" * 8,
        }

    with pytest.raises(UnsupportedError):
        decrypt_envelope(edited(blob, to_des), people.bob)


def test_authenticated_attributes_are_checked_as_aad(people: People) -> None:
    """RFC 5083 §2.2: authAttrs are authenticated; changing them breaks the tag."""
    from mssante.crypto import cms as ours

    cek, nonce = secrets.token_bytes(32), secrets.token_bytes(12)
    attrs = cms.CMSAttributes([{"type": "content_type", "values": ["data"]}])
    sealed = AESGCM(cek).encrypt(nonce, CONTENT, attrs.dump())
    recipient_info = ours._key_transport(Recipient(people.bob.cert), cek)
    envelope = cms.AuthEnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [recipient_info],
            "auth_encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {
                    "algorithm": "aes256_gcm",
                    "parameters": ours._GcmParams(
                        {"aes_nonce": nonce, "aes_icvlen": 16}
                    ),
                },
                "encrypted_content": sealed[:-16],
            },
            "auth_attrs": attrs,
            "mac": sealed[-16:],
        }
    )
    blob = cms.ContentInfo(
        {"content_type": "authenticated_enveloped_data", "content": envelope}
    ).dump()

    def other_attrs(info: cms.ContentInfo) -> None:
        info["content"]["auth_attrs"] = [
            {"type": "content_type", "values": ["signed_data"]}
        ]

    assert decrypt_envelope(blob, people.bob) == CONTENT
    with pytest.raises(DecryptionError):
        decrypt_envelope(edited(blob, other_attrs), people.bob)


def test_impossible_pss_parameters_are_malformed(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW, scheme=SignatureScheme.PSS)

    def null_params(info: cms.ContentInfo) -> None:
        first_signer(info)["signature_algorithm"]["parameters"]["salt_length"] = -1

    result = verify_signed_data(
        edited(blob, null_params), people.trust, at=NOW, content=CONTENT
    )

    assert result.reason is Reason.MALFORMED


def test_embedded_certificate_that_does_not_parse_is_malformed(people: People) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)

    def bad_version(info: cms.ContentInfo) -> None:
        cert = info["content"]["certificates"][1].chosen
        cert["tbs_certificate"]["version"] = 7

    result = verify_signed_data(
        edited(blob, bad_version), people.trust, at=NOW, content=CONTENT
    )

    assert result.reason is Reason.MALFORMED


def test_oaep_parameters_without_mgf_hash_are_malformed(people: People) -> None:
    blob = encrypt_envelope(CONTENT, [people.bob.cert])

    def null_params(info: cms.ContentInfo) -> None:
        ktri = info["content"]["recipient_infos"][0].chosen
        ktri["key_encryption_algorithm"] = {
            "algorithm": "rsaes_oaep",
            "parameters": {"mask_gen_algorithm": {"algorithm": "1.2.3.4"}},
        }

    with pytest.raises(MalformedError):
        decrypt_envelope(edited(blob, null_params), people.bob)


def test_signer_found_by_key_identifier_skips_certificates_without_one(
    people: People,
) -> None:
    blob = sign_data(CONTENT, people.alice, at=NOW)
    ski = people.alice.cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value.digest

    def by_ski(info: cms.ContentInfo) -> None:
        signed = info["content"]
        signed["certificates"] = []
        signed["version"] = "v3"
        signer = signed["signer_infos"][0]
        signer["version"] = "v3"
        signer["sid"] = cms.SignerIdentifier({"subject_key_identifier": ski})

    no_ski = (
        x509.CertificateBuilder()
        .subject_name(people.bob.cert.subject)
        .issuer_name(people.bob.cert.issuer)
        .public_key(people.bob.key.public_key())
        .serial_number(2)
        .not_valid_before(NOW)
        .not_valid_after(NOW)
        .sign(people.pki.persons.key, hashes.SHA256())
    )

    result = verify_signed_data(
        edited(blob, by_ski),
        people.trust,
        at=NOW,
        content=CONTENT,
        certificates=[no_ski, people.bob.cert, people.alice.cert],
    )

    assert result.reason is Reason.VALID, result.detail


def test_non_key_transport_recipient_infos_are_skipped(people: People) -> None:
    blob = encrypt_envelope(CONTENT, [people.bob.cert])
    ours = cms.ContentInfo.load(blob)["content"]["recipient_infos"][0].dump()
    kek = cms.RecipientInfo(
        {
            "kekri": {
                "version": "v4",
                "kekid": {"key_identifier": b"\x01"},
                "key_encryption_algorithm": {"algorithm": "aes256_wrap"},
                "encrypted_key": b"\x00" * 40,
            }
        }
    ).dump()

    def add_kekri(info: cms.ContentInfo) -> None:
        info["content"]["recipient_infos"] = [
            cms.RecipientInfo.load(ours),
            cms.RecipientInfo.load(kek),
        ]

    # DER sorts the SET OF (ktri first); swap the two encodings to put the
    # KEKRecipientInfo first, as a BER encoder may.
    with_kek = edited(blob, add_kekri)
    assert ours + kek in with_kek
    swapped = with_kek.replace(ours + kek, kek + ours)

    assert decrypt_envelope(swapped, people.bob) == CONTENT


@pytest.mark.parametrize("profile", ["modern", "compat"])
def test_corrupt_encrypted_key_does_not_decrypt(people: People, profile: str) -> None:
    from mssante.crypto import RecipientProfile

    recipient = Recipient(people.bob.cert, RecipientProfile(profile))
    blob = encrypt_envelope(CONTENT, [recipient])

    def corrupt(info: cms.ContentInfo) -> None:
        ktri = info["content"]["recipient_infos"][0].chosen
        ktri["encrypted_key"] = b"\x01" * 256

    with pytest.raises(DecryptionError):
        decrypt_envelope(edited(blob, corrupt), people.bob)
