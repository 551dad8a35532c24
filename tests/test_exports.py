"""The public namespace of the library: sorted, importable, one error root."""

from __future__ import annotations

import mssante
import mssante.crypto
import mssante.message


def test_all_is_sorted_and_importable() -> None:
    for module in (mssante, mssante.message):
        names = module.__all__
        constants = [n for n in names if n.isupper()]
        others = [n for n in names if not n.isupper()]
        assert others == sorted(others, key=lambda n: (n[0].islower(), n))
        assert constants == sorted(constants)
        for name in names:
            assert getattr(module, name) is not None, name


def test_every_library_error_derives_from_the_root() -> None:
    for module in (mssante, mssante.message, mssante.crypto):
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, Exception):
                assert issubclass(value, mssante.MSSanteError), name
