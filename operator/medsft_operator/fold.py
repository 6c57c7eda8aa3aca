"""Pure functions that turn what the operator observes into status.

Children's Kubernetes status (batch Job and PyTorchJob conditions), the jobs' progress and
metrics in storage, manifests and summaries are *folded* into the medsft status models;
phases and conditions move together; transitions become Events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from medsft_operator.api import conditions as cond
from medsft_operator.api.k8s import Phase, QueueStatus, StatusBase
from medsft_operator.api.status import (
    BenchmarkResult,
    CurationJobStatus,
    EvalJobStatus,
    SFTJobStatus,
)
from medsft_operator.artifacts import ManifestView

StatusT = TypeVar("StatusT", bound=StatusBase)
EventType = Literal["Normal", "Warning"]
TERMINAL: tuple[Phase, ...] = ("Succeeded", "Failed")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# ---------------------------------------------------------------------- children's state


@dataclass(frozen=True)
class ChildState:
    """Where a child (batch Job or PyTorchJob) stands, in medsft's terms."""

    phase: Phase
    reason: str
    message: str = ""
    restarted: bool = False


def job_state(job: Mapping[str, Any]) -> ChildState:
    """State of a batch/v1 Job from its conditions (Complete / Failed / Suspended...)."""
    status = job.get("status") or {}
    true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    for kind in ("Failed", "FailureTarget"):
        if kind in true:
            c = true[kind]
            return ChildState("Failed", c.get("reason") or "JobFailed", c.get("message") or "")
    if "Complete" in true:
        return ChildState("Succeeded", "JobComplete", "")
    if "Suspended" in true or (job.get("spec") or {}).get("suspend"):
        return ChildState("Pending", "Queued", "waiting for admission (suspended)")
    if status.get("active") or status.get("ready") or status.get("startTime"):
        return ChildState("Running", "Running", "")
    return ChildState("Pending", "Starting", "pods not started yet")


PYTORCHJOB_PHASES: dict[str, Phase] = {
    "Created": "Pending",
    "Suspended": "Pending",
    "Running": "Running",
    "Restarting": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
}


def pytorchjob_state(job: Mapping[str, Any]) -> ChildState:
    """State of a kubeflow.org/v1 PyTorchJob: its last condition that is True."""
    conditions = (job.get("status") or {}).get("conditions") or []
    restarted = any(c.get("type") == "Restarting" for c in conditions)
    for c in reversed(conditions):
        if c.get("status") == "True" and c.get("type") in PYTORCHJOB_PHASES:
            return ChildState(
                PYTORCHJOB_PHASES[c["type"]],
                c.get("reason") or f"PyTorchJob{c['type']}",
                c.get("message") or "",
                restarted,
            )
    return ChildState("Pending", "Submitted", "waiting for the training operator", restarted)


def trainjob_state(job: Mapping[str, Any]) -> ChildState:
    """State of a trainer.kubeflow.org/v1alpha1 TrainJob: its Complete / Failed /
    Suspended conditions, else whether its JobSet's Jobs have pods active."""
    status = job.get("status") or {}
    true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Failed" in true:
        c = true["Failed"]
        return ChildState("Failed", c.get("reason") or "TrainJobFailed", c.get("message") or "")
    if "Complete" in true:
        c = true["Complete"]
        return ChildState("Succeeded", c.get("reason") or "TrainJobComplete", "")
    if "Suspended" in true or (job.get("spec") or {}).get("suspend"):
        return ChildState("Pending", "Suspended", "waiting for admission (suspended)")
    jobs = status.get("jobsStatus") or []
    if any((j.get("active") or 0) + (j.get("ready") or 0) > 0 for j in jobs):
        return ChildState("Running", "Running", "")
    return ChildState("Pending", "Submitted", "waiting for Kubeflow Trainer to start the JobSet")


#: How long after its deletion deadline a pod still counts as running. A kubelet that is up
#: ends a deleted pod within its grace period; one still there well after it sits on a node
#: that does not answer (it stays Terminating until the node returns or is removed), and
#: waiting for it would strand the run.
LOST_POD_AFTER_S = 300


