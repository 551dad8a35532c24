"""The parsing process of a large import: ``python -m directory.importers._parser``.

Owns the child side of :func:`directory.importers.import_file` with
``parallel``: it reads the extraction (whose header the parent has already
checked), turns rows into entries with the same code as an import in one
process (:func:`directory.importers._run.parse`), and writes them to stdout
for the parent, which only writes to the backend. Two cores then share the
work: parsing and validating here, storage there.

Wire format (stdout), what must stay true:

- a sequence of frames, each a 4-byte big-endian length then a
  :mod:`marshal` payload of builtins only (never pickle);
- a data frame is a chunk of items as :func:`directory.importers._run.
  chunks` sorts them out: ``(rejects, kinds)``, ``rejects`` a list of
  ``(line, reason)``, ``kinds`` for each kind ``(rows, read)``: its
  :data:`directory.sqlite.ImportRow` rows, made from entries validated here
  (the parent stores them as they are or turns them back into entries
  without validating them again), and beside each the number of data rows
  read when it came out, so progress reports are the same as in one
  process;
- the last frame is ``{"rows": n, "fallback_lines": n}``, or ``{"failed":
  reason}`` when the file could not be read to its end;
- the pipe's buffer is the back-pressure: the parser blocks when the parent
  is a chunk or two behind, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import marshal
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from directory.importers._errors import ImportFileError
from directory.importers._reader import ExtractionReader, open_extraction
from directory.importers._run import (
    FORMATS,
    FRAME_HEADER,
    Tally,
    chunks,
    layout,
    parse_rows,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


def write_frame(out: IO[bytes], payload: Any) -> None:  # noqa: ANN401 - builtins
    data = marshal.dumps(payload)
    out.write(FRAME_HEADER.pack(len(data)))
    out.write(data)


def run(path: Path, fmt: str, out: IO[bytes]) -> None:
    """Parse ``path`` and write its frames to ``out``."""
    if fmt not in FORMATS:
        write_frame(out, {"failed": f"unknown format {fmt!r}"})
        return
    tally = Tally()
    try:
        with open_extraction(path) as stream:
            reader = ExtractionReader(stream, layout(fmt), path.name)
            for chunk in chunks(parse_rows(reader, fmt, tally)):
                write_frame(out, chunk)
    except (OSError, ImportFileError) as exc:
        write_frame(out, {"failed": f"{type(exc).__name__}: {exc}"})
        return
    write_frame(out, {"rows": tally.rows, "fallback_lines": tally.fallback_lines})


# The pipe's capacity (Linux's default is 64 KiB): a frame goes through in
# one or two writes and reads instead of sixteen, so both processes make
# fewer system calls and wake-ups; the parser also runs a frame further ahead.
PIPE_BYTES: Final = 1024 * 1024


def _widen_pipe(out: IO[bytes]) -> None:
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is not None:
        # Not a pipe, or above /proc/sys/fs/pipe-max-size: keep it as it is.
        with contextlib.suppress(OSError):
            fcntl.fcntl(out.fileno(), set_size, PIPE_BYTES)


def main(argv: Sequence[str]) -> int:
    # This process allocates many short-lived objects and keeps none: the
    # cyclic collector would only spend time walking them.
    gc.disable()
    fmt, path = argv
    out = sys.stdout.buffer
    _widen_pipe(out)
    try:
        run(Path(path), fmt, out)
        out.flush()
    except BrokenPipeError:  # the parent stopped reading (it failed): just end
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
