"""The generation's MLflow run the control plane opens (real ``mlflow server``): tagged to be
found again, so a second call (an operator restarted before it recorded the run) opens no
second run; the recipe as params; the stages' numbers (here eval's) land in it."""

from __future__ import annotations

import uuid

from medsft_operator.tracking import log_generation_outcome, open_generation_run
from medsft_pipelines.eval.run import track_results
from medsft_pipelines.specs.jobconfig import RunInfo
from medsft_pipelines.specs.tracking import MLflowSpec
from medsft_pipelines.tracking import MLflowTracker


def test_one_run_per_generation_tagged_with_its_hashes_and_recipe(mlflow_server):
    mlflow_server.start()
    spec = MLflowSpec(tracking_uri=mlflow_server.url, experiment_name=f"g-{uuid.uuid4().hex[:8]}")
    opened = [
        open_generation_run(
            spec,
            name="octomed",
            namespace="team-a",
            generation=2,
            spec_hash="key2",
            stage_hashes={"curation": "c1", "sft": "s2"},
            recipe={"sft": {"training": {"learningRate": 1e-5, "epochs": 3}}},
        )
        for _ in range(2)
    ]
    assert opened[0] == opened[1]  # found again, not opened twice
    client = mlflow_server.client()
    run = client.get_run(opened[0].run_id)
    assert opened[0].url.startswith(mlflow_server.url) and opened[0].url.endswith(run.info.run_id)
    tags = run.data.tags
    assert {k: tags[k] for k in tags if k.startswith("medsft.")} == {
        "medsft.run": "octomed",
        "medsft.namespace": "team-a",
        "medsft.generation": "2",
        "medsft.specHash": "key2",
        "medsft.kind": "generation",
        "medsft.curation.inputHash": "c1",
        "medsft.sft.inputHash": "s2",
    }
    assert run.data.params == {"sft.training.learningRate": "1e-05", "sft.training.epochs": "3"}

    # The eval stage logs its scores into that run; the operator adds the promotion decision.
    tracker = MLflowTracker(
        spec.model_copy(update={"run_id": opened[0].run_id}),
        RunInfo(name="octomed", namespace="team-a", generation=2),
        "eval",
        interval_s=0.2,
    )
    results = {
        "meanAccuracy": 0.5,
        "benchmarks": [
            {
                "name": "pubmedqa",
                "scores": {
                    "model": {"accuracy": 0.5, "accuracy_std": 0.1, "per_seed": [0.4, 0.6]},
                },
            }
        ],
    }
    track_results(tracker, results, "s3://b/eval/report.md")
    assert not tracker.close(timeout_s=120)["degraded"]
    log_generation_outcome(spec, opened[0].run_id, {"promoted": 1.0}, {"medsft.promoted": "true"})
    run = client.get_run(opened[0].run_id)
    assert run.data.metrics == {
        "eval.pubmedqa.model.accuracy": 0.5,
        "eval.pubmedqa.model.accuracy_std": 0.1,
        "eval.pubmedqa.model.accuracyPerSeed": 0.6,
        "eval.meanAccuracy": 0.5,
        "promoted": 1.0,
    }
    per_seed = client.get_metric_history(run.info.run_id, "eval.pubmedqa.model.accuracyPerSeed")
    assert sorted((m.step, m.value) for m in per_seed) == [(0, 0.4), (1, 0.6)]
    assert run.data.tags["medsft.eval.reportUri"] == "s3://b/eval/report.md"
    assert run.data.tags["medsft.promoted"] == "true"