def live_pods(pods: Sequence[Mapping[str, Any]], at: datetime) -> list[str]:
    """Names of the pods that still run or may (not terminated, not lost on a dead node)."""
    live = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        # The apiserver sets deletionTimestamp to when the grace period ends.
        deadline = meta.get("deletionTimestamp")
        if deadline:
            past = at - datetime.fromisoformat(deadline.replace("Z", "+00:00"))
            if past.total_seconds() > LOST_POD_AFTER_S:
                continue
        live.append(str(meta.get("name")))
    return live


# ------------------------------------------------------------------------------ Kueue


@dataclass(frozen=True)
class QueueState:
    """Where Kueue has a workload: waiting (why), admitted (where), evicted (why)."""

    waiting: bool
    reason: str
    message: str
    workload: str | None = None
    cluster_queue: str | None = None
    evicted: tuple[str, str] | None = None
    """(reason, message) of the eviction that still stands (until re-admission)."""
    readmitted: str | None = None
    """Message of the eviction that re-admission ended (Kueue's "Previously: ...")."""
    evictions: int = 0
    ended: tuple[str, str] | None = None
    """(reason, message) when Kueue will never admit the workload again (deactivated): the
    job stays suspended for good, so waiting is pointless; the stage ends this attempt."""


# Kueue's QuotaReserved=False reasons, in medsft's words (others are passed through).
QUEUE_REASONS = {"Pending": "WaitingForQuota", "Inadmissible": "Inadmissible"}
QUEUE_MESSAGE_MAX = 1024  # Kueue's messages go into status.message (at most 4096)


def _short(text: str) -> str:
    return text if len(text) <= QUEUE_MESSAGE_MAX else text[: QUEUE_MESSAGE_MAX - 3] + "..."


def workload_state(workload: Mapping[str, Any] | None, local_queue: str) -> QueueState:
    """Fold a kueue.x-k8s.io Workload (None: Kueue has not made one yet) into a QueueState."""
    return _bounded(_workload_state(workload, local_queue))


def _workload_state(workload: Mapping[str, Any] | None, local_queue: str) -> QueueState:
    if workload is None:
        return QueueState(
            True,
            "WaitingForWorkload",
            f"waiting for Kueue to create the workload (LocalQueue {local_queue})",
        )
    name = workload["metadata"]["name"]
    status = workload.get("status") or {}
    conds = {c["type"]: c for c in status.get("conditions") or []}

    def true(kind: str) -> Mapping[str, Any] | None:
        c = conds.get(kind)
        return c if c is not None and c.get("status") == "True" else None

    evictions = sum(
        int(e.get("count") or 0)
        for e in (status.get("schedulingStats") or {}).get("evictions") or []
    )
    evicted = None
    if (c := true("Evicted")) is not None:
        reason, message = c.get("reason") or "Evicted", c.get("message") or ""
        if (p := true("Preempted")) is not None:
            message = f"{p.get('reason') or 'Preempted'}: {p.get('message') or message}"
        evicted = (reason, message)
    readmitted = None
    if evicted is None and (c := conds.get("Evicted")) is not None:
        readmitted = c.get("message") or "evicted earlier"
    admission = status.get("admission") or {}
    common: dict[str, Any] = {
        "workload": name,
        "evicted": evicted,
        "readmitted": readmitted,
        "evictions": evictions,
    }
    if (c := true("Finished")) is not None:
        reason = c.get("reason") or "Finished"
        if reason != "Succeeded":
            # Kueue finished it as failed (e.g. a rejected admission check) while its job,
            # not terminal yet (terminal children are never looked up), stays suspended.
            message = f"Kueue finished workload {name} ({reason}): {c.get('message') or ''}"
            return QueueState(True, reason, message, ended=(reason, message), **common)
        return QueueState(False, "Finished", "the workload finished", **common)
    if (ended := _deactivated(workload, evicted)) is not None:
        reason, message = ended
        message = f"Kueue deactivated workload {name} ({reason}): {message}"
        return QueueState(True, reason, message, ended=(reason, message), **common)
    if true("Admitted") is not None and evicted is None:
        queue = admission.get("clusterQueue")
        return QueueState(
            False, "Admitted", f"admitted by ClusterQueue {queue}", cluster_queue=queue, **common
        )
    if evicted is not None:
        reason, message = evicted
        return QueueState(True, reason, f"evicted by Kueue ({reason}): {message}", **common)
    reserved = conds.get("QuotaReserved")
    if reserved is not None and reserved.get("status") == "True":
        return QueueState(
            True,
            "AdmissionChecksPending",
            f"quota reserved, waiting for admission checks: {reserved.get('message') or ''}",
            **common,
        )
    if reserved is not None:
        kueue_reason = reserved.get("reason") or "Pending"
        return QueueState(
            True,
            QUEUE_REASONS.get(kueue_reason, kueue_reason),
            reserved.get("message") or "waiting for quota",
            **common,
        )
    return QueueState(True, "WaitingForQuota", f"waiting in LocalQueue {local_queue}", **common)


