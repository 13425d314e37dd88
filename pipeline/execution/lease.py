"""Scene leases: one run at a time works on a scene's work folder, whoever else shares the storage.

A lease is a small JSON record (run id, host, pid, when it was taken, last heartbeat) created
atomically next to the work folder. A second run that finds a live lease leaves the scene alone (or
waits, with ``--wait``); a lease whose heartbeat is older than the timeout belongs to a run that died,
and the next run takes it over and resumes from the work store.

The record lives behind a ``LeaseStore``: exclusive create, compare-and-swap, delete. On a POSIX
folder (local disk, NFS, any shared mount) a lease is created by hard-linking a finished temporary
file into place, which is atomic and refused when the name exists (the classic NFS-safe lock), and
its heartbeat is the file's modification time, set in place, so the lease file never disappears or
changes hands while its run is alive. On S3 the lease is an object written with conditional PUTs
(``If-None-Match: *`` to create, ``If-Match: <ETag>`` for heartbeats and take-overs):
``flows/leases.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

DEFAULT_TIMEOUT_S = 120.0
_TAKEN = ".taken-"  # a stale record moved aside by a take-over, until the new holder claims it
_RUN_ID = f"{uuid.uuid4().hex[:12]}"


def run_id() -> str:
    """This process's run id (one per process: a CLI run, a served flow run, a test)."""
    return _RUN_ID


def _node() -> str:
    """This machine's boot and PID namespace: two processes share it exactly when a pid seen by one
    names the same process for the other (a host name alone does not: containers share one)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _dead(info: LeaseInfo) -> bool:
    """True when the holder provably died: same node, and its pid is gone or a zombie."""
    if not info.node or info.node != _node():
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a SIGKILLed child its parent has not reaped yet
        return Path(f"/proc/{info.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a lease and since when; ``heartbeat`` is the last sign of life (Unix time)."""

    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    node: str = ""  # boot id and PID namespace (see _node)

    @classmethod
    def mine(cls, now: float | None = None) -> LeaseInfo:
        now = time.time() if now is None else now
        return cls(run_id(), platform.node(), os.getpid(), now, now, _node())

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> LeaseInfo | None:
        """None for anything that is not a lease record (a torn or foreign file)."""
        try:
            d = json.loads(raw)
            return cls(str(d["run_id"]), str(d["host"]), int(d["pid"]), float(d["started"]),
                       float(d["heartbeat"]), str(d.get("node", "")))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"run {self.run_id} on host {self.host} (pid {self.pid}) since {_iso(self.started)}"


class LeaseStore(Protocol):
    """Where one lease record lives. ``token`` identifies one version of the record (an ETag, the
    file's content); every method is atomic on its storage."""

    where: str

    def create(self, info: LeaseInfo) -> Any | None:
        """Write the record if none exists; its token, or None when one exists."""

    def read(self) -> tuple[LeaseInfo | None, Any] | None:
        """The record (None if unreadable) and its token; None when there is no record."""

    def swap(self, token: Any, info: LeaseInfo) -> Any | None:
        """Replace the record if it is still version ``token``; the new token, or None."""

    def beat(self, token: Any, info: LeaseInfo) -> Any | None:
        """Renew our own record (still version ``token``); its new token, or None if it is gone."""

    def delete(self, token: Any) -> None:
        """Remove the record if it is still version ``token``."""


