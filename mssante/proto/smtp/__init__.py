"""Sans-IO SMTP client side: reply parsing, commands, EHLO capabilities, DATA framing.

Bytes in, values out; no sockets, no event loop. The client library's
transport (:mod:`mssante._client`) feeds what it reads into a
:class:`ReplyReader` and writes what the command builders return.
"""

from __future__ import annotations

from mssante.proto.smtp._commands import (
    Capabilities,
    auth_oauthbearer,
    auth_plain,
    data_payload,
    ehlo,
    mail_from,
    rcpt_to,
    xtext,
)
from mssante.proto.smtp._replies import (
    DEFAULT_MAX_REPLY_LINE,
    DEFAULT_MAX_REPLY_LINES,
    RemoteProtocolError,
    Reply,
    ReplyReader,
)

__all__ = [
    "DEFAULT_MAX_REPLY_LINE",
    "DEFAULT_MAX_REPLY_LINES",
    "Capabilities",
    "RemoteProtocolError",
    "Reply",
    "ReplyReader",
    "auth_oauthbearer",
    "auth_plain",
    "data_payload",
    "ehlo",
    "mail_from",
    "rcpt_to",
    "xtext",
]
