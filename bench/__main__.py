"""``python -m bench AREA``: run the benchmark of one area.

Each area prints a table, then one ``BENCH <area> <metric> ours=<n> ref=<n>
ratio=<ours/ref> unit=<unit>`` line per figure, each measured next to a
reference run in the same invocation.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

AREAS: Final = ("directory", "smtp", "imap", "crypto", "delivery")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("area", choices=AREAS)
    ns, rest = parser.parse_known_args(args)
    area = importlib.import_module(f"bench.{ns.area}")
    result: int = area.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
