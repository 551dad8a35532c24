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
- a data frame is a list of items, as :func:`directory.importers._run.
  parse_rows` makes them: an entry as ``(rows, kind, row)`` -- ``row`` is
  its :data:`directory.sqlite.ImportRow`, made from an entry validated
  here, which the parent stores as it is or turns back into the entry
  without validating it again --, a rejected row as ``(rows, "", (line,
  reason))``; ``rows`` is the number of data rows read when the item came
  out, so progress reports are the same as in one process;
- the last frame is ``{"rows": n, "fallback_lines": n}``, or ``{"failed":
  reason}`` when the file could not be read to its end;
- the pipe's buffer is the back-pressure: the parser blocks when the parent
  is a chunk or two behind, so memory stays bounded.
"""

from __future__ import annotations

import gc
import itertools
import marshal
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from directory.importers._errors import ImportFileError
from directory.importers._reader import ExtractionReader, open_extraction
from directory.importers._run import (
    CHUNK_ITEMS,
    FORMATS,
    FRAME_HEADER,
    Tally,
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
            items = parse_rows(reader, fmt, tally)
            while chunk := list(itertools.islice(items, CHUNK_ITEMS)):
                write_frame(out, chunk)
    except (OSError, ImportFileError) as exc:
        write_frame(out, {"failed": f"{type(exc).__name__}: {exc}"})
        return
    write_frame(out, {"rows": tally.rows, "fallback_lines": tally.fallback_lines})


def main(argv: Sequence[str]) -> int:
    # This process allocates many short-lived objects and keeps none: the
    # cyclic collector would only spend time walking them.
    gc.disable()
    fmt, path = argv
    out = sys.stdout.buffer
    try:
        run(Path(path), fmt, out)
        out.flush()
    except BrokenPipeError:  # the parent stopped reading (it failed): just end
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