def _deactivated(
    workload: Mapping[str, Any], evicted: tuple[str, str] | None
) -> tuple[str, str] | None:
    """(Kueue's reason, message) when the workload is deactivated (``spec.active: false``,
    set by an admin or by waitForPodsReady's requeuing limit): Kueue never re-queues it, so
    its job stays suspended for good. None for a workload Kueue may still admit."""
    if (workload.get("spec") or {}).get("active") is not False:
        return None
    if evicted is not None:
        return evicted
    return "Deactivated", "spec.active is false: Kueue will not admit it again"


def _bounded(state: QueueState) -> QueueState:
    evicted = state.evicted and (state.evicted[0], _short(state.evicted[1]))
    readmitted = state.readmitted and _short(state.readmitted)
    ended = state.ended and (state.ended[0], _short(state.ended[1]))
    return replace(
        state,
        message=_short(state.message),
        evicted=evicted,
        readmitted=readmitted,
        ended=ended,
    )


def apply_queue(
    status: StatusT, queue: QueueState, local_queue: str, generation: int | None
) -> StatusT:
    """``status`` with the Queued / Admitted / Evicted conditions and ``queue`` from Kueue."""
    conditions = cond.set_condition(
        status.conditions,
        cond.QUEUED,
        "True" if queue.waiting else "False",
        queue.reason,
        queue.message,
        generation,
    )
    admitted = not queue.waiting and queue.reason == "Admitted"
    if admitted or cond.get_condition(conditions, cond.ADMITTED) is not None or queue.waiting:
        conditions = cond.set_condition(
            conditions,
            cond.ADMITTED,
            "True" if admitted else "False",
            "Admitted" if admitted else queue.reason,
            queue.message,
            generation,
        )
    if queue.evicted is not None:
        reason, message = queue.evicted
        conditions = cond.set_condition(
            conditions, cond.EVICTED, "True", reason, message, generation
        )
    elif queue.readmitted is not None or cond.get_condition(conditions, cond.EVICTED):
        conditions = cond.set_condition(
            conditions,
            cond.EVICTED,
            "False",
            "Readmitted",
            queue.readmitted or "re-admitted",
            generation,
        )
    previous = status.queue
    queue_status = QueueStatus(
        local_queue=local_queue,
        workload=queue.workload or (previous.workload if previous else None),
        cluster_queue=queue.cluster_queue,
        evictions=max(queue.evictions, previous.evictions if previous else 0),
    )
    return status.model_copy(update={"conditions": conditions, "queue": queue_status})


UNOBSERVED: tuple[Any, ...] = ("",)


def observed_state(child: Mapping[str, Any]) -> tuple[Any, ...]:
    """What an owner reads from its child; an event that leaves this unchanged needs no
    reconcile of the owner. ``UNOBSERVED`` for a child nothing has reported on yet."""
    status = child.get("status") or {}
    if not status:
        return UNOBSERVED
    if child.get("kind") == "Job":
        state = job_state(child)
        return ("Job", state.phase, state.reason, status.get("succeeded"), status.get("failed"))
    spec = child.get("spec") or {}
    if child.get("kind") == "PyTorchJob":
        state = pytorchjob_state(child)
        # Kueue admits and evicts by flipping ``suspend``: the owner's Queued status follows.
        suspended = bool((spec.get("runPolicy") or {}).get("suspend"))
        return ("PyTorchJob", state.phase, state.reason, state.restarted, suspended)
    if child.get("kind") == "TrainJob":
        state = trainjob_state(child)
        return ("TrainJob", state.phase, state.reason, bool(spec.get("suspend")))
    return (child.get("kind"), status.get("phase"), status.get("progress"), status.get("message"))


