"""Why a stage's pods do not start: what only the cluster knows, as pure functions.

A Job or PyTorchJob whose pods cannot start looks, from its own status, like one that is
about to: ``active: 1`` and nothing else. The reasons are on its pods (the kubelet's image
pull, the scheduler's verdict) and in the Events its controller posts when the apiserver
refuses a pod (``FailedCreate`` from the Job controller, ``FailedCreatePod`` from the
Kubeflow training operator). :func:`diagnose` reads them and returns one
:class:`Blocked` naming the cause, or None.

Per cause, whether it ends the stage (docs/troubleshooting.md says the same to users):

* ``InvalidImageName``: terminal at once. The kubelet never retries a reference it cannot
  parse, and a stage's image cannot change under it.
* a pod template the apiserver finds invalid (``FailedCreate`` … ``is invalid``): terminal
  at once; every retry of the same template is refused the same way.
* ``ErrImagePull`` / ``ImagePullBackOff`` / ``ErrImageNeverPull``: reported, not terminal.
  The kubelet keeps retrying (10 s, 20 s, 40 s … up to 5 min apart), so pushing the tag,
  adding the pull Secret or the registry coming back starts the pod with nothing re-applied;
  and a failed stage would leave its pods holding their node's GPUs (the operator never
  deletes its children).
* ``Unschedulable``: reported, not terminal. The scheduler's message is the same for a GPU
  request no node has and for GPUs that are busy right now, and a cluster autoscaler adds
  nodes on exactly this signal.
* other refusals (``exceeded quota``, an admission webhook or policy, a missing
  ServiceAccount): reported, not terminal. The controller keeps retrying, and freeing quota
  or fixing the policy lets it through.

Transient states are not news: a cause that is not terminal at once is reported only once
it has lasted :data:`GRACE_S` (a registry that blips for a few seconds costs one failed pull
and the kubelet's next try, 10 s later, succeeds). Its start is read from the cluster's own
timestamps (the pod's ``startTime`` for image pulls, the ``PodScheduled`` condition's
transition for scheduling, the first refusal's Event), so an operator restart does not
reset it. Messages carry no counters or durations, so a status stuck on the same cause is
not rewritten at every poll (the condition's ``lastTransitionTime`` says since when).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medsft_pipelines.termination import parse_termination_line

#: How long a cause that may pass must last before it is reported. With the default poll
#: interval (30 s) a stuck stage says why within 90 s of its pods' start.
GRACE_S = 60.0
MESSAGE_MAX = 1024  # a condition's message goes into status.message (at most 4096)

#: The kubelet's waiting reasons for an image it could not get.
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull")
#: Event reasons of a controller whose pod the apiserver refused: the Job controller's and the
#: Kubeflow training operator's.
CREATE_FAILURES = ("FailedCreate", "FailedCreatePod")

# Reasons medsft sets on the stage (the Stalled condition, or Failed when terminal).
IMAGE_PULL_FAILED = "ImagePullFailed"
INVALID_IMAGE_NAME = "InvalidImageName"
UNSCHEDULABLE = "Unschedulable"
PODS_REJECTED = "PodsRejected"  # the apiserver refuses the controller's pods (retried)
INVALID_POD_TEMPLATE = "InvalidPodTemplate"  # ... because the template is invalid (terminal)


@dataclass(frozen=True)
class Blocked:
    """Why a stage's pods do not start, in medsft's words."""

    reason: str
    message: str
    terminal: bool
    """The stage cannot get past it without a new spec: it fails now."""


def diagnose(
    pods: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    grace_s: float = GRACE_S,
) -> Blocked | None:
    """The cause that keeps ``pods`` (a child's pods) from running, or None.

    ``events``: the child's own Events (consulted for refused pods). A terminal cause wins
    over one that may pass, an image over scheduling; the message names the first pod
    (by name) and how many others share the cause.
    """
    found: list[tuple[int, str, Blocked]] = []
    for pod in pods:
        blocked = _pod(pod, now, grace_s)
        if blocked is not None:
            rank = 0 if blocked.terminal else 1 if blocked.reason == IMAGE_PULL_FAILED else 2
            found.append((rank, str((pod.get("metadata") or {}).get("name")), blocked))
    if found:
        found.sort(key=lambda f: (f[0], f[1]))
        rank, _, first = found[0]
        others = sum(1 for f in found[1:] if f[0] == rank)
        if others:
            message = f"{first.message} (and {others} more pod{'s' if others > 1 else ''})"
            first = Blocked(first.reason, _short(message), first.terminal)
        return first
    if any(alive(pod) for pod in pods):
        return None  # pods exist and nothing holds them: a refusal seen earlier is past
    return _refused(events, now, grace_s)


def alive(pod: Mapping[str, Any]) -> bool:
    """Whether a pod may still run (not finished, not being deleted)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return not meta.get("deletionTimestamp") and status.get("phase") not in ("Succeeded", "Failed")


def _pod(pod: Mapping[str, Any], now: datetime, grace_s: float) -> Blocked | None:
    if not alive(pod):
        return None
    name = (pod.get("metadata") or {}).get("name")
    status = pod.get("status") or {}
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason != INVALID_IMAGE_NAME and reason not in PULL_FAILURES:
            continue
        said = waiting.get("message") or ""
        image = container.get("image") or "?"
        what = f"pod {name}: container {container.get('name')}: image {image!r}"
        if reason == INVALID_IMAGE_NAME:
            message = f"{what} is not a valid image reference ({reason}): {said}"
            return Blocked(INVALID_IMAGE_NAME, _short(message.rstrip(": ")), True)
        started = _time(status.get("startTime"))
        if started is None or (now - started).total_seconds() < grace_s:
            continue
        message = f"{what} cannot be pulled ({reason}): {said}"
        return Blocked(IMAGE_PULL_FAILED, _short(message.rstrip(": ")), False)
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == UNSCHEDULABLE
        ):
            since = _time(condition.get("lastTransitionTime"))
            if since is None or (now - since).total_seconds() < grace_s:
                return None
            said = condition.get("message") or "no node fits"
            message = f"pod {name} cannot be scheduled: {said}"
            return Blocked(UNSCHEDULABLE, _short(message), False)
    return None


