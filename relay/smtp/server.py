"""aiosmtpd's SMTP server, configured for the three relay listeners.

Owns: what aiosmtpd does not do the way a mail relay must.

- **DSN parameters** (RFC 3461 §4): aiosmtpd refuses unknown ``MAIL``/``RCPT``
  parameters and upper-cases the ones it keeps. ``ENVID``/``RET`` and
  ``NOTIFY``/``ORCPT`` are taken out of the command here, validated, decoded
  from xtext with their case kept, and left on the server for the handler.
- **Enhanced status codes** (RFC 2034, RFC 3463) on aiosmtpd's own replies,
  which mostly lack them (``503 Error: need MAIL command``).
- **Connection identity**: one ``cid`` per connection that survives STARTTLS
  (aiosmtpd makes a new ``Session`` after the handshake).
- **Grouped replies** (RFC 2920 §3.1): the ``250`` of a ``MAIL`` or ``RCPT``
  whose next command is already buffered waits and leaves with the next
  reply (the ``354`` of a pipelined ``DATA``): one TLS record and one send
  per group. Every other reply (``STARTTLS``'s ``220`` included) is sent at
  once with whatever waits.
- **DATA in blocks** (:meth:`RelaySMTP.smtp_DATA`): aiosmtpd reads the data
  one line per ``readuntil``, which made it the largest single cost of the
  relay (a 100 KB message is 1,300 awaits). We read up to each ``.<CRLF>``
  and keep it as the end of data only when a ``<CRLF>`` precedes it
  (RFC 5321 §4.1.1.4; the CRLF of the DATA command line counts for an empty
  message), join the parts once and undo dot-stuffing once (§4.5.2,
  :func:`unstuff`, which finds the lines to change from the dots). Nothing
  past the end of data is consumed, so pipelined commands stay in the
  stream. The same rules as aiosmtpd's otherwise: only <CRLF>.<CRLF> ends
  the data (a bare LF never does: see tests/relay/test_smtp_smuggling.py),
  and an oversized message is read to its end (also when the part that goes
  over the limit holds the end), discarded, and refused with ``552 5.3.4``.
  Unlike aiosmtpd, lines longer than 1,000 octets are accepted, as Postfix
  does.
- **STARTTLS through the loop** (:meth:`RelaySMTP.smtp_STARTTLS`): aiosmtpd
  builds asyncio's pure-Python TLS layer by hand; the relay asks the running
  loop (``loop.start_tls``), so on uvloop the TLS layer is uvloop's, in C
  (relay CPU -7 %, 100 KB messages +5 % in ``bench smtp``). The plaintext
  read ahead is thrown away before the switch (RFC 3207 §4.2; the STARTTLS
  command injection, CVE-2011-0411); after it, aiosmtpd's own state reset
  and a new session, keeping what the client already sent over TLS.
- **Plain paths** (:func:`plain_path`): aiosmtpd parses each ``MAIL`` and
  ``RCPT`` path with the ``email`` header parser; ``<local@domain>`` in
  dot-atom form and ``<>`` are answered here with the same result, every
  other form still goes to aiosmtpd.

The wire itself stays aiosmtpd's: we never re-parse SMTP.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, TLSSetupException, syntax

from directory.identifiers import DOT_ATOM

if TYPE_CHECKING:
    import ssl

    from relay.policy import Channel, SenderFacts


# A path with a Dot-string local part and a dot-atom domain, ASCII only: what
# nearly every client sends (RFC 5321 §4.1.2 Path, no source route, no
# quoting); anything else goes to aiosmtpd's parser.
_PLAIN_PATH: Final = re.compile(rf"<({DOT_ATOM}@{DOT_ATOM})>")
# The end of data (RFC 5321 §4.1.1.4), found as ".<CRLF>" preceded by <CRLF>.
_DOT_CRLF: Final = b".\r\n"
# How many dots unstuff() checks one by one before it lets replace() scan the
# rest: a dot costs about 0.15 us, replace() about 0.7 us per KB.
_DOTS_LOOKED_AT: Final = 64
# RFC 4954 §4: the longest AUTH command line a server must accept.
MAX_AUTH_LINE: Final = 12288
# RFC 3461 §4.2: ENVID at most 100 characters.
MAX_ENVID_LENGTH: Final = 100
NOTIFY_VALUES: Final = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ENHANCED: Final = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}( |$)")
# RFC 3463 codes for aiosmtpd's replies that carry none, by reply code.
_DEFAULT_STATUS: Final = {
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    421: "4.3.0",
    451: "4.3.0",
    452: "4.3.1",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    535: "5.7.8",
    550: "5.0.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.7.0",
    555: "5.5.4",
}


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: ``+XX`` is the byte with hex value XX; the bytes are UTF-8."""
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            hex_digits = value[i + 1 : i + 3]
            if len(hex_digits) != 2 or not all(
                h in "0123456789ABCDEFabcdef" for h in hex_digits
            ):
                raise ValueError("bad xtext escape")
            out.append(int(hex_digits, 16))
            i += 3
        else:
            if not 33 <= ord(c) <= 126 or c == "=":
                raise ValueError("bad xtext character")
            out.append(ord(c))
            i += 1
    return out.decode("utf-8")