# ---------------------------------------------------------------- phases and conditions


def apply_phase(
    status: StatusT,
    phase: Phase,
    reason: str,
    message: str,
    generation: int | None,
) -> StatusT:
    """``status`` with ``phase``, its message and the Ready/Progressing/Succeeded/Failed
    conditions set consistently (timestamps move only on real transitions)."""
    conditions = list(status.conditions)
    running = phase in ("Pending", "Queued", "Running")
    ready_reason = reason if phase != "Succeeded" else "Succeeded"
    for type_, true, why in (
        (cond.READY, phase == "Succeeded", ready_reason),
        (cond.PROGRESSING, running, reason),
        (cond.SUCCEEDED, phase == "Succeeded", reason),
        (cond.FAILED, phase == "Failed", reason),
    ):
        conditions = cond.set_condition(
            conditions, type_, "True" if true else "False", why, message, generation
        )
    update: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "conditions": conditions,
        "observed_generation": generation,
    }
    if phase == "Running" and status.start_time is None:
        update["start_time"] = now()
    if phase in TERMINAL and status.completion_time is None:
        update["completion_time"] = now()
    return status.model_copy(update=update)


def apply_inputs(
    status: StatusT, ready: bool, reason: str, message: str, generation: int | None
) -> StatusT:
    conditions = cond.set_condition(
        status.conditions,
        cond.INPUTS_READY,
        "True" if ready else "False",
        reason,
        message,
        generation,
    )
    return status.model_copy(update={"conditions": conditions})


def apply_stalled(
    status: StatusT, stalled: tuple[str, str] | None, generation: int | None
) -> StatusT:
    """``status`` with the Stalled condition: True with (reason, message) while its pods
    cannot start (:mod:`medsft_operator.diagnose`), False once that passed; absent if never."""
    if stalled is None:
        previous = cond.get_condition(status.conditions, cond.STALLED)
        if previous is None or previous.status == "False":
            return status
        reason, message = "Resolved", f"resolved: {previous.message}"[:QUEUE_MESSAGE_MAX]
        conditions = cond.set_condition(
            status.conditions, cond.STALLED, "False", reason, message, generation
        )
    else:
        reason, message = stalled
        conditions = cond.set_condition(
            status.conditions, cond.STALLED, "True", reason, message, generation
        )
    return status.model_copy(update={"conditions": conditions})


