"""spec.tracking in what the operator builds: every stage's pods get the server in their job
config and its credentials by reference only; tracking changes no stage hash (editing it
never starts a generation)."""

from __future__ import annotations

import yaml
from controller.test_builders import hashes, run_manifest

from medsft_operator.render import children_of
from medsft_pipelines.specs.jobconfig import parse_job_config

TRACKING = {
    "mlflow": {
        "trackingUri": "https://mlflow.example.org",
        "experimentName": "octomed",
        "credentialsSecret": {"name": "mlflow-creds"},
    }
}


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] == "Job":
        return doc["spec"]["template"]["spec"]["containers"]
    specs = doc["spec"]["pytorchReplicaSpecs"].values()
    return [c for s in specs for c in s["template"]["spec"]["containers"]]


def test_every_stage_tracks_to_the_runs_server_with_its_secret_by_reference():
    docs = children_of(run_manifest(tracking=TRACKING), generation=1)
    configs = [
        parse_job_config(yaml.safe_load(text))
        for d in docs
        if d["kind"] == "ConfigMap"
        for name, text in d["data"].items()
        if name.endswith(".yaml") and "kind: " in text and "JobConfig" in text
    ]
    assert {c.kind for c in configs} == {"CurationJobConfig", "SFTJobConfig", "EvalJobConfig"}
    for config in configs:
        assert config.tracking is not None
        assert config.tracking.tracking_uri == "https://mlflow.example.org"
    workloads = [d for d in docs if d["kind"] in ("Job", "PyTorchJob")]
    assert len(workloads) == 4
    for doc in workloads:
        for container in _containers(doc):
            env = {e["name"]: e for e in container["env"]}
            token = env["MLFLOW_TRACKING_TOKEN"]
            assert "value" not in token
            assert token["valueFrom"]["secretKeyRef"] == {
                "name": "mlflow-creds", "key": "token", "optional": True,
            }  # fmt: skip
            assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"


def test_tracking_is_not_part_of_any_stage_hash():
    assert hashes(run_manifest(tracking=TRACKING)) == hashes(run_manifest())
    untracked = children_of(run_manifest(), generation=1)
    for doc in (d for d in untracked if d["kind"] in ("Job", "PyTorchJob")):
        for container in _containers(doc):
            assert not [e for e in container["env"] if e["name"].startswith("MLFLOW_")]


def test_a_stages_degraded_tracking_becomes_its_condition_and_the_runs():
    from medsft_operator.api.status import MedSFTRunStatus, SFTJobStatus
    from medsft_operator.fold import fold_tracking
    from medsft_operator.reconcilers.run import _stage_tracking

    url = "https://mlflow.example.org/#/experiments/1/runs/" + "a" * 32
    ok = {"step": 3, "tracking": {"runId": "a" * 32, "url": url, "degraded": False}}
    status = fold_tracking(SFTJobStatus(), ok, 1)
    assert status.tracking_url == url and status.conditions == []  # nothing to say yet
    down = {
        "step": 9,
        "tracking": {
            "runId": "a" * 32,
            "url": url,
            "degraded": True,
            "error": "MlflowException: API request to https://user:secret@mlflow/ failed",
            "pending": 40,
            "dropped": 0,
        },
    }
    status = fold_tracking(status, down, 1)
    (condition,) = status.conditions
    assert (condition.type, condition.status, condition.reason) == (
        "TrackingDegraded", "True", "TrackerUnreachable",
    )  # fmt: skip
    assert "MlflowException" in condition.message and "secret" not in condition.message
    assert "40 values waiting" in condition.message

    child = status.model_dump(by_alias=True, mode="json")
    run = _stage_tracking(MedSFTRunStatus(), "SFTJob", "r-sft-g1", child, 1)
    (on_run,) = run.conditions
    assert on_run.status == "True" and on_run.message.startswith("SFTJob r-sft-g1: the MLflow")
    # Back to sending: both clear.
    status = fold_tracking(status, ok, 1)
    assert status.conditions[0].status == "False"
    run = _stage_tracking(
        run, "SFTJob", "r-sft-g1", status.model_dump(by_alias=True, mode="json"), 1
    )
    assert run.conditions[0].status == "False"
