"""The relay's IMAP server (RFC 3501 and the extensions in docs/rfc-status.md).

``server.py`` is the thin asyncio loop over the sans-IO core
:mod:`mssante.proto.imap`; ``commands.py`` holds one function per command and
the dispatch table; the mailbox store (:mod:`relay.store`) holds the mail.
"""

from relay.imap.server import DEFAULT_IMAP_TIMEOUT, ImapContext, ImapServer

__all__ = ["DEFAULT_IMAP_TIMEOUT", "ImapContext", "ImapServer"]