class FileLeaseStore:
    """A lease file on a POSIX file system (see the module docstring for why link and mtime)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)

    def _temp(self, info: LeaseInfo) -> Path:
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}.new")
        tmp.write_bytes(info.encode())
        os.utime(tmp, (info.heartbeat, info.heartbeat))
        return tmp

    def create(self, info: LeaseInfo) -> Any | None:
        for _ in range(5):  # another run may remove the emptied folder between our mkdir and link
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp = self._temp(info)
            except FileNotFoundError:
                continue
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return None
            except FileNotFoundError:
                continue
            finally:
                tmp.unlink(missing_ok=True)
            return info.encode()
        raise OSError(f"cannot create a lease in {self.path.parent}: the folder keeps disappearing")

    def read(self) -> tuple[LeaseInfo | None, Any] | None:
        try:
            raw, mtime = self.path.read_bytes(), self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        info = LeaseInfo.decode(raw)
        if info is not None:  # the heartbeat is the file's mtime, renewed in place
            info = replace(info, heartbeat=max(info.heartbeat, mtime))
        else:  # not a lease record (torn by a foreign writer): alive for as long as its mtime says
            info = LeaseInfo("unknown", "unknown", 0, mtime, mtime)
        return info, raw

    def swap(self, token: Any, info: LeaseInfo) -> Any | None:
        """Move the old record aside (rename: only one taker wins), check it is the version we judged,
        then link ours in (refused if a third run got there first). The record moved aside stays
        until the run whose lease lands claims it (``claim_taken``), so the note of whose lease was
        taken over reaches that run even when a plain ``create`` of another run wins the gap."""
        aside = self.path.with_name(f"{self.path.name}{_TAKEN}{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None
        try:
            judged = aside.read_bytes() == token
        except FileNotFoundError:  # claimed already by the run that won the gap
            return None
        if not judged:  # a newer record: put it back untouched
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return None
        return self.create(info)

    def claim_taken(self) -> LeaseInfo | None:
        """The stale record a take-over moved aside, for the run that now holds the lease; removing
        it is the claim (one unlink succeeds)."""
        found = []
        for aside in self.path.parent.glob(f"{self.path.name}{_TAKEN}*"):
            try:
                raw = aside.read_bytes()
                aside.unlink()
            except FileNotFoundError:
                continue
            info = LeaseInfo.decode(raw)
            found.append(info or LeaseInfo("unknown", "unknown", 0, 0.0, 0.0))
        return max(found, key=lambda i: i.heartbeat) if found else None

    def beat(self, token: Any, info: LeaseInfo) -> Any | None:
        try:
            os.utime(self.path, (info.heartbeat, info.heartbeat))
            return token if self.path.read_bytes() == token else None
        except FileNotFoundError:
            return None

    def delete(self, token: Any) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path.read_bytes() == token:
                self.path.unlink()


@dataclass(frozen=True)
class Busy:
    """The scene is leased by another live run."""

    holder: LeaseInfo
    where: str

    @property
    def reason(self) -> str:
        return f"being processed by {self.holder.describe()}"


class Lease:
    """A lease this run holds; a thread renews its heartbeat until ``release``."""

    def __init__(self, store: LeaseStore, info: LeaseInfo, token: Any, timeout: float,
                 taken_over: LeaseInfo | None = None) -> None:  # fmt: skip
        self.store, self.info, self.token, self.timeout = store, info, token, timeout
        self.taken_over = taken_over
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tilewise-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = max(0.2, self.timeout / 4)
        while not self._stop.wait(interval):
            info = replace(self.info, heartbeat=time.time())
            try:
                token = self.store.beat(self.token, info)
            except OSError:
                continue  # storage hiccup: try again; the timeout allows for three misses
            if token is None:
                self.lost = True
                return
            self.info, self.token = info, token

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if not self.lost:
            with contextlib.suppress(OSError):
                self.store.delete(self.token)

    @property
    def note(self) -> str:
        """What the run's report says about a take-over ("" when the lease was free)."""
        if self.taken_over is None:
            return ""
        return f"took over the stale lease of {self.taken_over.describe()} and resumed its work"

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _claim(store: LeaseStore) -> LeaseInfo | None:
    """A store whose take-overs are not one atomic step (a POSIX folder) hands the stale record to
    whichever run's lease landed; S3's conditional PUT swaps in place and needs none."""
    claim = getattr(store, "claim_taken", None)
    return claim() if claim is not None else None


def acquire(
    store: LeaseStore,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    wait: bool = False,
    poll: float | None = None,
    on_wait: Callable[[Busy], None] | None = None,
) -> Lease | Busy:
    """Take the lease, take over a stale one, or report who holds it (``wait``: until it is free)."""
    poll = poll if poll is not None else min(5.0, max(0.2, timeout / 8))
    told = False
    while True:
        mine = LeaseInfo.mine()
        token = store.create(mine)
        if token is not None:
            return Lease(store, mine, token, timeout, taken_over=_claim(store))
        found = store.read()
        if found is None:
            continue  # released between our two calls
        holder, old = found
        if holder is None or time.time() - holder.heartbeat > timeout or _dead(holder):
            token = store.swap(old, mine)
            if token is not None:
                return Lease(store, mine, token, timeout, taken_over=_claim(store) or holder)
            continue
        busy = Busy(holder, store.where)
        if not wait:
            return busy
        if on_wait and not told:
            on_wait(busy)
            told = True
        time.sleep(poll)


def live_leases(
    folder: str | Path, timeout: float = DEFAULT_TIMEOUT_S, suffix: str = ".lease"
) -> list[LeaseInfo]:
    """Live lease files directly under ``folder`` (a shared output folder's work area)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    out = []
    for path in root.glob(f"*{suffix}"):
        found = FileLeaseStore(path).read()
        info = found[0] if found else None
        if info is not None and time.time() - info.heartbeat <= timeout and not _dead(info):
            out.append(found[0])
    return out
