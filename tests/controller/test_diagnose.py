"""Why a stage's pods do not start (medsft_operator.diagnose) and how it reaches the status
(Stalled, Failed, Events): the pure parts, on pod and Event objects shaped as the kubelet,
the scheduler and the Job controller write them (their real counterparts: test_fail_fast.py
at apiserver level with a real kube-scheduler, tests/node/test_fail_fast.py with a real
kubelet)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from medsft_operator import diagnose, fold
from medsft_operator.api import conditions as cond
from medsft_operator.api.status import EvalJobStatus, MedSFTRunStatus
from medsft_pipelines.storage import ShardIntegrityError, StorageUnavailable
from medsft_pipelines.termination import (
    ENV_TERMINATION_LOG,
    TERMINATION_LOG,
    parse_termination_line,
    record_failure,
    termination_line,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
IMAGE = "registry.example/medsft/trainer:nope"


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def pod(
    name: str = "ev-eval-abcde",
    *,
    waiting: tuple[str, str] | None = None,
    started_s: float = 120,
    phase: str = "Pending",
    unschedulable: tuple[str, float] | None = None,
    init: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if unschedulable is not None:
        message, since = unschedulable
        status["conditions"].append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": ago(since),
            }
        )
    else:
        status["startTime"] = ago(started_s)
        state = (
            {"waiting": {"reason": waiting[0], "message": waiting[1]}}
            if waiting
            else {"running": {"startedAt": ago(started_s)}}
        )
        key = "initContainerStatuses" if init else "containerStatuses"
        status[key] = [{"name": "trainer", "image": IMAGE, "ready": False, "state": state}]
    return {"metadata": {"name": name}, "status": status}


def event(message: str, *, first_s: float, reason: str = "FailedCreate", count: int = 3) -> dict:
    return {
        "metadata": {"name": "ev-eval.1", "creationTimestamp": ago(first_s)},
        "involvedObject": {"kind": "Job", "name": "ev-eval"},
        "type": "Warning",
        "reason": reason,
        "message": message,
        "count": count,
        "firstTimestamp": ago(first_s),
        "lastTimestamp": ago(1),
    }


PULL = ("ErrImagePull", f'failed to pull and unpack image "{IMAGE}": not found')
BACKOFF = ("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"')
GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
QUOTA = 'Error creating: pods "ev-eval-x" is forbidden: exceeded quota: gpu, requested: pods=1'


def test_an_image_that_cannot_be_pulled_is_reported_once_the_grace_period_passed():
    early = diagnose.diagnose([pod(waiting=PULL, started_s=20)], [], now=NOW, grace_s=60)
    assert early is None  # a registry blip: the kubelet's next try may succeed
    for waiting in (PULL, BACKOFF, ("ErrImageNeverPull", "image not present")):
        late = diagnose.diagnose([pod(waiting=waiting, started_s=75)], [], now=NOW, grace_s=60)
        assert late is not None and late.reason == "ImagePullFailed" and not late.terminal
        assert IMAGE in late.message and waiting[0] in late.message and waiting[1] in late.message
        assert "ev-eval-abcde" in late.message  # which pod, for kubectl describe


def test_an_invalid_image_name_fails_at_once():
    blocked = diagnose.diagnose(
        [pod(waiting=("InvalidImageName", 'couldn\'t parse image name "Trainer:X"'), started_s=1)],
        [],
        now=NOW,
    )
    assert blocked is not None and blocked.reason == "InvalidImageName" and blocked.terminal
    assert "Trainer:X" in blocked.message


def test_an_init_container_image_counts_too():
    blocked = diagnose.diagnose([pod(waiting=PULL, init=True)], [], now=NOW)
    assert blocked is not None and blocked.reason == "ImagePullFailed"


def test_unschedulable_carries_the_schedulers_message_after_the_grace_period():
    assert diagnose.diagnose([pod(unschedulable=(GPU, 10))], [], now=NOW, grace_s=60) is None
    blocked = diagnose.diagnose([pod(unschedulable=(GPU, 61))], [], now=NOW, grace_s=60)
    assert blocked is not None and blocked.reason == "Unschedulable" and not blocked.terminal
    assert GPU in blocked.message


def test_the_first_pod_is_named_and_the_others_counted_terminal_first():
    pods = [
        pod("sft-a0-worker-1", unschedulable=(GPU, 300)),
        pod("sft-a0-worker-0", waiting=PULL),
        pod("sft-a0-master-0", waiting=PULL),
        pod("sft-a0-worker-2", waiting=PULL),
    ]
    blocked = diagnose.diagnose(pods, [], now=NOW)
    assert blocked is not None and blocked.reason == "ImagePullFailed"
    assert blocked.message.startswith("pod sft-a0-master-0:")
    assert blocked.message.endswith("(and 2 more pods)")
    invalid = pod("sft-a0-worker-9", waiting=("InvalidImageName", "bad"), started_s=1)
    first = diagnose.diagnose([*pods, invalid], [], now=NOW)
    assert first is not None and first.reason == "InvalidImageName" and first.terminal


def test_running_and_finished_pods_are_fine():
    pods = [pod(), pod("done", waiting=PULL, phase="Succeeded")]
    deleted = pod("going", waiting=PULL)
    deleted["metadata"]["deletionTimestamp"] = ago(1)
    assert diagnose.diagnose([*pods, deleted], [], now=NOW) is None


def test_refused_pods_come_from_the_controllers_events_when_there_are_no_pods():
    quota = [event(QUOTA, first_s=90)]
    blocked = diagnose.diagnose([], quota, now=NOW, grace_s=60)
    assert blocked is not None and blocked.reason == "PodsRejected" and not blocked.terminal
    assert "exceeded quota" in blocked.message and "Job" in blocked.message
    assert diagnose.diagnose([], [event(QUOTA, first_s=5)], now=NOW, grace_s=60) is None
    # Pods exist now: a refusal seen earlier is history.
    assert diagnose.diagnose([pod()], quota, now=NOW) is None
    # The training operator says FailedCreatePod; Normal events are not refusals.
    torch = [event(QUOTA, first_s=90, reason="FailedCreatePod")]
    assert diagnose.diagnose([], torch, now=NOW) is not None
    normal = [{**quota[0], "type": "Normal"}]
    assert diagnose.diagnose([], normal, now=NOW) is None


def test_an_invalid_pod_template_fails_at_once_and_the_newest_refusal_is_reported():
    invalid = (
        'Error creating: Pod "sft-a0-master-0" is invalid: spec.containers[0].resources.'
        'requests: Invalid value: "2": must be less than or equal to cpu limit of 1'
    )
    older = {**event(QUOTA, first_s=30), "lastTimestamp": ago(20)}
    blocked = diagnose.diagnose([], [older, event(invalid, first_s=2)], now=NOW)
    assert blocked is not None and blocked.reason == "InvalidPodTemplate" and blocked.terminal
    assert "must be less than or equal to cpu limit" in blocked.message


def test_events_of_the_new_api_are_read_by_their_event_time():
    new_api = {
        "metadata": {"name": "x"},
        "type": "Warning",
        "reason": "FailedCreate",
        "message": QUOTA,
        "eventTime": ago(120),
        "series": {"count": 4, "lastObservedTime": ago(3)},
    }
    blocked = diagnose.diagnose([], [new_api], now=NOW, grace_s=60)
    assert blocked is not None and blocked.reason == "PodsRejected"


def test_long_messages_are_bounded():
    blocked = diagnose.diagnose([pod(waiting=("ErrImagePull", "x" * 5000))], [], now=NOW)
    assert blocked is not None and len(blocked.message) <= diagnose.MESSAGE_MAX


def test_stalled_is_a_condition_with_an_event_and_its_end_is_one_too():
    start = fold.apply_phase(EvalJobStatus(), "Pending", "Starting", "pods not started yet", 1)
    stalled = fold.apply_stalled(start, ("ImagePullFailed", "pod p: image cannot be pulled"), 1)
    found = cond.get_condition(stalled.conditions, cond.STALLED)
    assert found is not None and (found.status, found.reason) == ("True", "ImagePullFailed")
    assert fold.transition_events(start, stalled) == [
        ("Warning", "ImagePullFailed", "pod p: image cannot be pulled")
    ]
    # The same cause again (the kubelet's reason flips between pull and back-off): no news.
    again = fold.apply_stalled(stalled, ("ImagePullFailed", "pod p: back-off"), 1)
    assert fold.transition_events(stalled, again) == []
    resolved = fold.apply_stalled(again, None, 1)
    after = cond.get_condition(resolved.conditions, cond.STALLED)
    assert after is not None and (after.status, after.reason) == ("False", "Resolved")
    assert [e[:2] for e in fold.transition_events(again, resolved)] == [("Normal", "Resolved")]
    # A status that never stalled gets no condition at all.
    assert fold.apply_stalled(start, None, 1).conditions == start.conditions
    assert fold.stalled_of(stalled.to_wire()) == ("ImagePullFailed", found.message)
    assert fold.stalled_of(resolved.to_wire()) is None


def test_a_run_reads_its_stages_stall():
    run = MedSFTRunStatus()
    wire = fold.apply_stalled(EvalJobStatus(), ("Unschedulable", GPU), 1).to_wire()
    reason, message = fold.stalled_of(wire) or ("", "")
    run = fold.apply_stalled(run, (reason, f"generation 1: Eval pending: {message}"), 1)
    assert fold.transition_events(MedSFTRunStatus(), run)[0][:2] == ("Warning", "Unschedulable")


# == why an attempt failed: the pods' termination messages ======================================


def failed_pod(
    name: str, message: str, *, exit_code: int = 1, finished_s: float, reason: str = "Error"
) -> dict[str, Any]:
    """A pod as the kubelet leaves it when its container ended in error (restartPolicy
    Never): the container's terminated state carries /dev/termination-log's content."""
    ended = {
        "exitCode": exit_code,
        "reason": reason,
        "message": message,
        "finishedAt": ago(finished_s),
    }
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "pytorch", "state": {"terminated": ended}}],
        },
    }


def test_the_first_rank_to_fail_names_the_cause_in_its_own_words() -> None:
    """A storage outage past the retry budget kills rank 0; rank 1 dies after it of the lost
    collective. The condition must carry the cause (the line medsft_pipelines.termination
    wrote, a real StorageUnavailable's text), not the symptom."""
    outage = StorageUnavailable(
        "PUT s3://b/run/checkpoints/node-0/step-000000004/x failed: MaxRetryError: "
        "connection refused; gave up after 9 attempt(s) over 120s (retry budget 120s)"
    )
    pods = [
        failed_pod("sft-a0-worker-0", "RuntimeError: NCCL communicator aborted", finished_s=5),
        failed_pod("sft-a0-master-0", termination_line(outage), exit_code=2, finished_s=40),
    ]
    cause = diagnose.failure_cause(pods)
    assert cause is not None
    assert cause.reason == "StorageUnavailable"
    assert cause.message.startswith("pod sft-a0-master-0 (exit 2): PUT s3://b/run/checkpoints")
    assert "retry budget 120s" in cause.message


def test_a_crash_without_a_line_is_named_by_its_log_tail_and_oom_by_the_kubelet() -> None:
    crash = failed_pod(
        "ev-eval-x", "loading\nTraceback (most recent call last):\nKeyError: 'vision'", finished_s=9
    )
    cause = diagnose.failure_cause([crash])
    assert cause == diagnose.Failure(
        "PodFailed",
        "pod ev-eval-x exited with code 1: loading | Traceback (most recent call last): | "
        "KeyError: 'vision'",
    )
    oom = failed_pod("sft-a0-master-0", "", exit_code=137, finished_s=3, reason="OOMKilled")
    cause = diagnose.failure_cause([oom])
    assert cause is not None and cause.reason == "OOMKilled"
    assert "exceeding its memory limit (exit 137)" in cause.message
    # Running and succeeded containers are no cause.
    running = pod("sft-a0-worker-0", phase="Running")
    assert diagnose.failure_cause([running]) is None


def test_the_line_round_trips_and_is_written_only_in_a_container(tmp_path) -> None:
    error = ShardIntegrityError("shard 00003 sha256 mismatch")
    assert parse_termination_line(termination_line(error)) == (
        "ShardIntegrityError",
        "shard 00003 sha256 mismatch",
    )
    assert parse_termination_line(termination_line(ValueError("bad batch"))) == (
        "InvalidInput",
        "bad batch",
    )
    assert parse_termination_line("some log line\nanother") is None
    if not TERMINATION_LOG.exists():  # outside a container nothing is written
        record_failure(error, {})
        assert not TERMINATION_LOG.exists()
    target = tmp_path / "termination-log"
    record_failure(error, {ENV_TERMINATION_LOG: str(target)})
    assert target.read_text() == "ShardIntegrityError: shard 00003 sha256 mismatch"
    huge = StorageUnavailable("x" * 10_000)
    record_failure(huge, {ENV_TERMINATION_LOG: str(target)})
    assert len(target.read_bytes()) == 4096  # what the kubelet keeps
