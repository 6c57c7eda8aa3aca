"""A small stand-in for the Kubeflow training operator, for tests only.

Where a PyTorchJob must really run, tests use the real training operator on the
harness's node (tests/harness/node.py; tests/node/test_training_operator.py, and the whole
cluster path in tests/e2e/test_cluster_run.py and test_cluster_chaos.py).
This stand-in stays for the operator tests that must put a PyTorchJob into a state
of their choosing, at once and on cue (Failed, Restarting, Running held for as long
as the test needs, several at a time), which real pods cannot be steered into
without minutes of training each. It plays the real operator's part in the API:
it watches PyTorchJobs (by polling the real apiserver) and moves
``.status.conditions`` through Created -> Running -> Succeeded, with the same
condition types, reasons and replicaStatuses the real one writes, through the
status subresource. Tests steer it with annotations on the PyTorchJob:

``fake.medsft.io/outcome``  Succeeded (default) | Failed | Restarting | Running
    Restarting passes through Restarting -> Running -> Succeeded;
    Running stays Running until the annotation changes.
``fake.medsft.io/hold``     "true" freezes the job where it is.

``runPolicy.suspend`` is honoured as the real one does: a suspended job (Kueue has not
admitted it, or evicted it) gets ``Suspended=True`` with its pods gone and does not move;
when unsuspended it gets ``Suspended=False`` (reason ``PyTorchJobResumed``) and runs on.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from kubernetes import client

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
OUTCOME = "fake.medsft.io/outcome"
HOLD = "fake.medsft.io/hold"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": f"PyTorchJob{reason}",
        "message": message,
        "lastUpdateTime": _now(),
        "lastTransitionTime": _now(),
    }


def current_phase(status: dict[str, Any] | None) -> str | None:
    """The last condition that is True, as the training operator reports it."""
    for cond in reversed((status or {}).get("conditions") or []):
        if cond.get("status") == "True":
            return cond["type"]
    return None


def next_status(job: dict[str, Any]) -> dict[str, Any] | None:
    """The status the job moves to next, or None when it stays where it is."""
    meta = job["metadata"]
    annotations = meta.get("annotations") or {}
    if annotations.get(HOLD) == "true":
        return None
    outcome = annotations.get(OUTCOME, "Succeeded")
    status = dict(job.get("status") or {})
    conditions = [dict(c) for c in status.get("conditions") or []]
    phase = current_phase(status)
    name = meta["name"]
    replicas = job["spec"].get("pytorchReplicaSpecs", {})
    restarted = any(c["type"] == "Restarting" for c in conditions)

    def settle(kind: str, reason: str, message: str) -> dict[str, Any]:
        for c in conditions:
            if c["type"] in ("Running", "Restarting") and c["status"] == "True":
                c["status"] = "False"
        conditions.append(_condition(kind, reason, message))
        return {**status, "conditions": conditions}

    suspended = bool(job["spec"].get("runPolicy", {}).get("suspend"))
    if phase in ("Succeeded", "Failed"):
        return None  # final
    if suspended and phase is not None and phase != "Suspended":
        # The training operator deletes the pods and records the suspension (the latest
        # condition of a type replaces the earlier one, at the end of the list).
        kept = [c for c in conditions if c["type"] != "Suspended"]
        for c in kept:
            if c["type"] in ("Running", "Restarting") and c["status"] == "True":
                c["status"] = "False"
        kept.append(_condition("Suspended", "Suspended", f"PyTorchJob {name} is suspended."))
        # Written as a merge patch: an explicit 0, not an absent key, clears "active".
        return {
            **status,
            "conditions": kept,
            "replicaStatuses": {r: {"active": 0} for r in replicas},
        }
    if phase == "Suspended":
        if suspended:
            return None
        kept = [c for c in conditions if c["type"] != "Suspended"]
        resumed = _condition("Suspended", "Resumed", f"PyTorchJob {name} is resumed.")
        kept.append({**resumed, "status": "False"})
        return {**status, "conditions": kept}
    if phase is None:
        return {
            "conditions": [_condition("Created", "Created", f"PyTorchJob {name} is created.")],
            "replicaStatuses": {r: {} for r in replicas},
        }
    if phase in ("Created", "Restarting"):
        new = settle("Running", "Running", f"PyTorchJob {name} is running.")
        new.setdefault("startTime", _now())
        new["replicaStatuses"] = {
            r: {"active": spec.get("replicas", 1)} for r, spec in replicas.items()
        }
        return new
    if phase == "Running":
        if outcome == "Running":
            return None
        if outcome == "Restarting" and not restarted:
            return settle("Restarting", "Restarting", f"PyTorchJob {name} is restarting.")
        if outcome == "Failed":
            new = settle(
                "Failed", "Failed", f"PyTorchJob {name} has failed because a replica failed."
            )
            new["replicaStatuses"] = {r: {"failed": 1} for r in replicas}
        else:
            new = settle("Succeeded", "Succeeded", f"PyTorchJob {name} is successfully completed.")
            new["replicaStatuses"] = {
                r: {"succeeded": spec.get("replicas", 1)} for r, spec in replicas.items()
            }
        new["completionTime"] = _now()
        return new
    return None  # Succeeded / Failed are final


class FakeTrainingOperator:
    def __init__(self, api_client: client.ApiClient, interval: float = 0.2) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.interval = interval
        self.transitions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="fake-training-operator", daemon=True
        )

    def start(self) -> FakeTrainingOperator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def reconcile_once(self) -> int:
        moved = 0
        jobs = self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        for job in jobs:
            new = next_status(job)
            if new is None:
                continue
            meta = job["metadata"]
            try:
                self.api.patch_namespaced_custom_object_status(
                    GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": new}
                )
                moved += 1
            except client.ApiException as exc:
                if exc.status != 404:  # deleted meanwhile: fine
                    raise
        self.transitions += moved
        return moved

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # keep playing the operator through apiserver hiccups
                time.sleep(self.interval)
            self._stop.wait(self.interval)
