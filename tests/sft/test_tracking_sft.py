"""A real training run (torchrun, DeepSpeed on CPU, MinIO) sending to a real ``mlflow
server`` that goes silent mid-training: the steps logged before arrive, tagged, with the
recipe as params; the training finishes as if nothing happened, every step is in
``metrics.jsonl``, and ``progress.json`` says tracking is degraded (what the operator folds
into ``TrackingDegraded``)."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from sft.sft_helpers import torchrun_cmd, train_env, write_config
from sft.test_train_distributed import Setup, setup  # noqa: F401 (the module's fixture)

from medsft_pipelines.specs.jobconfig import load_job_config
from medsft_pipelines.specs.tracking import MLflowSpec
from medsft_pipelines.storage.progress import read_metrics, read_progress

pytestmark = pytest.mark.slow
STEPS = 40  # long enough to still be training when the server goes silent


def test_the_tracker_stopped_mid_training_leaves_training_unaffected(
    setup: Setup,  # noqa: F811
    mlflow_server,
) -> None:
    mlflow_server.start()
    experiment = f"sft-{uuid.uuid4().hex[:8]}"
    name = "tracked"
    path = setup.config(name, training={"maxSteps": STEPS, "logEverySteps": 1})
    config = load_job_config(path)
    config = config.model_copy(
        update={
            "run": config.run.model_copy(
                update={"namespace": "team-a", "generation": 2, "spec_hash": "f00d"}
            ),
            "tracking": MLflowSpec(tracking_uri=mlflow_server.url, experiment_name=experiment),
        }
    )
    write_config(config, path)
    client = mlflow_server.client()
    proc = subprocess.Popen(
        torchrun_cmd(path, 1),
        # The sender every 0.2 s (5 s by default): the first steps reach MLflow well before
        # the last is trained.
        env=train_env({**setup.env, "MEDSFT_TRACKING_INTERVAL_S": "0.2"}),
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        run_id = None
        # Until the first batch is wholly in MLflow: the server applies a ``log_batch`` as
        # params, metrics, then tags, each committed on its own, so the losses can be
        # readable while the batch's tags are not yet written (freezing the server then lost
        # them in a CI run). The tags are the batch's last write.
        while True:
            assert proc.poll() is None, "training ended before any metric reached MLflow"
            assert time.monotonic() < deadline
            found = client.get_experiment_by_name(experiment)
            runs = client.search_runs([found.experiment_id]) if found else []
            if (
                runs
                and client.get_metric_history(runs[0].info.run_id, "sft.loss")
                and "medsft.sft.inputHash" in client.get_run(runs[0].info.run_id).data.tags
            ):
                run_id = runs[0].info.run_id
                break
            time.sleep(0.2)
        # Silent at once (a stop takes seconds, in which a loaded machine's training could
        # end): every later request hangs until the client's own timeout.
        mlflow_server.freeze()
        assert proc.poll() is None, "training ended before the server went silent"
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        mlflow_server.kill()  # what it held unanswered is lost, never logged late
    assert proc.returncode == 0, output[-4000:]
    mlflow_server.start()  # to read what arrived (same store)

    out = setup.store(f"runs/{name}")
    steps = sorted(r["step"] for r in read_metrics(out) if "loss" in r)
    assert steps == list(range(1, STEPS + 1))  # the numbers of record, all of them
    tracking = read_progress(out)["tracking"]
    assert tracking["degraded"] and tracking["error"] and tracking["runId"] == run_id

    run = client.get_run(run_id)
    tags = run.data.tags
    assert (tags["medsft.run"], tags["medsft.namespace"], tags["medsft.generation"]) == (
        name,
        "team-a",
        "2",
    )
    assert tags["medsft.stage"] == "sft" and tags["medsft.sft.inputHash"] == "f00d"
    assert run.data.params["sft.training.maxSteps"] == str(STEPS)
    # Logged after the server had stopped: never arrived (the numbers are in storage).
    assert "medsft.sft.modelUri" not in tags
    logged = [m.step for m in client.get_metric_history(run_id, "sft.loss")]
    assert logged and set(logged) < set(steps)  # the later steps never reached MLflow
