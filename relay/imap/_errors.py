"""The three kinds of IMAP command error, resolved in one place.

::

    ImapError
     ├── CommandRefusedError   NO [CODE] text: the command is understood and
     │                         refused (no such folder, no access, too big);
     │                         logged at INFO
     └── ServerFaultError      NO [UNAVAILABLE]: our side failed (disk, a
                               corrupt message, the directory); logged at
                               ERROR, the session goes on

Syntax errors are the core's :class:`mssante.proto.imap.CommandSyntaxError`
(``BAD``). All three are raised anywhere in a command and caught only by
``commands.run_command``, which writes the reply (mox's
``imapserver/error.go`` and ``conn.command()``).
"""

from __future__ import annotations


class ImapError(Exception):
    """Root of the IMAP server's command errors."""


class CommandRefusedError(ImapError):
    def __init__(self, code: str | None, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"[{code}] {text}" if code else text)


class ServerFaultError(ImapError):
    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)
