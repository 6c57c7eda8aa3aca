"""Prometheus metrics of the operator (served on ``/metrics``)."""

from __future__ import annotations

from contextvars import ContextVar

from prometheus_client import Counter, Gauge, Histogram

#: What started the work in progress: "event" (a watch event or kopf handler) or "poll".
TRIGGER: ContextVar[str] = ContextVar("medsft_trigger", default="other")

RECONCILES = Counter(
    "medsft_reconciles_total",
    "Reconciliations, by kind, result and trigger (event or poll)",
    ["kind", "result", "trigger"],
)
RECONCILE_ERRORS = Counter(
    "medsft_reconcile_errors_total",
    "Reconciliations that raised, by kind and error type",
    ["kind", "error"],
)
RECONCILE_DURATION = Histogram(
    "medsft_reconcile_duration_seconds",
    "Duration of one reconciliation",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RESOURCES_BY_PHASE = Gauge(
    "medsft_resources",
    "medsft resources served by this operator, by kind and phase",
    ["kind", "phase"],
)
CHILDREN_CREATED = Counter(
    "medsft_children_created_total", "Objects the operator created, by kind", ["kind"]
)
API_REQUESTS = Counter(
    "medsft_api_requests_total",
    "Kubernetes API requests made by the reconcilers, by verb, resource and trigger",
    ["verb", "resource", "trigger"],
)
STORAGE_READS = Counter(
    "medsft_storage_reads_total",
    "Object-storage reads (progress, manifests, summaries)",
    ["result"],
)
LEADER = Gauge("medsft_leader", "1 while this replica holds the leader Lease")


class PhaseTracker:
    """Keeps ``medsft_resources{kind,phase}`` equal to the phases last seen per object."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str, str], str] = {}

    def set(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        key = (kind, namespace, name)
        old = self._phases.get(key)
        new = phase or "Pending"
        if old == new:
            return
        if old is not None:
            RESOURCES_BY_PHASE.labels(kind=kind, phase=old).dec()
        RESOURCES_BY_PHASE.labels(kind=kind, phase=new).inc()
        self._phases[key] = new

    def forget(self, kind: str, namespace: str, name: str) -> None:
        old = self._phases.pop((kind, namespace, name), None)
        if old is not None:
            RESOURCES_BY_PHASE.labels(kind=kind, phase=old).dec()
