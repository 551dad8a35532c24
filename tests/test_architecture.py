"""The shape of the code: dependency direction and pure modules.

``cli -> relay -> directory -> mssante``: a package imports only packages to
its right. Pure modules (protocol cores, crypto, message building, trust rules,
relay policy, identifier rules, the model) import no event loop, socket, TLS or
LDAP module. import-linter checks the layers too (in .ci/run-tests); this test
keeps the rule in the suite where it cannot be skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["cli", "relay", "directory", "mssante"]
PURE = [
    "mssante/proto",
    "mssante/crypto",
    "mssante/message",
    "directory/trust.py",
    "directory/model.py",
    "directory/identifiers.py",
    "directory/protocol.py",
    "directory/certs.py",
    "relay/policy.py",
]
IMPURE_MODULES = {"asyncio", "socket", "ssl", "ldap3", "sqlite3", "subprocess"}


def python_files(target: str) -> list[Path]:
    path = ROOT / target
    if path.is_file():
        return [path]
    return sorted(path.rglob("*.py")) if path.is_dir() else []


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_lower_layers(layer: str) -> None:
    higher = set(LAYERS[: LAYERS.index(layer)])
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files(layer)
        for module in imported_modules(path)
        if module.split(".")[0] in higher
    ]
    assert offenders == []


def test_pure_modules_do_no_io() -> None:
    checked = [path for target in PURE for path in python_files(target)]
    assert checked, "no pure module found"
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in checked
        for module in imported_modules(path)
        if module.split(".")[0] in IMPURE_MODULES
    ]
    assert offenders == []


def test_ldap3_is_imported_by_directory_ldap_only() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for layer in [*LAYERS, "bench", "tests"]
        for path in python_files(layer)
        if any(m.split(".")[0] == "ldap3" for m in imported_modules(path))
    }
    assert importers <= {"directory/ldap.py"}


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import asyncio\nfrom ldap3 import Server\nfrom relay import config\n"
    )
    assert imported_modules(bad) == {"asyncio", "ldap3", "relay"}
