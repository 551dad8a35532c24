"""The public namespace of the library: sorted, importable, one error root."""

from __future__ import annotations

import mssante
import mssante.crypto
import mssante.message


def test_all_is_importable_and_complete() -> None:
    # ruff's RUF022 keeps __all__ sorted; here: every name exists, and every
    # public class or function of the package namespace is listed.
    for module in (mssante, mssante.message):
        names = module.__all__
        assert len(names) == len(set(names))
        for name in names:
            assert getattr(module, name) is not None, name
        public = {
            n
            for n, v in vars(module).items()
            if not n.startswith("_")
            and (isinstance(v, type) or callable(v))
            and getattr(v, "__module__", "").startswith("mssante")
        }
        assert public <= set(names), public - set(names)


def test_every_library_error_derives_from_the_root() -> None:
    for module in (mssante, mssante.message, mssante.crypto):
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, Exception):
                assert issubclass(value, mssante.MSSanteError), name
