"""spec.tracking on a MedSFTRun, against a real ``mlflow server``: the operator opens one
MLflow run per generation (URL in status, id handed to the stages it creates) and logs the
promotion decision into it; a server that cannot be reached is a ``TrackingDegraded``
condition while the run goes on exactly as without tracking."""

from __future__ import annotations

import uuid

from controller.operator_harness import FAKE, RunDriver, resource, run_spec, wait_for

from harness import processes

HELD = {f"{FAKE}outcome": "Running"}


def _tracked(storage, uri: str, experiment: str) -> dict:
    return {
        **run_spec(storage),
        "tracking": {"mlflow": {"trackingUri": uri, "experimentName": experiment}},
    }


def test_each_generation_is_an_mlflow_run_linked_from_status_and_stages(
    cluster, storage, operator, mlflow_server
):
    mlflow_server.start()
    experiment = f"op-{uuid.uuid4().hex[:8]}"
    cluster.create(
        resource(
            "MedSFTRun",
            "tracked",
            _tracked(storage, mlflow_server.url, experiment),
            annotations=HELD,
        )
    )
    curation = wait_for(
        lambda: cluster.find("CurationJob", "tracked-curation-g1"), what="CurationJob"
    )
    status = wait_for(
        lambda: (s := cluster.status("MedSFTRun", "tracked")).get("trackingUrl") and s,
        what="status.trackingUrl",
    )
    run_id = status["history"][0]["trackingRunId"]
    assert status["trackingUrl"].startswith(mlflow_server.url) and status["trackingUrl"].endswith(
        run_id
    )
    assert cluster.condition("MedSFTRun", "tracked", "TrackingDegraded")["status"] == "False"
    # The stage logs into the generation's run.
    assert curation["spec"]["tracking"]["mlflow"]["runId"] == run_id

    client = mlflow_server.client()
    tags = client.get_run(run_id).data.tags
    assert (tags["medsft.run"], tags["medsft.generation"]) == ("tracked", "1")
    assert (
        tags["medsft.curation.inputHash"]
        == curation["metadata"]["annotations"]["medsft.io/stage-hash"]
    )

    drive = RunDriver(cluster, storage, "tracked")
    drive.curation()
    wait_for(lambda: cluster.find("SFTJob", "tracked-sft-g1"), what="SFTJob")
    drive.sft()
    wait_for(lambda: cluster.find("EvalJob", "tracked-eval-g1"), what="EvalJob")
    drive.eval(scores={"pubmedqa": 0.6, "medqa": 0.7})
    cluster.wait_phase("MedSFTRun", "tracked", "Succeeded")
    data = wait_for(
        lambda: (d := client.get_run(run_id).data).metrics.get("promoted") is not None and d,
        what="the promotion decision in MLflow",
    )
    assert data.metrics["promoted"] == 1.0 and abs(data.metrics["score.mean"] - 0.65) < 1e-9
    assert data.tags["medsft.promoted"] == "true"


def test_an_unreachable_server_degrades_tracking_not_the_run(cluster, storage, operator):
    dead = f"http://127.0.0.1:{processes.free_port()}"
    cluster.create(
        resource("MedSFTRun", "untracked", _tracked(storage, dead, "x"), annotations=HELD)
    )
    curation = wait_for(
        lambda: cluster.find("CurationJob", "untracked-curation-g1"), what="CurationJob"
    )
    condition = wait_for(
        lambda: cluster.condition("MedSFTRun", "untracked", "TrackingDegraded"),
        what="TrackingDegraded",
    )
    assert condition["status"] == "True" and condition["reason"] == "TrackerUnreachable"
    assert dead in condition["message"]
    status = cluster.status("MedSFTRun", "untracked")
    assert "trackingRunId" not in status["history"][0]
    assert status.get("trackingUrl") is None and status["phase"] == "Running"
    # The stage still tracks to that server, opening a run of its own when it can.
    assert curation["spec"]["tracking"]["mlflow"] == {"trackingUri": dead, "experimentName": "x"}
