"""Seconds per stage of a scene (read, preprocess, model, blend, write blocks, merge seams, ...).

Stages are sums of the time spent in each kind of work, not a partition of the wall time: the
read-ahead thread reads while the model runs, and CPU lanes run several batches at once, so on a busy
job the stages add up to more than the wall time. That is the point: a stage close to the wall time
is the one the job waits on.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Stages:
    """Thread-safe sums of seconds by stage name."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] += seconds

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def wrap(self, name: str, fn: F) -> F:
        """``fn`` timed under ``name`` on every call; attributes the caller reads (``lanes``) are kept."""

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            with self.timed(name):
                return fn(*args, **kwargs)

        for attr in ("lanes", "streams"):
            if hasattr(fn, attr):
                setattr(timed_call, attr, getattr(fn, attr))
        return timed_call  # type: ignore[return-value]

    def merge(self, other: dict[str, float]) -> None:
        for name, seconds in other.items():
            self.add(name, seconds)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)