def stalled_of(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of a (wire-format) status whose Stalled condition is True."""
    for c in status.get("conditions") or []:
        if c.get("type") == cond.STALLED and c.get("status") == "True":
            return str(c.get("reason") or "Stalled"), str(c.get("message") or "")
    return None


def transition_events(old: StatusBase, new: StatusBase) -> list[tuple[EventType, str, str]]:
    """Events for what changed between two statuses: the phase, and any other condition
    that turned False (a problem) or back to True (recovered from one). A condition that
    starts out True is no news."""
    events: list[tuple[EventType, str, str]] = []
    # The first phase is where a resource starts (its children's "Created" events say more),
    # not a transition — unless it starts out Failed.
    first = old.phase is None and new.phase != "Failed"
    if new.phase != old.phase and new.phase is not None and not first:
        kind: EventType = "Warning" if new.phase == "Failed" else "Normal"
        reason = new.phase if new.phase != "Failed" else _reason(new, cond.FAILED) or "Failed"
        events.append((kind, reason, new.message or new.phase))
    for c in new.conditions:
        if c.type in (cond.READY, cond.PROGRESSING, cond.SUCCEEDED, cond.FAILED, cond.QUEUED):
            continue  # these follow the phase, already announced
        if c.type == cond.ADMITTED and c.status != "True":
            continue  # not admitted (yet, or any more): the Queued phase says so
        before = cond.get_condition(old.conditions, c.type)
        abnormal_true = c.type in (cond.EVICTED, cond.STALLED)  # True is the problem
        if before is None and c.status == "True" and not abnormal_true:
            continue
        if before is None or before.status != c.status or before.reason != c.reason:
            bad = "True" if abnormal_true else "False"
            kind = "Warning" if c.status == bad else "Normal"
            events.append((kind, c.reason, c.message or f"{c.type} is {c.status}"))
    return events


def _reason(status: StatusBase, type_: str) -> str | None:
    c = cond.get_condition(status.conditions, type_)
    return c.reason if c else None


# -------------------------------------------------------------------------- progress


def fold_tracking(
    status: StatusT, progress: Mapping[str, Any] | None, gen: int | None = None
) -> StatusT:
    """The stage's MLflow run (``status.trackingUrl``) and ``TrackingDegraded`` from the
    ``tracking`` the stage writes into ``progress.json`` (its pods have no Kubernetes API
    access). The message names the exception type only: a client's message may quote the
    server's URL, credentials included when someone put them there."""
    tracking = (progress or {}).get("tracking")
    if not isinstance(tracking, Mapping):
        return status
    update: dict[str, Any] = {}
    if isinstance(tracking.get("url"), str):
        update["tracking_url"] = tracking["url"][:2048]
    if tracking.get("degraded"):
        error = str(tracking.get("error") or "").split(":", 1)[0][:128] or "values dropped"
        message = (
            f"the MLflow server did not take what the stage sent ({error}); "
            f"{int(tracking.get('pending') or 0)} values waiting, "
            f"{int(tracking.get('dropped') or 0)} dropped; the stage goes on and its numbers "
            "are in storage"
        )
        update["conditions"] = cond.set_condition(
            status.conditions, cond.TRACKING_DEGRADED, "True", "TrackerUnreachable", message, gen
        )
    elif cond.get_condition(status.conditions, cond.TRACKING_DEGRADED) is not None:
        update["conditions"] = cond.set_condition(
            status.conditions, cond.TRACKING_DEGRADED, "False", "Sending", "", gen
        )
    return status.model_copy(update=update)


def progress_text(progress: Mapping[str, Any] | None) -> str | None:
    """``1200/3000`` (or ``1200``) for ``kubectl get``; None without progress."""
    if not progress or progress.get("step") is None:
        return None
    step, total = int(progress["step"]), progress.get("total")
    return f"{step}/{int(total)}" if total else str(step)


def _count(mapping: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int | float):
            return int(value)
    return None


def fold_curation_counts(status: CurationJobStatus, counts: Mapping[str, Any]) -> CurationJobStatus:
    """Curation counters from progress counts or the manifest's ``counts`` (``read/<src>``,
    ``traces/<src>/<task>/generated|accepted``, ``removed/<reason>/<src>``)."""
    update: dict[str, Any] = {}
    read = sum(int(v) for k, v in counts.items() if k.startswith("read/"))
    rows_read = _count(counts, "rows_read") or read
    if rows_read:
        update["input_rows"] = rows_read
    generated = sum(
        int(v) for k, v in counts.items() if k.startswith("traces/") and k.endswith("/generated")
    )
    accepted = sum(
        int(v) for k, v in counts.items() if k.startswith("traces/") and k.endswith("/accepted")
    )
    if generated:
        update["traces_generated"] = generated
    if accepted:
        update["traces_accepted"] = accepted
    for stat in ("attempts", "cache_hits", "cache_misses"):
        # ``teacher/<model>/<stat>`` in a manifest, ``teacher_<stat>`` in a worker's progress
        total = sum(
            int(v) for k, v in counts.items() if k.startswith("teacher/") and k.endswith(f"/{stat}")
        )
        total = total or _count(counts, f"teacher_{stat}") or 0
        if total:
            update[f"teacher_{stat}"] = total
    removed: dict[str, int] = {}
    for k, v in counts.items():
        parts = k.split("/")
        if parts[0] == "removed" and len(parts) >= 2:
            removed[parts[1]] = removed.get(parts[1], 0) + int(v)
    if removed:
        update["removed"] = dict(sorted(removed.items())[:64])
    return status.model_copy(update=update)


def fold_manifest(
    status: CurationJobStatus, manifest: ManifestView, report: Mapping[str, Any] | None
) -> CurationJobStatus:
    """Final dataset facts: samples, shards, tokens, and the report's unique counts."""
    status = fold_curation_counts(status, manifest.extra.get("counts") or {})
    tokens = manifest.extra.get("token_stats") or {}
    update: dict[str, Any] = {"kept_samples": manifest.num_rows, "shards": len(manifest.shards)}
    if _count(tokens, "total_tokens") is not None:
        update["total_tokens"] = _count(tokens, "total_tokens")
    if _count(tokens, "response_tokens") is not None:
        update["response_tokens"] = _count(tokens, "response_tokens")
    totals = (report or {}).get("totals") or {}
    if _count(totals, "unique_questions") is not None:
        update["questions"] = _count(totals, "unique_questions")
    if _count(totals, "unique_images") is not None:
        update["images"] = _count(totals, "unique_images")
    return status.model_copy(update=update)


def fold_sft_progress(
    status: SFTJobStatus, progress: Mapping[str, Any] | None, last_metrics: Mapping[str, Any] | None
) -> SFTJobStatus:
    """Step, epoch and loss from ``progress.json``; learning rate and throughput from the
    newest metrics record."""
    update: dict[str, Any] = {}
    if progress:
        if progress.get("step") is not None:
            update["step"] = int(progress["step"])
        if progress.get("total") is not None:
            update["total_steps"] = int(progress["total"])
        for key, field in (("epoch", "epoch"), ("loss", "loss")):
            if isinstance(progress.get(key), int | float):
                update[field] = float(progress[key])
        update["progress"] = progress_text(progress)
    if last_metrics:
        for keys, field in (
            (("lr", "learning_rate"), "learning_rate"),
            (("tokens_per_s", "tokens_per_second"), "tokens_per_second"),
        ):
            for key in keys:
                if isinstance(last_metrics.get(key), int | float):
                    update[field] = float(last_metrics[key])
                    break
        if "loss" not in update and isinstance(last_metrics.get("loss"), int | float):
            update["loss"] = float(last_metrics["loss"])
    return status.model_copy(update={k: v for k, v in update.items() if v is not None})


def fold_eval_summary(status: EvalJobStatus, summary: Mapping[str, Any]) -> EvalJobStatus:
    """The eval harness's ``summary.json`` (already in status shape) into the status; the
    group means are recomputed from the results when the summary lacks them."""
    results = [BenchmarkResult.model_validate(r) for r in summary.get("results") or []][:64]
    update: dict[str, Any] = {"results": results}
    for key, field in (
        ("meanAccuracy", "mean_accuracy"),
        ("meanAccuracyIn", "mean_accuracy_in"),
        ("meanAccuracyOut", "mean_accuracy_out"),
        ("meanAccuracyText", "mean_accuracy_text"),
        ("meanAccuracyMultimodalReasoning", "mean_accuracy_multimodal"),
        ("meanAccuracyClassification", "mean_accuracy_classification"),
        ("reportUri", "report_uri"),
    ):
        if summary.get(key) is not None:
            update[field] = summary[key]
    if "mean_accuracy" not in update and results:
        update["mean_accuracy"] = sum(r.accuracy for r in results) / len(results)
    for dist, field in (("in", "mean_accuracy_in"), ("out", "mean_accuracy_out")):
        chosen = [r.accuracy for r in results if r.distribution == dist]
        if field not in update and chosen:
            update[field] = sum(chosen) / len(chosen)
    if update.get("mean_accuracy") is not None:
        update["progress"] = f"{100 * update['mean_accuracy']:.1f}%"
    return status.model_copy(update=update)


def scores_of(status: EvalJobStatus) -> dict[str, float]:
    """Accuracy per benchmark plus the means (``kinds.MEAN_METRICS``: all, in, out, and the
    paper's groups text, multimodal, classification), the names promotion thresholds use."""
    scores = {r.name: r.accuracy for r in status.results}
    for key, value in (
        ("mean", status.mean_accuracy),
        ("mean.in", status.mean_accuracy_in),
        ("mean.out", status.mean_accuracy_out),
        ("mean.text", status.mean_accuracy_text),
        ("mean.multimodal", status.mean_accuracy_multimodal),
        ("mean.classification", status.mean_accuracy_classification),
    ):
        if value is not None:
            scores[key] = value
    return scores


def baseline_mean(status: EvalJobStatus) -> float | None:
    values = [r.baseline_accuracy for r in status.results if r.baseline_accuracy is not None]
    return sum(values) / len(values) if values else None
