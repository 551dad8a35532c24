"""Sans-IO protocol cores shared by the client library and the relay.

Owns the wire grammar of the mail protocols (bytes in, events out; events in,
bytes out) and nothing else. What must stay true: no module under
``mssante.proto`` opens a socket, runs an event loop, reads a clock or a file
(``tests/test_architecture.py`` enforces it), so the relay's asyncio server
and the library's client drive the same code.
"""
