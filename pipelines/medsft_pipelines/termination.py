"""Why a stage's process failed, in one line Kubernetes keeps after the pod is gone.

Kubernetes mounts ``/dev/termination-log`` in every container and copies what the process
wrote there into the pod's status (``state.terminated.message``, at most 4 KiB). A training
run that dies of a MinIO outage and one that dies of a bad shard both end as "1 Master
replica(s) failed" in the PyTorchJob; the operator reads this line instead and names the
cause in the stage's condition (``medsft_operator.diagnose.failure_cause``).

The line is ``Reason: message``: ``Reason`` a condition reason (CamelCase, the exception's
class for storage errors, e.g. ``StorageUnavailable``), ``message`` the exception's text,
which names keys, URIs and settings, never row content or credentials (storage errors are
redacted where they are raised).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from medsft_pipelines.storage.errors import StorageError

TERMINATION_LOG = Path("/dev/termination-log")
ENV_TERMINATION_LOG = "MEDSFT_TERMINATION_LOG"
"""Where to write instead (tests, or a runtime that mounts the file elsewhere)."""
MAX_BYTES = 4096  # what the kubelet keeps of the file
_LINE = re.compile(r"^(?P<reason>[A-Z][A-Za-z0-9]*): (?P<message>.+)$", re.DOTALL)


def failure_reason(exc: BaseException) -> str:
    """The condition reason for ``exc``: the class name of storage errors (they are named for
    conditions: StorageUnavailable, ShardIntegrityError...), InvalidInput for a ValueError
    (bad configuration or data), else the exception's class name."""
    if isinstance(exc, StorageError):
        return type(exc).__name__
    if isinstance(exc, ValueError):
        return "InvalidInput"
    return type(exc).__name__


def termination_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    line = f"{failure_reason(exc)}: {text}"
    return line.encode()[:MAX_BYTES].decode(errors="ignore")


def parse_termination_line(text: str) -> tuple[str, str] | None:
    """``(reason, message)`` of a line written by :func:`record_failure`, else None (the
    kubelet's fallback, the log's tail, or nothing)."""
    match = _LINE.match(text.strip())
    return (match["reason"], match["message"]) if match else None


def record_failure(exc: BaseException, environ: Mapping[str, str] | None = None) -> None:
    """Write ``exc``'s line where Kubernetes reads it; nothing outside a container (no
    ``/dev/termination-log``) unless MEDSFT_TERMINATION_LOG names a file."""
    env = os.environ if environ is None else environ
    if named := env.get(ENV_TERMINATION_LOG):
        path = Path(named)
    elif TERMINATION_LOG.exists():
        path = TERMINATION_LOG
    else:
        return  # a local run: no container, nobody reads it
    # The failure itself is what matters: it is in the log either way.
    with contextlib.suppress(OSError):
        path.write_text(termination_line(exc))


@contextmanager
def reports_failure() -> Iterator[None]:
    """Run a stage's body; an exception that ends it leaves its line, then propagates."""
    try:
        yield
    except Exception as exc:
        record_failure(exc)
        raise
