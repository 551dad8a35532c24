"""Errors of the IMAP core.

::

    ProtocolError                 root of every error the core raises
    ├── LocalProtocolError        our side broke the protocol: a bug in the
    │                             caller (a reply for a command that is not
    │                             pending, a transition the table does not have)
    └── RemoteProtocolError       the peer broke the protocol in a way the
                                  session cannot recover from (a non-synchronizing
                                  literal over the limit); the connection is in
                                  ``ERROR`` and must be closed

A malformed command is *not* an error of the core: it is reported as an
:class:`~mssante.proto.imap.InvalidCommandReceived` event, answered ``BAD``,
and the session goes on (RFC 3501 §7.1.5).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of the IMAP core's errors (will sit under ``MSSanteError``)."""


class LocalProtocolError(ProtocolError):
    """Our own side tried something the protocol does not allow (a bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the session cannot survive; close it."""
