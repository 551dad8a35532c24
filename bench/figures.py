"""The ``BENCH`` line every area prints, one per figure (the guide's format).

``BENCH <area> <metric> ours=<n> ref=<n> ratio=<ours/ref> unit=<unit>``, where
``ref`` is the reference server or tool measured in the same invocation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure of ours next to the reference's."""

    area: str
    metric: str
    ours: float
    ref: float
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.ref if self.ref else float("inf")

    def line(self) -> str:
        return (
            f"BENCH {self.area} {self.metric} ours={self.ours:.4g} ref={self.ref:.4g}"
            f" ratio={self.ratio:.3g} unit={self.unit}"
        )
