"""A scripted peer for the IMAP core: feed bytes, answer like a server would.

``drive`` feeds the input whole or one byte at a time (h11's
``t_body_reader``), answers every command with a tagged OK and every
synchronizing literal with ``+``, and returns the events and the bytes sent.
"""

from __future__ import annotations

from mssante.proto import imap


def drive(
    data: bytes,
    *,
    chunked: bool,
    conn: imap.Connection | None = None,
    eof: bool = True,
) -> tuple[list[imap.Event], bytes]:
    conn = conn or imap.Connection(imap.SERVER, state=imap.State.SELECTED)
    events: list[imap.Event] = []
    sent = bytearray()
    chunks = [data[i : i + 1] for i in range(len(data))] if chunked else [data]
    if eof:
        chunks.append(b"")
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if event is imap.NEED_DATA or event is imap.PAUSED:
                break
            events.append(event)
            if isinstance(event, imap.CommandReceived):
                sent += conn.send(imap.Tagged(event.tag, imap.Status.OK, "done"))
            elif isinstance(event, imap.LiteralAwaited):
                sent += conn.send(imap.ContinuationRequest())
            elif isinstance(event, imap.InvalidCommandReceived):
                sent += conn.send(event.reply())
            elif isinstance(event, imap.ConnectionClosed):
                return events, bytes(sent)
    return events, bytes(sent)
