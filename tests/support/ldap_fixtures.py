"""LDAP fixtures (placeholder until directory.ldap lands)."""

from __future__ import annotations

import pytest


@pytest.fixture
def ldap_directory() -> None:
    pytest.skip("LDAP backend not yet built")