def _split_params(arg: str, wanted: frozenset[str]) -> tuple[str, dict[str, str], str]:
    """Remove ``wanted`` KEY=VALUE parameters from a MAIL/RCPT argument.

    Returns the argument without them, the parameters taken (keys upper-cased,
    values as sent) and an error text ("" when all is well).
    """
    # The path ends at the first ">" after its "<" (parameters such as an
    # ENVID may hold ">" themselves).
    start = arg.find("<")
    end = arg.find(">", start) if start >= 0 else -1
    if end >= 0:
        head, tail = arg[: end + 1], arg[end + 1 :]
    else:
        head, _, tail = arg.partition(" ")
    kept: list[str] = []
    taken: dict[str, str] = {}
    for token in tail.split():
        key, _, value = token.partition("=")
        if key.upper() in wanted:
            if key.upper() in taken:
                return arg, {}, f"501 5.5.4 Duplicate {key.upper()} parameter"
            taken[key.upper()] = value
        else:
            kept.append(token)
    return " ".join([head, *kept]), taken, ""


def plain_path(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` for a ``<>`` or ``<local@domain>`` path in dot-atom
    form, exactly as aiosmtpd's ``SMTP._getaddr`` would give it (before its
    local-part length check); None for anything else, which aiosmtpd's parser
    (``email._header_value_parser.get_angle_addr``) must judge.

    aiosmtpd parses every MAIL and RCPT path with the ``email`` package's
    header parser, a costly tree of tokens; for this form its answer is the
    path between the brackets and what follows the ``>`` without its leading
    white space. Checked against aiosmtpd's parser by
    ``tests/relay/test_smtp_fast_paths.py``.
    """
    if arg.startswith("<>"):
        # RFC 5321 §4.5.5: the null reverse-path; the parser takes the rest
        # as it stands.
        return "<>", arg[2:]
    match = _PLAIN_PATH.match(arg)
    if match is None:
        return None
    address = match.group(1)
    if "=?" in address:
        return None  # the parser tries RFC 2047 encoded words there
    rest = arg[match.end() :]
    if rest[:1] in {" ", "\t"}:
        rest = rest.lstrip()  # the parser's folding white space
    if rest.startswith("("):
        return None  # a comment: the parser's to skip
    return address, rest


def unstuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2: remove the first "." of every line that starts with one.

    ``data`` starts a line and ends before the end-of-data line. The lines to
    change are found from the dots (one ``memchr`` each, so a base64 body is
    crossed at memory speed); past :data:`_DOTS_LOOKED_AT` dots, none of them
    starting a line, one ``replace`` does it (a body of prose).
    """
    if data.startswith(b"."):
        data = data[1:]
    dot = data.find(b".")
    for _ in range(_DOTS_LOOKED_AT):
        if dot < 0:
            return data  # no line starts with "."
        if dot >= 2 and data[dot - 2 : dot] == b"\r\n":
            break
        dot = data.find(b".", dot + 1)
    return data.replace(b"\r\n.", b"\r\n")


@dataclass(frozen=True, slots=True)
class MailDsn:
    envid: str | None = None
    ret: str | None = None


@dataclass(frozen=True, slots=True)
class RcptDsn:
    notify: tuple[str, ...] = ()
    orcpt: str | None = None


class RelaySession(Session):
    """aiosmtpd's session plus the facts the relay gathered about it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cid: str) -> None:
        super().__init__(loop)
        self.cid = cid


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope plus the transaction facts (reset by RSET and DATA)."""

    def __init__(self) -> None:
        super().__init__()
        self.dsn = MailDsn()
        self.rcpt_dsn: dict[str, RcptDsn] = {}
        self.sender_facts: SenderFacts | None = None
        self.patient_recipients = 0
        # The patients among the recipients (directory entries), for the copy
        # to the treating doctor.
        self.patients: list[Any] = []
        # Professional recipients of a patient's message, judged at DATA.
        self.thread_checks: dict[str, Any] = {}
        # Addresses established as usable by the account (envelope sender).
        self.usable_from: set[str] = set()


class _TlsFacts:
    """What aiosmtpd keeps of the TLS layer after STARTTLS: a truth value
    (TLS is on) and ``_extra``, the TLS facts it puts in ``session.ssl``;
    here those of the transport ``loop.start_tls`` returned."""

    _NAMES: Final = ("sslcontext", "ssl_object", "peercert", "cipher", "compression")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._extra = {name: transport.get_extra_info(name) for name in self._NAMES}


class RelaySMTP(SMTP):
    """One SMTP connection on one of the relay's listeners."""

    # RFC 4954 §4: an AUTH command line, and each SASL response line, may be
    # 12,288 octets (bearer tokens are long); aiosmtpd's defaults are 512 per
    # command and 1,001 per line. The stream limit is the line limit.
    line_length_limit = MAX_AUTH_LINE + 2

    def __init__(
        self,
        handler: Any,  # noqa: ANN401 - aiosmtpd's own type
        *,
        channel: Channel,
        implicit_tls: bool = False,
        **kwargs: Any,  # noqa: ANN401 - passed to aiosmtpd.smtp.SMTP
    ) -> None:
        self.channel = channel
        self.implicit_tls = implicit_tls
        self.cid = secrets.token_hex(6)
        self.pending_mail = MailDsn()
        self.pending_rcpt = RcptDsn()
        # Directory answers for this connection, with the loop time they came
        # at (relay.smtp.handler keeps them for DIRECTORY_CACHE_SECONDS).
        self.directory_answers: dict[tuple[str, ...], tuple[float, Any]] = {}
        # Replies held back for a pipelined group (see push), and whether the
        # command being answered is one whose reply may wait (MAIL, RCPT).
        self._held: list[bytes] = []
        self._grouping = False
        super().__init__(handler, **kwargs)
        self.command_size_limits["AUTH"] = MAX_AUTH_LINE

    def _create_session(self) -> Session:
        return RelaySession(self.loop, self.cid)

    def _create_envelope(self) -> Envelope:
        return RelayEnvelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The common plain path without aiosmtpd's header parser; any other
        # form (quoted local part, source route, UTF-8, comments, errors)
        # still goes through it.
        plain = plain_path(arg)
        if plain is None:
            parsed: tuple[str | None, str | None] = super()._getaddr(arg)
            return parsed
        address, rest = plain
        local_part = address.rpartition("@")[0]
        if self.local_part_limit and len(local_part) > self.local_part_limit:
            return None, None
        return address, rest

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's name
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        await self.push("220 Ready to start TLS")
        # uvloop's transports are not subclasses of asyncio's: no isinstance.
        plain = cast("asyncio.WriteTransport | None", self.transport)
        ctx = self.tls_context
        # Gone while the 220 was sent; no context: the syntax decorator
        # hides STARTTLS then.
        if plain is None or ctx is None:  # pragma: no cover
            raise ConnectionResetError("connection lost before STARTTLS")
        # RFC 3207 §4.2: nothing the client sent in plaintext after STARTTLS
        # counts. From here to the switch inside start_tls nothing awaits,
        # so no plaintext can come in between.
        stream: bytearray = self._reader._buffer  # type: ignore[attr-defined]
        stream.clear()
        try:
            tls = await self.loop.start_tls(plain, self, ctx, server_side=True)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # aiosmtpd closes the connection on this
            raise TLSSetupException from error
        if tls is None:  # pragma: no cover (the loop closed the connection)
            raise TLSSetupException
        # aiosmtpd's own switch, as after its hand-built TLS layer: it takes
        # the TLS transport as a new connection (the StreamReader and
        # StreamWriter moved onto it, a new session) when a plain transport
        # is on record, and reads the TLS facts of the session from the
        # layer's ``_extra``. It also empties the stream, which its own layer
        # does before any TLS data; here the client's first command may have
        # come in with the end of the handshake: it is kept.
        early = bytes(stream)
        self._original_transport = plain
        self._tls_protocol = _TlsFacts(tls)  # type: ignore[assignment]
        self.connection_made(tls)
        stream += early

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        transport = self.transport
        if transport is None:
            return None
        obj: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        return obj

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = self._with_enhanced_code(status).encode(
                "utf-8" if self.enable_SMTPUTF8 else "ascii"
            )
        line = status + b"\r\n"
        # RFC 2920 §3.1: replies to a pipelined group may go together. A
        # positive MAIL or RCPT reply waits while the client's next command
        # is already buffered; the next reply that does not wait takes it
        # along (the 354 of DATA, any refusal, any other command's reply),
        # so the group costs one TLS record and one send, not one per reply.
        if self._grouping and status.startswith(b"2") and self._command_buffered():
            self._held.append(line)
            return
        if self._held:
            line = b"".join([*self._held, line])
            self._held = []
        self._writer.write(line)
        await self._writer.drain()

    def _command_buffered(self) -> bool:
        """Whether a complete command line is already read and waiting (a
        pipelining client); False when it cannot tell."""
        buffered = getattr(self._reader, "_buffer", None)
        return isinstance(buffered, bytearray) and b"\n" in buffered

    def _with_enhanced_code(self, status: str) -> str:
        code_text, sep, text = status.partition(" ")
        if not sep or not code_text.isdigit() or _ENHANCED.match(text):
            return status
        code = int(code_text)
        enhanced = _DEFAULT_STATUS.get(code)
        # RFC 2034 §3: not on the greeting nor on HELO/EHLO replies.
        if enhanced is None or text in {"HELP", self.hostname}:
            return status
        return f"{code} {enhanced} {text}"

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's name
        self.pending_mail = MailDsn()
        if arg is not None:
            arg, params, error = _split_params(arg, frozenset({"ENVID", "RET"}))
            if error:
                await self.push(error)
                return
            ret = params.get("RET")
            if ret is not None and ret.upper() not in {"FULL", "HDRS"}:
                await self.push("501 5.5.4 RET must be FULL or HDRS (RFC 3461)")
                return
            envid = params.get("ENVID")
            if envid is not None:
                try:
                    envid = xtext_decode(envid)
                except ValueError:
                    await self.push("501 5.5.4 ENVID is not valid xtext (RFC 3461)")
                    return
                if not envid or len(envid) > MAX_ENVID_LENGTH:
                    await self.push("501 5.5.4 ENVID must be 1 to 100 characters")
                    return
            self.pending_mail = MailDsn(envid=envid, ret=ret.upper() if ret else None)
        self._grouping = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._grouping = False

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's name
        self.pending_rcpt = RcptDsn()
        if arg is not None:
            arg, params, error = _split_params(arg, frozenset({"NOTIFY", "ORCPT"}))
            if error:
                await self.push(error)
                return
            notify: tuple[str, ...] = ()
            if "NOTIFY" in params:
                notify = tuple(v.upper() for v in params["NOTIFY"].split(","))
                if notify != ("NEVER",) and not (
                    notify and set(notify) <= NOTIFY_VALUES
                ):
                    await self.push(
                        "501 5.5.4 NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY"
                    )
                    return
            orcpt = params.get("ORCPT")
            if orcpt is not None:
                addr_type, sep, value = orcpt.partition(";")
                try:
                    orcpt = f"{addr_type.lower()};{xtext_decode(value)}"
                except ValueError:
                    orcpt = None
                if not sep or orcpt is None:
                    await self.push(
                        "501 5.5.4 ORCPT must be addr-type;xtext (RFC 3461)"
                    )
                    return
            self.pending_rcpt = RcptDsn(notify=notify, orcpt=orcpt)
        self._grouping = True
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._grouping = False

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's name
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None  # noqa: S101 - aiosmtpd's invariant
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content = await self._read_data()
        if content is None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> bytes | None:
        """The data up to <CRLF>.<CRLF>, un-stuffed; None when over the limit."""
        reader = self._reader
        limit = self.data_size_limit
        # The parts are joined once at the end; ``tail`` holds the last five
        # octets read, enough to tell "<CRLF>.<CRLF>" from a bare ".<CRLF>".
        parts: list[bytes] = []
        size = 0
        tail = b""
        too_big = False
        while True:
            try:
                part = await reader.readuntil(_DOT_CRLF)
            except asyncio.LimitOverrunError as exc:
                # No ".<CRLF>" within the stream's limit: take what was
                # searched (never a partial separator) and go on.
                part = await reader.read(exc.consumed)
            except asyncio.IncompleteReadError:
                raise ConnectionResetError("connection lost during DATA") from None
            size += len(part)
            tail = (tail + part[-5:])[-5:]
            if not too_big:
                parts.append(part)
                if limit and size > limit + len(_DOT_CRLF):
                    too_big = True  # read on to the end, keeping nothing
                    parts.clear()
            if part.endswith(_DOT_CRLF) and (
                size == len(_DOT_CRLF) or tail[-5:-3] == b"\r\n"
            ):
                break
        if too_big:
            return None
        parts[-1] = parts[-1][: -len(_DOT_CRLF)]
        return unstuff(b"".join(parts))
