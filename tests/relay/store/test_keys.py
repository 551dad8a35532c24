"""The master key file: permissions, format, no disclosure."""

from __future__ import annotations

import base64
import copy
from typing import TYPE_CHECKING

import pytest

from relay.store import MailStore, MasterKey, MasterKeyError

if TYPE_CHECKING:
    from pathlib import Path


def test_generated_key_file_is_private_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = MasterKey.generate(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert MasterKey.load(path).key_id == key.key_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_group_or_others_is_refused(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "master.key"
    MasterKey.generate(path)
    path.chmod(mode)
    with pytest.raises(MasterKeyError, match=r"\(chmod 600\)") as info:
        MasterKey.load(path)
    assert str(path) in str(info.value)


def test_generate_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    MasterKey.generate(path)
    before = path.read_bytes()
    with pytest.raises(MasterKeyError, match="overwrite"):
        MasterKey.generate(path)
    assert path.read_bytes() == before


def test_missing_key_file_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match=r"absent\.key"):
        MasterKey.load(tmp_path / "absent.key")


@pytest.mark.parametrize(
    "content", ["not base64 at all!\n", base64.b64encode(b"short").decode() + "\n", ""]
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "master.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(MasterKeyError):
        MasterKey.load(path)


def test_repr_never_shows_the_key_and_it_is_never_copied(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = MasterKey.generate(path)
    encoded = path.read_text().strip()
    raw = base64.b64decode(encoded)
    assert encoded not in repr(key)
    assert raw.hex() not in repr(key)
    assert repr(key).startswith("MasterKey(id=")
    with pytest.raises(TypeError):
        copy.deepcopy(key)


def test_store_refuses_a_different_master_key(tmp_path: Path) -> None:
    first = MasterKey.generate(tmp_path / "a.key")
    MailStore.open(tmp_path / "store", first).close()
    other = MasterKey.generate(tmp_path / "b.key")
    with pytest.raises(MasterKeyError, match="not the one this store was created with"):
        MailStore.open(tmp_path / "store", other)
    MailStore.open(tmp_path / "store", first).close()
