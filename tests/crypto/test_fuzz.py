"""Hypothesis over the parsing entry points: they parse or raise CryptoError.

Inputs are random bytes, and valid messages and CMS blobs with bytes flipped,
cut or inserted (the mutations that reach deep into the parsers). Verification
must never raise at all: it returns a Verification.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssante.crypto import CryptoError, Reason, kind_of, unwrap, verify
from mssante.crypto.cms import (
    content_type_of,
    decrypt_envelope,
    encrypt_envelope,
    sign_data,
    verify_signed_data,
)
from mssante.crypto.smime import decrypt, encrypt, sign, split_message
from tests.crypto.conftest import MESSAGE, NOW, People

if TYPE_CHECKING:
    from collections.abc import Callable

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


def parses_or_raises_crypto_error(call: Callable[[], object]) -> None:
    with contextlib.suppress(CryptoError):
        call()


@pytest.fixture(scope="module")
def seeds(people: People) -> dict[str, bytes]:
    return {
        "signed_der": sign_data(b"hello", people.alice, at=NOW, detached=False),
        "gcm_der": encrypt_envelope(b"hello", [people.bob.cert]),
        "signed_mime": sign(MESSAGE, people.alice, at=NOW),
        "sealed_mime": encrypt(MESSAGE, [people.bob.cert]),
    }


@FUZZ
@given(data=st.data())
def test_cms_parsers_parse_or_raise_crypto_error(
    people: People, seeds: dict[str, bytes], data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(["signed_der", "gcm_der"]))
    blob = data.draw(st.one_of(st.binary(max_size=64), mutated(seeds[seed])))

    parses_or_raises_crypto_error(lambda: content_type_of(blob))
    parses_or_raises_crypto_error(lambda: decrypt_envelope(blob, people.bob))
    assert isinstance(verify_signed_data(blob, people.trust, at=NOW).reason, Reason)


@FUZZ
@given(data=st.data())
def test_mime_parsers_parse_or_raise_crypto_error(
    people: People, seeds: dict[str, bytes], data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(["signed_mime", "sealed_mime"]))
    message = data.draw(st.one_of(st.binary(max_size=64), mutated(seeds[seed])))

    parses_or_raises_crypto_error(lambda: split_message(message))
    parses_or_raises_crypto_error(lambda: kind_of(message))
    parses_or_raises_crypto_error(lambda: decrypt(message, people.bob))
    parses_or_raises_crypto_error(
        lambda: unwrap(message, people.trust, at=NOW, recipient=people.bob)
    )
    assert isinstance(verify(message, people.trust, at=NOW).reason, Reason)
