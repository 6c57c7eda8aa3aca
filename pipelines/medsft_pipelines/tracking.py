"""Sending a stage's numbers to an MLflow tracking server without ever waiting for it.

The numbers of record are the files in object storage (``metrics.jsonl``, reports, plots);
the tracker is a copy for people comparing generations. So a tracker that is down, slow or
refusing must never block or fail training:

* callers only append to a bounded buffer (``max_pending`` values; beyond it the oldest are
  dropped and counted), never touching the network;
* one daemon thread sends the buffer in batches (``log_batch``: up to 1,000 metrics a call),
  with the MLflow client's own HTTP timeout and retries set short, and backs off between
  failed rounds;
* :meth:`MLflowTracker.state` says whether tracking is degraded (the last send failed, or
  values were dropped), which the stage writes into ``progress.json`` for the operator to
  fold into a ``TrackingDegraded`` condition;
* :meth:`MLflowTracker.close` gives the thread a bounded time to send what is left.

Metric keys are prefixed by the stage (``sft.loss``, ``eval.accuracy.pubmedqa``), so the
stages of a generation can share one MLflow run. Never log sample text here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsft_pipelines.specs.jobconfig import RunInfo
from medsft_pipelines.specs.tracking import MLflowSpec

log = logging.getLogger(__name__)

#: The MLflow client retries a refused request 7 times with exponential backoff and waits
#: 120 s for an answer by default: minutes per call. The sender thread retries by itself.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
BATCH = 1000  # MLflow's limit of metrics per log_batch call
INTERVAL_ENV = "MEDSFT_TRACKING_INTERVAL_S"
TAG_PREFIX = "medsft."


def client_env() -> None:
    """Short HTTP timeouts and retries for the MLflow client, unless set explicitly."""
    for name, value in CLIENT_ENV.items():
        os.environ.setdefault(name, value)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def run_tags(run: RunInfo) -> dict[str, str]:
    """Tags that find a generation's run among all of an experiment's."""
    return {
        f"{TAG_PREFIX}run": run.name,
        f"{TAG_PREFIX}namespace": run.namespace,
        f"{TAG_PREFIX}generation": str(run.generation),
    }


def flat_numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``values`` (nested dicts joined with ``.``; bools, strings and
    None left out) as MLflow metric values."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, f"{name}."))
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[name] = float(value)
    return out


@dataclass(frozen=True)
class _Item:
    kind: str  # "metric", "param", "tag", "artifact"
    key: str
    value: Any
    step: int = 0
    timestamp_ms: int = 0


class MLflowTracker:
    """A non-blocking sender of one stage's metrics, params, tags and small artifacts."""

    def __init__(
        self,
        spec: MLflowSpec,
        run: RunInfo,
        stage: str,
        *,
        max_pending: int = 20_000,
        interval_s: float | None = None,
        backoff_s: float = 5.0,
        client_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self.spec = spec
        self.run = run
        self.stage = stage
        # How often the sender sends: a batch a few seconds is plenty for a person watching.
        self.interval_s = (
            interval_s if interval_s is not None else float(os.environ.get(INTERVAL_ENV, "5"))
        )
        self.backoff_s = backoff_s
        self._client_factory = client_factory or _mlflow_client
        self._pending: deque[_Item] = deque()
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._run_id = spec.run_id
        self._url: str | None = None
        self._dropped = 0
        self._sent = 0
        self._error: str | None = None
        self._failing = False
        if client_factory is None:
            _import_mlflow_client()
        self._thread = threading.Thread(target=self._loop, name="mlflow-tracker", daemon=True)
        self._thread.start()

    # -- what callers use: never blocks on the network -----------------------------------------

    def log_metrics(self, values: Mapping[str, Any], step: int = 0) -> None:
        """Queue the finite numbers of ``values`` as ``<stage>.<key>`` metrics at ``step``."""
        now = int(time.time() * 1000)
        numbers = flat_numbers(values, f"{self.stage}.")
        self._add([_Item("metric", k, v, step, now) for k, v in numbers.items()])

    def log_params(self, values: Mapping[str, Any]) -> None:
        """Queue parameters (MLflow keeps the first value of a key: log each once)."""
        self._add([_Item("param", k, str(v)[:6000]) for k, v in values.items() if v is not None])

    def set_tags(self, values: Mapping[str, Any]) -> None:
        self._add([_Item("tag", k, str(v)[:5000]) for k, v in values.items() if v is not None])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Queue a small local file (a plot) for upload into the run's artifacts."""
        self._add([_Item("artifact", str(path), folder or self.stage)])

    def _add(self, items: list[_Item]) -> None:
        if self._stop.is_set():
            return  # closed: nothing would send it
        with self._lock:
            self._pending.extend(items)
            while len(self._pending) > self._max_pending:
                self._pending.popleft()  # the oldest go first: the newest say most
                self._dropped += 1
        if len(self._pending) >= BATCH:
            self._wake.set()

    def state(self) -> dict[str, Any]:
        """For ``progress.json``: the run, whether tracking is degraded, and why."""
        with self._lock:
            degraded = self._failing or self._dropped > 0
            return {
                "runId": self._run_id,
                "url": self._url,
                "degraded": degraded,
                "error": self._error,
                "pending": len(self._pending),
                "dropped": self._dropped,
                "sent": self._sent,
            }

    def close(self, timeout_s: float = 15.0) -> dict[str, Any]:
        """Send what is left within ``timeout_s`` (never longer), stop; the final state."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        with self._lock:
            if self._thread.is_alive() or self._pending:
                # A server that went silent holds the sender in a request past the close's
                # budget: what is left never reaches MLflow (it is in storage), so say so.
                self._failing = True
                self._error = self._error or (
                    f"TimeoutError: {len(self._pending)} values not delivered within "
                    f"{timeout_s:g} s of the end"
                )
        return self.state()

    # -- the sender thread --------------------------------------------------------------------

    def _loop(self) -> None:
        client_env()
        client = None
        while True:
            stopping = self._stop.is_set()
            try:
                if client is None:
                    client = self._client_factory(self.spec.tracking_uri)
                if self._url is None:
                    self._open(client)
                while self._send(client):
                    pass
                with self._lock:
                    self._failing = False  # ``_error`` stays: the last trouble, for dropped
            except Exception as exc:  # any failure of the tracker: noted, never raised
                with self._lock:
                    self._failing = True
                    self._error = f"{type(exc).__name__}: {_short(exc)}"
                log.warning("tracking degraded (%s); training goes on", self._error)
                if stopping:
                    return
                self._wake.wait(self.backoff_s)
                self._wake.clear()
                continue
            if stopping:
                return
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def _open(self, client: Any) -> None:
        """Find the run to log into (the given one, else a new run of the stage's own)."""
        if self._run_id is None:
            experiment = client.get_experiment_by_name(self.spec.experiment_name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else client.create_experiment(self.spec.experiment_name)
            )
            created = client.create_run(
                experiment_id,
                tags={**run_tags(self.run), f"{TAG_PREFIX}stage": self.stage},
                run_name=f"{self.run.name}-{self.stage}-g{self.run.generation}",
            )
            info = created.info
        else:
            info = client.get_run(self._run_id).info
        with self._lock:
            self._run_id = info.run_id
            self._url = run_url(self.spec.tracking_uri, info.experiment_id, info.run_id)

    def _send(self, client: Any) -> bool:
        """Send one batch; True while more are waiting. On failure the batch stays queued."""
        from mlflow.entities import Metric, Param, RunTag

        with self._lock:
            batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
        if not batch:
            return False
        try:
            if batch[0].kind == "artifact":  # each file is its own upload
                batch = batch[:1]
                client.log_artifact(self._run_id, batch[0].key, batch[0].value)
            else:
                batch = _one_call(batch)
                metrics = [
                    Metric(i.key, i.value, i.timestamp_ms, i.step)
                    for i in batch
                    if i.kind == "metric"
                ]
                params = [Param(i.key, i.value) for i in batch if i.kind == "param"]
                tags = [RunTag(i.key, i.value) for i in batch if i.kind == "tag"]
                client.log_batch(self._run_id, metrics=metrics, params=params, tags=tags)
            rejected = False
        except Exception as exc:
            if not _rejected(exc):
                raise  # the server's trouble: the batch stays queued and is sent again
            # The server refused the batch itself (e.g. a param changing value): sending it
            # again would be refused again and hold every later value up. Dropped, counted.
            rejected = True
            with self._lock:
                self._error = f"{type(exc).__name__}: {_short(exc)}"
        with self._lock:
            # Only the sender removes items, from the left, and drops happen on the left too:
            # remove the sent ones that are still there.
            for item in batch:
                if self._pending and self._pending[0] is item:
                    self._pending.popleft()
            if rejected:
                self._dropped += len(batch)
            else:
                self._sent += len(batch)
            return bool(self._pending)


def _rejected(exc: BaseException) -> bool:
    """A client error (4xx but 429) from the server: the request, not the server, is wrong."""
    status = getattr(exc, "get_http_status_code", lambda: None)()
    return isinstance(status, int) and 400 <= status < 500 and status != 429


def _one_call(items: list[_Item]) -> list[_Item]:
    """The leading items one ``log_batch`` call takes: no artifact, at most 100 params and
    tags together (MLflow's limit; 1,000 entries in all, which ``BATCH`` keeps)."""
    named = 0
    for n, item in enumerate(items):
        if item.kind == "artifact":
            return items[:n]
        if item.kind != "metric":
            named += 1
            if named > 100:
                return items[:n]
    return items


def _short(exc: BaseException) -> str:
    """The first line of an exception, bounded (MLflow errors may carry a whole response)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]


def _import_mlflow_client() -> None:
    """Import the MLflow client in the calling thread, before the sender thread starts. A
    first import in the sender thread while the stage's own thread imports something else
    can deadlock on the module locks of the libraries both share: a curation merge, importing
    matplotlib for its report while the sender imported MLflow, failed with ``_DeadlockError``
    on ``html`` and then hung (seen in a `make test` run, where bytecode is written as
    modules are first imported, which makes first imports slower)."""
    import mlflow.entities
    import mlflow.tracking  # noqa: F401


def _mlflow_client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def open_tracker(
    spec: MLflowSpec | None,
    run: RunInfo,
    stage: str,
    recipe: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> MLflowTracker | None:
    """A tracker when the job config asks for one (else None), with the stage's input hash
    as a tag and, in a run of its own, its recipe (the spec's fields, flattened) as
    ``<stage>.``-prefixed params."""
    if spec is None:
        return None
    tracker = MLflowTracker(spec, run, stage, **kwargs)
    tracker.set_tags({f"{TAG_PREFIX}{stage}.inputHash": run.spec_hash or None})
    if recipe and spec.run_id is None:
        # A run of its own. (The generation's run holds the recipe already, as the control
        # plane logged it: a param cannot change value, and the pod's is the resolved one.)
        tracker.log_params(flat_params(recipe, f"{stage}."))
    return tracker


def flat_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"sft.training.learningRate": "0.001", ...}``: nested dicts joined with ``.``, lists
    as JSON (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif value is not None:
            out[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out
