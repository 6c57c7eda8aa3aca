"""The Argo CD health check in docs/gitops.md, run as Argo CD runs it (Lua 5.1) against
statuses made by the operator's own status functions (medsft_operator.fold)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from medsft_operator import fold
from medsft_operator.api.status import (
    CurationJobStatus,
    EvalJobStatus,
    MedSFTRunStatus,
    SFTJobStatus,
)

lua51 = pytest.importorskip("lupa.lua51", reason="Lua 5.1 runtime: pip install lupa")

DOC = Path(__file__).resolve().parents[2] / "docs" / "gitops.md"
KINDS = ("MedSFTRun", "CurationJob", "SFTJob", "EvalJob")


def _argocd_cm() -> dict[str, Any]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.DOTALL)
    [cm] = [b for b in (yaml.safe_load(b) for b in blocks) if b.get("kind") == "ConfigMap"]
    return cm


def _script(kind: str) -> str:
    return _argocd_cm()["data"][f"resource.customizations.health.medsft.io_{kind}"]


def test_the_doc_configures_every_kind_with_the_same_script():
    data = _argocd_cm()["data"]
    keys = {k for k in data if k.startswith("resource.customizations.health.")}
    assert keys == {f"resource.customizations.health.medsft.io_{k}" for k in KINDS}
    assert len({data[k] for k in keys}) == 1


def _to_lua(runtime: Any, value: Any) -> Any:
    """JSON-like Python data as Lua tables (lists 1-based), as Argo CD hands `obj` over."""
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    check = runtime.eval(f"function(obj)\n{_script(obj['kind'])}\nend")
    result = check(_to_lua(runtime, obj))
    return result["status"], result["message"]


def _obj(kind: str, status: Any, generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "medsft.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ml", "generation": generation},
    }
    if status is not None:
        body["status"] = status.to_wire()
    return body


def _pending(status: Any, reason: str, message: str, generation: int = 1) -> Any:
    status = fold.apply_inputs(status, False, reason, message, generation)
    return fold.apply_phase(status, "Pending", reason, message, generation)


def test_a_new_resource_waits_for_the_operator():
    assert health(_obj("SFTJob", None)) == ("Progressing", "Waiting for the medsft operator")


def test_an_edited_spec_the_operator_has_not_seen_is_progressing():
    done = fold.apply_phase(SFTJobStatus(), "Succeeded", "Succeeded", "trained", 1)
    state, message = health(_obj("SFTJob", done, generation=2))
    assert state == "Progressing" and "generation 2" in message


@pytest.mark.parametrize("kind, status_model", [
    ("CurationJob", CurationJobStatus), ("SFTJob", SFTJobStatus), ("EvalJob", EvalJobStatus),
])  # fmt: skip
def test_stage_phases_map_to_argo_health(kind, status_model):
    running = fold.apply_phase(status_model(), "Running", "Running", "step 40/100", 1)
    assert health(_obj(kind, running)) == ("Progressing", "step 40/100")
    done = fold.apply_phase(running, "Succeeded", "Succeeded", "done", 1)
    assert health(_obj(kind, done)) == ("Healthy", "done")
    failed = fold.apply_phase(running, "Failed", "BackoffLimitExceeded", "pods failed 4 times", 1)
    assert health(_obj(kind, failed)) == ("Degraded", "pods failed 4 times")


def test_a_missing_secret_is_degraded_with_the_operators_message():
    message = "Secret 'medsft-minio' does not exist in namespace 'ml'"
    status = _pending(CurationJobStatus(), "SecretNotFound", message)
    assert health(_obj("CurationJob", status)) == ("Degraded", message)


@pytest.mark.parametrize("kind, status_model", [
    ("EvalJob", EvalJobStatus), ("MedSFTRun", MedSFTRunStatus),
])  # fmt: skip
def test_a_stalled_stage_or_run_is_degraded_until_resolved(kind, status_model):
    message = (
        "pod ev-eval-x cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )
    pending = fold.apply_phase(status_model(), "Pending", "Unschedulable", message, 1)
    stalled = fold.apply_stalled(pending, ("Unschedulable", message), 1)
    assert health(_obj(kind, stalled)) == ("Degraded", message)
    resolved = fold.apply_phase(
        fold.apply_stalled(stalled, None, 1), "Running", "Running", "evaluating", 1
    )
    assert health(_obj(kind, resolved)) == ("Progressing", "evaluating")


def test_waiting_for_an_upstream_stage_is_only_progressing():
    status = _pending(SFTJobStatus(), "DatasetNotReady", "waiting for CurationJob 'c' to succeed")
    assert health(_obj("SFTJob", status)) == (
        "Progressing",
        "waiting for CurationJob 'c' to succeed",
    )


def test_a_job_waiting_for_kueue_admission_is_suspended():
    state = fold.job_state({"spec": {"suspend": True}, "status": {}})
    status = fold.apply_phase(EvalJobStatus(), state.phase, state.reason, state.message, 1)
    assert health(_obj("EvalJob", status)) == ("Suspended", "waiting for admission (suspended)")


def test_a_stage_queued_or_evicted_by_kueue_is_suspended_with_kueues_message():
    message = "couldn't assign flavors to pod set master: insufficient quota for nvidia.com/gpu"
    status = fold.apply_phase(SFTJobStatus(), "Queued", "WaitingForQuota", message, 1)
    assert health(_obj("SFTJob", status)) == ("Suspended", message)


def test_a_run_says_its_generation_stage_score_and_promotion():
    running = fold.apply_phase(MedSFTRunStatus(), "Running", "Running", "evaluating", 3)
    running = running.model_copy(
        update={
            "current_generation": 3,
            "stage": "Eval",
            "score": 0.61234,
            "promoted_generation": 2,
        }
    )
    assert health(_obj("MedSFTRun", running, generation=3)) == (
        "Progressing",
        "generation 3 (Eval), score 0.612, promoted generation 2: evaluating",
    )
    done = fold.apply_phase(running, "Succeeded", "Succeeded", "", 3).model_copy(
        update={"stage": "Done", "promoted_generation": 3}
    )
    assert health(_obj("MedSFTRun", done, generation=3)) == (
        "Healthy",
        "generation 3 (Done), score 0.612, promoted generation 3",
    )
