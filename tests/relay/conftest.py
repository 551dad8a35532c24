"""The relay fixtures (``relay``, ``relay_ldap``, ``tls_files``, ``pki``) live in
``tests/support/relay_fixtures.py``, registered for the whole suite by
``tests/conftest.py`` so that CLI tests can start a relay too."""
