"""End-to-end cryptography: S/MIME (CMS), certificate validation, OpenPGP.

Owns message-level protection (DESIGN §6): signing, verification, encryption
and decryption of messages as bytes, and the IGC-Santé-like test PKI. The
pure modules (``cms``, ``certs``, ``smime``, ``testpki``) do no I/O and read
no clock: time comes in as ``at``. ``openpgp`` is the one module that runs a
program (``gpg``, through python-gnupg) in a keyring directory the caller
owns; it is not imported here, so importing ``mssante.crypto`` stays pure.

Layout: ``_errors`` (exception tree), ``certs`` (loading, trust store, RFC
5280 path validation), ``cms`` (RFC 5652 / 5083 structures), ``smime`` (RFC
8551 MIME framing), ``testpki`` (test certificates), ``openpgp`` (RFC 3156).
"""

from __future__ import annotations

from mssante.crypto._errors import (
    CryptoError,
    DecryptionError,
    MalformedError,
    OpenPGPError,
    UnsupportedError,
)
from mssante.crypto.certs import (
    Credential,
    Reason,
    SignerCredential,
    TrustStore,
    certificate_addresses,
    load_certificate,
    load_certificates,
    load_private_key,
    validate_smime_certificate,
)
from mssante.crypto.cms import (
    Recipient,
    RecipientProfile,
    SignatureScheme,
    Verification,
)
from mssante.crypto.smime import (
    Kind,
    Unwrapped,
    decrypt,
    encrypt,
    kind_of,
    sign,
    sign_and_encrypt,
    unwrap,
    verify,
)

__all__ = [
    "Credential",
    "CryptoError",
    "DecryptionError",
    "Kind",
    "MalformedError",
    "OpenPGPError",
    "Reason",
    "Recipient",
    "RecipientProfile",
    "SignatureScheme",
    "SignerCredential",
    "TrustStore",
    "UnsupportedError",
    "Unwrapped",
    "Verification",
    "certificate_addresses",
    "decrypt",
    "encrypt",
    "kind_of",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "sign",
    "sign_and_encrypt",
    "unwrap",
    "validate_smime_certificate",
    "verify",
]
