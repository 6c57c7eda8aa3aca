"""Start and stop the real server processes the tests run against.

Every process is started in its own session and recorded, so that a finalizer
(also on test failure, and at interpreter exit as a last resort) stops all of them.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

_live: set[subprocess.Popen] = set()


PORTS_PER_WORKER = 4000
FIRST_WORKER_PORT = 16000  # below Linux's ephemeral range (32768-60999), where bind(0) draws


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now. Under pytest-xdist each worker draws from a range of
    its own: with bind(0), two workers could be handed the same port between one's check
    and its server's start."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    if not worker.startswith("gw"):
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    first = FIRST_WORKER_PORT + int(worker[2:]) * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = first + next(_draws) % PORTS_PER_WORKER
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind((host, port))
            return port
    raise RuntimeError(f"no free port in {first}-{first + PORTS_PER_WORKER - 1}")


# Ports are handed out in turn from a random start, so a port is reused only after the
# whole range: a server that released it long ago, not one still shutting down.
_draws = itertools.count(random.randrange(PORTS_PER_WORKER))


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = log.open("ab")
    proc = subprocess.Popen(
        [str(a) for a in args],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    out.close()
    _live.add(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    _live.discard(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_live):
        stop(proc, timeout=5)


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until true; fail early (with the log tail) if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s:\n{tail(log)}")


def wait_http(
    url: str, *, what: str, proc: subprocess.Popen, log: Path, timeout: float = 120
) -> None:
    """Wait until ``url`` answers 200 (a server's health endpoint), failing early if ``proc``
    died."""
    wait_until(
        lambda: urllib.request.urlopen(url, timeout=1).status == 200,
        timeout=timeout,
        what=what,
        proc=proc,
        log=log,
    )


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
