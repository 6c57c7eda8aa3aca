"""``kubectl apply`` of the quickstart as a MedSFTRun on the real node, to ``Promoted``.

Everything a user's first apply depends on runs for real: the trainer image built here,
the operator (a real process, as its ServiceAccount), curation as an Indexed Job with
2 workers + merge, SFT as a PyTorchJob with 2 nodes (Master + 1 Worker, one process each,
gloo, rendezvous through the real training operator's headless Service), eval as a Job;
artifacts in the node's MinIO, status folded from what the pods wrote, and what
``kubectl get medsft``, ``medsft status`` and ``medsft report`` show. The namespace
enforces the ``restricted`` Pod Security profile.
"""

from __future__ import annotations

import json
import sys

import pytest
from cluster import EPOCHS, PROMOTION_MIN_PUBMEDQA, ClusterRun, quickstart_on_cluster
from typer.testing import CliRunner

from harness.mlflow_server import MlflowServer
from medsft_operator.cli import app
from medsft_pipelines.storage import open_store
from medsft_pipelines.storage.progress import read_metrics

# The first run builds the trainer image (minutes, cached afterwards) before the cluster run.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
RUN = "quickstart"


def test_quickstart_applied_to_the_cluster_is_promoted(
    cluster_run: ClusterRun, node_mlflow: MlflowServer
) -> None:
    run = cluster_run
    ns, bucket = run.namespace, run.bucket
    run.start_operator()
    applied = quickstart_on_cluster(RUN, bucket, run.node.minio.endpoint)
    # Tracked in a real MLflow server the pods reach (docs/tracking.md).
    node_mlflow.start()
    experiment = f"e2e-{bucket}"
    applied["spec"]["tracking"] = {
        "mlflow": {"trackingUri": node_mlflow.url, "experimentName": experiment}
    }
    out = run.apply(applied)
    assert "medsftrun.medsft.io/quickstart created" in out

    status = run.finish(RUN)
    assert status["phase"] == "Succeeded", run.describe()
    promoted = run.cluster.condition("MedSFTRun", RUN, "Promoted")
    assert promoted is not None and promoted["status"] == "True"
    (record,) = status["history"]
    assert record["promoted"] is True and record["generation"] == 1

    # The children ran as real pods: 2 curation workers (Indexed) + merge, Master + Worker,
    # one eval pod — all Succeeded, on the node.
    pods = {p.metadata.name: p for p in run.pods()}
    work = run.cluster.job(f"{RUN}-curation-g1-work")
    assert work.spec.completion_mode == "Indexed" and work.spec.completions == 2
    assert work.status.succeeded == 2
    assert run.cluster.job(f"{RUN}-curation-g1-merge").status.succeeded == 1
    assert run.cluster.job(f"{RUN}-eval-g1-eval").status.succeeded == 1
    (ptj,) = run.cluster.pytorchjobs()
    assert set(ptj["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert {c["type"]: c["status"] for c in ptj["status"]["conditions"]}["Succeeded"] == "True"
    master, worker = f"{ptj['metadata']['name']}-master-0", f"{ptj['metadata']['name']}-worker-0"
    assert ptj["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    assert pods[master].status.phase == "Succeeded"
    assert {p.spec.node_name for p in pods.values()} == {"medsft-node"}
    # The job succeeds with its Master; a Worker still shutting down then (its torchrun agent
    # leaves after the Master's) is deleted by cleanPodPolicy: Running, one that finished
    # first stays. Its training is judged below from storage: both ranks shared every epoch.
    if worker in pods:
        assert pods[worker].status.phase == "Succeeded"
        # The rendezvous is the training operator's: it told the Worker where the Master is
        # (its headless Service) and which node it is.
        worker_env = {e.name: e.value for e in pods[worker].spec.containers[0].env}
        assert worker_env["MASTER_ADDR"] == master and worker_env["PET_NODE_RANK"] == "1"

    # Artifacts in MinIO, as the pods wrote them; status folded from what the pods reported.
    root = f"{ns}/{RUN}/g1"
    curation = run.cluster.status("CurationJob", f"{RUN}-curation-g1")
    manifest = run.store_json(f"{root}/curation/manifest.json")
    assert curation["phase"] == "Succeeded"
    assert manifest["numRows"] == curation["keptSamples"] > 0
    assert curation["workersSucceeded"] == 2

    # Whole epochs, the recipe's path: the trainer planned them from the data and ran them all.
    summary = run.store_json(f"{root}/sft/train_summary.json")
    sft = run.cluster.status("SFTJob", f"{RUN}-sft-g1")
    assert summary["epochs_completed"] == EPOCHS and summary["resumed_from"] is None
    assert summary["steps"] == sum(summary["steps_per_epoch"]) == sft["totalSteps"]
    assert sft["step"] == sft["totalSteps"] and sft["restarts"] == 0
    # one sample per rank per step: 2 ranks shared each epoch's samples, all of them
    assert all(
        manifest["numRows"] / 2 <= n < manifest["numRows"] for n in summary["steps_per_epoch"]
    )
    assert run.keys(f"{root}/sft/model/export.json")

    # The fine-tuned model beat its untrained self on real generations: that is why it was
    # promoted.
    results = run.store_json(f"{root}/eval/results.json")
    assert [b["name"] for b in results["benchmarks"]] == ["pubmedqa", "vqa-rad"]
    pubmedqa = results["benchmarks"][0]["scores"]
    assert pubmedqa["model"]["accuracy"] >= PROMOTION_MIN_PUBMEDQA
    assert pubmedqa["model"]["accuracy"] > pubmedqa["untrained"]["accuracy"]
    evaluation = run.cluster.status("EvalJob", f"{RUN}-eval-g1")
    assert evaluation["phase"] == "Succeeded" and evaluation["meanAccuracy"] > 0

    # The generation is one MLflow run: tagged, the stages' numbers streamed into it from the
    # pods (SFT from rank 0), the promotion decision from the operator.
    run_id = record["trackingRunId"]
    assert status["trackingUrl"].endswith(f"/runs/{run_id}")
    mlflow = node_mlflow.client()
    tracked = mlflow.get_run(run_id)
    assert tracked.info.experiment_id == mlflow.get_experiment_by_name(experiment).experiment_id
    tags = tracked.data.tags
    assert (tags["medsft.run"], tags["medsft.namespace"], tags["medsft.generation"]) == (
        RUN, ns, "1",
    )  # fmt: skip
    assert (
        tags["medsft.sft.inputHash"]
        == run.cluster.get("SFTJob", f"{RUN}-sft-g1")["metadata"]["annotations"][
            "medsft.io/stage-hash"
        ]
    )
    telemetry = open_store(f"s3://{bucket}/{root}/sft", run.storage.settings())
    logged = {r["step"] for r in read_metrics(telemetry) if "loss" in r}
    losses = mlflow.get_metric_history(run_id, "sft.loss")
    assert {m.step for m in losses} == logged  # every logged step, once (rank 0 only)
    assert len(losses) == len(logged)
    metrics = tracked.data.metrics
    assert metrics["curation.rows"] == manifest["numRows"]
    assert metrics["eval.pubmedqa.model.accuracy"] == pytest.approx(pubmedqa["model"]["accuracy"])
    assert metrics["promoted"] == 1.0
    assert [a.path for a in mlflow.list_artifacts(run_id, "sft")] == ["sft/loss_curve.png"]
    for kind, name in (("SFTJob", "sft"), ("EvalJob", "eval"), ("CurationJob", "curation")):
        degraded = run.cluster.condition(kind, f"{RUN}-{name}-g1", "TrackingDegraded")
        assert degraded is None or degraded["status"] == "False"
    wide = run.kubectl("get", "medsftrun", RUN, "-o", "wide").stdout
    assert status["trackingUrl"] in wide

    # What a person sees.
    table = run.kubectl("get", "medsft").stdout
    row = next(
        line for line in table.splitlines() if line.startswith(f"medsftrun.medsft.io/{RUN} ")
    )
    assert "Succeeded" in row
    cli = CliRunner()
    kube = ["--kubeconfig", str(run.node.plane.kubeconfig), "-n", ns]
    shown = cli.invoke(app, ["status", *kube, "-o", "json"])
    assert shown.exit_code == 0, shown.output
    rows = {(r["kind"], r["name"]): r for r in json.loads(shown.output)}
    assert rows[("MedSFTRun", RUN)]["phase"] == "Succeeded"
    report = cli.invoke(
        app,
        ["report", RUN, *kube],
        env={
            "AWS_ACCESS_KEY_ID": run.node.minio.access_key,
            "AWS_SECRET_ACCESS_KEY": run.node.minio.secret_key,
        },
    )
    assert report.exit_code == 0, report.output
    assert "pubmedqa" in report.output and "vqa-rad" in report.output
    print(table, file=sys.stderr)
