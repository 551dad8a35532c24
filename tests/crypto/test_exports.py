"""The public namespace of mssante.crypto: sorted, complete, importable."""

from __future__ import annotations

import importlib

import pytest

import mssante.crypto

MODULES = [
    "mssante.crypto",
    "mssante.crypto.certs",
    "mssante.crypto.cms",
    "mssante.crypto.smime",
    "mssante.crypto.testpki",
    "mssante.crypto.openpgp",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)

    assert module.__all__ == sorted(module.__all__)
    assert all(hasattr(module, member) for member in module.__all__)


def test_every_error_sits_under_crypto_error() -> None:
    errors = [
        getattr(mssante.crypto, n)
        for n in mssante.crypto.__all__
        if n.endswith("Error")
    ]

    assert errors
    assert all(issubclass(e, mssante.crypto.CryptoError) for e in errors)
