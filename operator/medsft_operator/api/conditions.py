"""Kubernetes-convention conditions (as metav1.Condition), as pure functions.

The operator reads ``status.conditions`` into :class:`Condition` models, updates them
with :func:`set_condition` and writes them back; ``lastTransitionTime`` moves only when
a condition's status actually changes, so watchers can tell flapping from progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from medsft_operator.api.k8s import Condition

# Condition types used by the medsft kinds.
READY = "Ready"  # the resource's work is done and its outputs are usable
SUCCEEDED = "Succeeded"
FAILED = "Failed"
PROGRESSING = "Progressing"  # children exist and are working
INPUTS_READY = "InputsReady"  # Secrets, references and upstream datasets/models are there
PROMOTED = "Promoted"  # MedSFTRun: the current generation passed the promotion gate
# spec.tracking: True while the MLflow server cannot be reached (or sheds what it is sent);
# training goes on and the numbers stay in object storage either way.
TRACKING_DEGRADED = "TrackingDegraded"
# Kueue (stages with scheduling.queueName), folded from the workload's Kueue Workload:
QUEUED = "Queued"  # waiting for admission: reason WaitingForQuota / Inadmissible / ...
ADMITTED = "Admitted"  # admitted; the message names the ClusterQueue
EVICTED = "Evicted"  # taken back by Kueue (reason Preempted, ...); False once re-admitted
# The stage's pods cannot start, for a cause the cluster may still resolve (an image that
# cannot be pulled, no node fits, pods refused): True with the cause, False once it passed.
# kstatus' name (Flux, kpt, Argo CD's health read it as "failing, not progressing").
STALLED = "Stalled"

Status = Literal["True", "False", "Unknown"]


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of ``type_``, or None."""
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    """Whether the condition of ``type_`` exists and is True."""
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: Status,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    *,
    now: datetime | None = None,
) -> list[Condition]:
    """A new list with condition ``type_`` set (appended if absent, order kept otherwise).

    ``lastTransitionTime`` is kept when the status is unchanged (only reason, message or
    observedGeneration moved) and set to ``now`` when the status changes.
    """
    previous = get_condition(conditions, type_)
    if previous is not None and previous.status == status:
        transition = previous.last_transition_time
    else:
        transition = (now or datetime.now(UTC)).replace(microsecond=0)
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=transition,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type_ else c for c in conditions]


def remove_condition(conditions: Sequence[Condition], type_: str) -> list[Condition]:
    """A new list without the condition of ``type_``."""
    return [c for c in conditions if c.type != type_]
