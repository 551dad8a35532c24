"""Reading the public Annuaire Santé extraction files, as published.

Owns: opening a ``.txt`` extraction or a ``.zip`` that wraps exactly one
``.txt``; decoding; splitting lines into fields; checking the header row.

What must stay true:

- **Streaming.** The file is read one line at a time (``readline`` with a
  limit), never loaded whole; a line longer than :data:`MAX_LINE_BYTES` is
  rejected and skipped without being held in memory.
- **Header first.** The header row is read and compared with the expected
  layout when the reader is built, so a wrong file fails with
  :class:`HeaderMismatchError` before the caller writes anything.
- **Encoding.** The files are UTF-8 (MSSanté) or Windows-1252 (RPPS). Both
  headers contain accented letters, so the header decides the file's
  encoding: UTF-8 if it decodes strictly as UTF-8, else Windows-1252. Each data
  line is then decoded on its own: ASCII lines as is, else strict UTF-8 first
  and Windows-1252 as the fallback (a Windows-1252 text with accents is
  practically never valid UTF-8, so this cannot garble a line, and a file that
  mixes both still reads right). Lines decoded in the other encoding than the
  header's are counted (:attr:`ExtractionReader.fallback_lines`). A line that
  is neither (Windows-1252 leaves five bytes undefined) is rejected.
- **Line numbers** are 1-based physical lines of the text file, the header
  being line 1, so that a reject points at the line an editor shows.
- Blank lines are skipped; ``\\r\\n`` line ends are accepted.
"""

from __future__ import annotations

import contextlib
import zipfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Final

from directory.importers._errors import HeaderMismatchError, ImportFileError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SEPARATOR: Final = "|"
UTF8: Final = "utf-8"
CP1252: Final = "cp1252"
# The longest real RPPS line is about 1.5 KB; 64 KiB is far above any valid
# row and still a bounded amount of memory per line.
MAX_LINE_BYTES: Final = 64 * 1024
_BOM: Final = "\ufeff"

RawRow = tuple[int, list[str] | str]
"""(line number, fields) for a well-formed line, (line number, reason) else."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The column layout of one extraction format."""

    name: str
    columns: tuple[str, ...]
    # Every line ends with a "|" (the RPPS file): one empty field more.
    trailing_separator: bool = False


@contextlib.contextmanager
def open_extraction(path: Path) -> Iterator[IO[bytes]]:
    """Open an extraction as a binary stream: ``.txt``, or ``.zip`` of one ``.txt``.

    Raises:
        ImportFileError: a zip that holds no ``.txt`` or more than one file.
        OSError: the file cannot be read (left to the caller).
    """
    if path.suffix.lower() != ".zip":
        with path.open("rb") as f:
            yield f
        return
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ImportFileError(f"{path.name}: not a valid zip file: {exc}") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1 or not members[0].filename.lower().endswith(".txt"):
            names = ", ".join(m.filename for m in members) or "nothing"
            msg = f"{path.name}: a zip must hold exactly one .txt file (holds {names})"
            raise ImportFileError(msg)
        with archive.open(members[0]) as f:
            yield f


def _strip_eol(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw


class ExtractionReader:
    """The rows of one extraction, header checked, decoded line by line.

    Iterating yields :data:`RawRow` items; a line with the wrong number of
    fields, too long or undecodable comes as its reason, never as an exception.
    """

    def __init__(self, stream: IO[bytes], layout: Layout, name: str) -> None:
        """Read and check the header row.

        Raises:
            HeaderMismatchError: the header is missing or not ``layout``'s.
        """
        self._stream = stream
        self._layout = layout
        self._width = len(layout.columns)
        self.name = name
        self.fallback_lines = 0
        self.lines = 0  # physical lines read, header included
        raw = stream.readline(MAX_LINE_BYTES)
        self.lines = 1
        header_bytes = _strip_eol(raw)
        try:
            header = header_bytes.decode(UTF8)
            self.encoding = UTF8
        except UnicodeDecodeError:
            header = header_bytes.decode(CP1252, errors="replace")
            self.encoding = CP1252
        self._check_header(header.removeprefix(_BOM))

    def _check_header(self, header: str) -> None:
        layout = self._layout
        if not header.strip():
            msg = f"{self.name}: empty file or no header row (expected the {layout.name} layout)"
            raise HeaderMismatchError(msg)
        got = header.split(SEPARATOR)
        if layout.trailing_separator and len(got) == self._width + 1 and not got[-1]:
            got.pop()
        for i, (have, want) in enumerate(zip(got, layout.columns, strict=False), 1):
            if have.strip() != want:
                msg = (
                    f"{self.name}: header column {i} is {have!r}, expected {want!r}"
                    f" (not the {layout.name} layout)"
                )
                raise HeaderMismatchError(msg)
        if len(got) != self._width:
            msg = (
                f"{self.name}: header has {len(got)} columns, expected {self._width}"
                f" (the {layout.name} layout)"
            )
            raise HeaderMismatchError(msg)

    def _decode(self, raw: bytes) -> str | None:
        if raw.isascii():
            return raw.decode("ascii")
        try:
            text = raw.decode(UTF8)
            other = self.encoding != UTF8
        except UnicodeDecodeError:
            try:
                text = raw.decode(CP1252)
            except UnicodeDecodeError:
                return None
            other = self.encoding != CP1252
        if other:
            self.fallback_lines += 1
        return text

    def __iter__(self) -> Iterator[RawRow]:
        width = self._width
        trailing = self._layout.trailing_separator
        readline = self._stream.readline
        decode = self._decode
        number = self.lines
        while raw := readline(MAX_LINE_BYTES):
            number += 1
            self.lines = number
            if raw[-1:] == b"\n":
                raw = raw[:-2] if raw[-2:-1] == b"\r" else raw[:-1]
            elif len(raw) == MAX_LINE_BYTES:
                while (rest := readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                yield number, f"line longer than {MAX_LINE_BYTES} bytes"
                continue
            else:
                raw = _strip_eol(raw)
            if not raw.strip():
                continue
            if raw.isascii():
                text = raw.decode("ascii")
            else:
                decoded = decode(raw)
                if decoded is None:
                    yield number, "line is neither UTF-8 nor Windows-1252"
                    continue
                text = decoded
            fields = text.split(SEPARATOR)
            n = len(fields)
            if n != width:
                if trailing and n == width + 1 and not fields[-1]:
                    fields.pop()
                else:
                    yield number, f"row has {n} fields, expected {width}"
                    continue
            yield number, fields
