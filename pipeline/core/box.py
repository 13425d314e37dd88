"""Axis-aligned N-d boxes in scene pixel coordinates: the currency of tiling, I/O and blending."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import prod


@dataclass(frozen=True, order=True)
class Box:
    """Half-open box ``[start, stop)`` per spatial axis. Starts may be negative (padded reads)."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop):
            raise ValueError(f"Box start {self.start} and stop {self.stop} differ in rank")

    @classmethod
    def from_shape(cls, shape: Sequence[int], start: Sequence[int] | None = None) -> Box:
        begin = tuple(int(s) for s in start) if start is not None else (0,) * len(shape)
        return cls(begin, tuple(b + int(n) for b, n in zip(begin, shape, strict=True)))

    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def empty(self) -> bool:
        return any(b <= a for a, b in zip(self.start, self.stop, strict=True))

    def slices(self, origin: Sequence[int] | None = None) -> tuple[slice, ...]:
        """Slices of this box inside an array whose element 0 sits at ``origin``."""
        org = origin if origin is not None else (0,) * self.ndim
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, org, strict=True))

    def intersect(self, other: Box) -> Box:
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        return Box(start, tuple(max(s, e) for s, e in zip(start, stop, strict=True)))

    def contains(self, other: Box) -> bool:
        if other.empty:
            return True
        return all(
            a <= c and d <= b
            for a, b, c, d in zip(self.start, self.stop, other.start, other.stop, strict=True)
        )

    def shift(self, offset: Sequence[int]) -> Box:
        return Box(
            tuple(a + o for a, o in zip(self.start, offset, strict=True)),
            tuple(b + o for b, o in zip(self.stop, offset, strict=True)),
        )

    def difference(self, inner: Box) -> Iterator[Box]:
        """Disjoint boxes covering ``self`` minus ``inner`` (at most 2 per axis)."""
        inner = self.intersect(inner)
        if inner.empty:
            if not self.empty:
                yield self
            return
        start, stop = list(self.start), list(self.stop)
        for axis in range(self.ndim):
            if start[axis] < inner.start[axis]:
                lo = stop.copy()
                lo[axis] = inner.start[axis]
                yield Box(tuple(start), tuple(lo))
            if inner.stop[axis] < stop[axis]:
                hi = start.copy()
                hi[axis] = inner.stop[axis]
                yield Box(tuple(hi), tuple(stop))
            start[axis], stop[axis] = inner.start[axis], inner.stop[axis]