@dataclass(frozen=True)
class Failure:
    """Why an attempt's pods failed: the first container to end in error, in its own words
    (the line the stage left in ``/dev/termination-log``) or the kubelet's (OOMKilled, the
    log's tail)."""

    reason: str
    message: str


#: The reason of a failure whose pod left no line of ours (a crash; the message is the log's
#: tail, which the kubelet falls back to with ``terminationMessagePolicy: FallbackToLogsOnError``).
POD_FAILED = "PodFailed"
OOM_KILLED = "OOMKilled"


def failure_cause(pods: Sequence[Mapping[str, Any]]) -> Failure | None:
    """The cause of a failed attempt, read from its pods' terminated containers.

    The first container to end in error wins: when one rank dies the others fail after it
    (a collective that never completes, the rendezvous gone), and their messages describe
    the symptom, not the cause. A container restarted in place keeps its previous end in
    ``lastState``.
    """
    ends: list[tuple[datetime, str, Mapping[str, Any]]] = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name") or "?"
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (container.get("state"), container.get("lastState")):
                ended = (state or {}).get("terminated") or {}
                if ended and ended.get("exitCode", 0) != 0:
                    finished = _time(ended.get("finishedAt"))
                    when = finished.replace(tzinfo=None) if finished else datetime.max
                    ends.append((when, name, ended))
    if not ends:
        return None
    _, name, ended = min(ends, key=lambda end: (end[0], end[1]))
    code, said = ended.get("exitCode"), (ended.get("message") or "").strip()
    if ended.get("reason") == OOM_KILLED:
        message = f"pod {name} was killed for exceeding its memory limit (exit {code})"
        return Failure(OOM_KILLED, message)
    if parsed := parse_termination_line(said):
        reason, text = parsed
        return Failure(reason, _short(f"pod {name} (exit {code}): {text}"))
    tail = " | ".join(line for line in said.splitlines()[-3:] if line.strip())
    message = f"pod {name} exited with code {code}" + (f": {tail}" if tail else "")
    return Failure(POD_FAILED, _short(message))


def _refused(events: Iterable[Mapping[str, Any]], now: datetime, grace_s: float) -> Blocked | None:
    """The newest refusal of a pod among a child's Events (if the refusals have lasted)."""
    refusals = [
        e for e in events if e.get("reason") in CREATE_FAILURES and e.get("type") == "Warning"
    ]
    if not refusals:
        return None
    newest = max(
        refusals, key=lambda e: _event_time(e, last=True) or datetime.min.replace(tzinfo=now.tzinfo)
    )
    said = str(newest.get("message") or "")
    source = (newest.get("involvedObject") or {}).get("kind") or "controller"
    if " is invalid" in said:  # the template itself: every retry fails the same way
        message = f"the apiserver refuses the {source}'s pods: {said}"
        return Blocked(INVALID_POD_TEMPLATE, _short(message), True)
    firsts = [t for e in refusals if (t := _event_time(e, last=False)) is not None]
    if not firsts or (now - min(firsts)).total_seconds() < grace_s:
        return None
    message = f"the apiserver refuses the {source}'s pods: {said}"
    return Blocked(PODS_REJECTED, _short(message), False)


def _event_time(event: Mapping[str, Any], *, last: bool) -> datetime | None:
    """When a (core/v1) Event was first or last seen: the legacy recorder's first/last
    timestamps, else the new API's ``eventTime`` (and its series), else its creation."""
    series = event.get("series") or {}
    keys = (
        ("lastTimestamp", "lastObservedTime", "eventTime")
        if last
        else ("firstTimestamp", "eventTime")
    )
    for key in keys:
        value = series.get(key) if key == "lastObservedTime" else event.get(key)
        if (found := _time(value)) is not None:
            return found
    return _time((event.get("metadata") or {}).get("creationTimestamp"))


def _time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 3] + "..."
