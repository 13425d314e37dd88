"""Where flows report: ``PREFECT_API_URL`` when set (checked first), else a temporary local server.

Without ``PREFECT_API_URL`` Prefect starts a temporary server as a child process. Prefect stops it at
exit, but a CLI killed with SIGKILL would leave it running forever; ours is started the same way
with ``PR_SET_PDEATHSIG`` (Linux), so it dies with the process that started it.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.errors import ConfigError, ExecutionError, redact


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class _ModuleShim:
    """``subprocess`` as seen by Prefect's server module, with ``Popen`` tying the child to us."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.Popen = functools.partial(real.Popen, preexec_fn=_die_with_parent)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _tied_server() -> Any:
    """Prefect's temporary server, started by us so that it cannot outlive this process."""
    from prefect.server.api import server as srv

    class TiedServer(srv.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> Any:
            real = srv.subprocess
            srv.subprocess = _ModuleShim(real)  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                srv.subprocess = real

    existing = srv.SubprocessASGIServer._instances.get(None)
    server = existing if existing is not None else TiedServer()
    try:
        server.start()  # a no-op when already running; Prefect's clients find it by the same key
    except RuntimeError as exc:
        if "Timed out" not in str(exc):
            raise
        _abandon(server)
        raise ExecutionError(STARTUP_TIMEOUT.format(seconds=_startup_timeout())) from None
    return server


STARTUP_TIMEOUT = (
    "Prefect's temporary local server did not start within {seconds:g} s (a busy machine?); retry, "
    "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run `prefect server start --host "
    "127.0.0.1` once and set PREFECT_API_URL=http://127.0.0.1:4200/api"
)


def _startup_timeout() -> float:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


def _abandon(server: Any) -> None:
    """Kill a temporary server that never came up. Prefect leaves it running and terminates it at
    exit, mid-start-up, and it then prints its own traceback; SIGKILL ends it without a word."""
    proc = getattr(server, "server_process", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    server.server_process = None
    server.stop()


def _check_reachable(url: str) -> None:
    """Fail fast, in one line, when PREFECT_API_URL names a server that is not there (any HTTP answer,
    even 401 from a cloud workspace, counts as there)."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10)
    except httpx.HTTPError as exc:
        raise ConfigError(
            redact(
                f"Prefect API {url} is not reachable ({type(exc).__name__}); start it or "
                "unset PREFECT_API_URL to run with a temporary local server"
            )
        ) from None


@contextmanager
def prefect_api() -> Iterator[str]:
    """The API this process reports to: ``PREFECT_API_URL`` when set (checked), else a temporary
    local server tied to this process ("" when Prefect is left to start its own: not the main thread
    or not Linux)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        _check_reachable(url)
        yield url
        return
    tie = sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
    yield _tied_server().api_url if tie else ""


@contextmanager
def prefect_settings_checked() -> Iterator[None]:
    """Import or start Prefect; a bad ``PREFECT_*`` setting becomes one ConfigError naming the variable
    (Prefect validates its settings with pydantic on first import, deep inside the import chain)."""
    import os

    from pydantic import ValidationError

    try:
        yield
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][-1]).upper() if err.get("loc") else ""
            names = [k for k in os.environ if k.startswith("PREFECT_") and field and k.endswith(field)]
            where = " or ".join(sorted(names)) or f"{exc.title}.{field.lower()}"
            problems.append(f"{where}: {err['msg']} (got {redact(repr(err.get('input')))})")
        raise ConfigError("invalid Prefect setting: " + "; ".join(problems)) from None
