"""The tracker against a real ``mlflow server`` (SQLite, artifacts in the test MinIO): what a
stage logs arrives, tagged; a server that is down or stops costs the stage nothing but a
``degraded`` flag in ``progress.json``, and what was queued arrives once it is back."""

from __future__ import annotations

import time
import uuid

from harness import processes
from harness.tcpproxy import TcpProxy
from medsft_pipelines.specs.jobconfig import RunInfo
from medsft_pipelines.specs.tracking import MLflowSpec
from medsft_pipelines.storage import open_store
from medsft_pipelines.storage.progress import ProgressReporter, read_progress
from medsft_pipelines.tracking import MLflowTracker

RUN = RunInfo(name="tiny", namespace="team-a", generation=3, spec_hash="abc123")


def _spec(server, **extra) -> MLflowSpec:
    return MLflowSpec(
        tracking_uri=server.url, experiment_name=f"exp-{uuid.uuid4().hex[:8]}", **extra
    )


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_stages_metrics_params_tags_and_plot_arrive_in_its_run(mlflow_server, tmp_path):
    mlflow_server.start()
    store = open_store(str(tmp_path / "telemetry"))
    tracker = MLflowTracker(_spec(mlflow_server), RUN, "sft", interval_s=0.2)
    reporter = ProgressReporter(store, "sft", min_interval_s=0, tracker=tracker)
    for step in range(1, 6):
        reporter.log_metrics({"loss": 2.0 / step, "lr": 1e-3, "mfu": None, "tag": "x"}, step=step)
        reporter.update(step=step, total=5, counts={"overlong_dropped": 2})
    tracker.log_params({"training.learningRate": 1e-3})
    plot = tmp_path / "loss_curve.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    tracker.log_artifact(plot)
    reporter.close_tracker(timeout_s=120)  # bounded; the 2-core CI machine can be slow
    state = tracker.state()
    assert not state["degraded"] and state["pending"] == 0 and state["dropped"] == 0

    client = mlflow_server.client()
    run = client.get_run(state["runId"])
    tags = run.data.tags
    assert (tags["medsft.run"], tags["medsft.namespace"], tags["medsft.generation"]) == (
        "tiny",
        "team-a",
        "3",
    )
    assert tags["medsft.stage"] == "sft"
    history = client.get_metric_history(state["runId"], "sft.loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 2.0 / s) for s in range(1, 6)]
    assert "sft.mfu" not in run.data.metrics and "sft.tag" not in run.data.metrics
    assert run.data.metrics["sft.overlong_dropped"] == 2
    assert run.data.params["training.learningRate"] == "0.001"
    assert [a.path for a in client.list_artifacts(state["runId"], "sft")] == ["sft/loss_curve.png"]
    # progress.json tells the operator where the run is (and that all is well).
    tracking = read_progress(store)["tracking"]
    assert tracking["runId"] == state["runId"] and tracking["url"].startswith(mlflow_server.url)
    assert tracking["url"].endswith(f"/runs/{state['runId']}") and not tracking["degraded"]


def test_a_given_run_is_logged_into_not_replaced(mlflow_server):
    mlflow_server.start()
    client = mlflow_server.client()
    spec = _spec(mlflow_server)
    experiment = client.create_experiment(spec.experiment_name)
    parent = client.create_run(experiment).info.run_id
    tracker = MLflowTracker(spec.model_copy(update={"run_id": parent}), RUN, "eval", interval_s=0.2)
    tracker.log_metrics({"accuracy": {"pubmedqa": 0.5}})
    state = tracker.close(timeout_s=120)
    assert state["runId"] == parent and not state["degraded"]
    assert client.get_run(parent).data.metrics == {"eval.accuracy.pubmedqa": 0.5}


def test_a_server_gone_quiet_never_blocks_the_stage(mlflow_server, monkeypatch):
    # A partition in front of the real server: requests hang until the client's own timeout
    # (the slow-tracker case; tests/sft/test_tracking_sft.py stops the server itself).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow_server.start()
    proxy = TcpProxy(mlflow_server.port).start()
    try:
        spec = _spec(mlflow_server).model_copy(
            update={"tracking_uri": f"http://127.0.0.1:{proxy.port}"}
        )
        tracker = MLflowTracker(spec, RUN, "sft", interval_s=0.2, backoff_s=0.5)
        tracker.log_metrics({"loss": 1.0}, step=1)
        _wait(lambda: tracker.state()["sent"] >= 1)
        proxy.cut()
        started = time.perf_counter()
        for step in range(2, 2002):
            tracker.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step=step)
        assert time.perf_counter() - started < 1.0  # appends only: the server is not waited for
        _wait(lambda: tracker.state()["degraded"])
        state = tracker.state()
        assert state["error"] and state["pending"] > 0 and state["dropped"] == 0
        started = time.perf_counter()
        tracker.close(timeout_s=1)
        assert time.perf_counter() - started < 1.5  # a hanging send does not hold the stage
    finally:
        proxy.close()
    history = mlflow_server.client().get_metric_history(state["runId"], "sft.loss")
    assert [m.step for m in history] == [1]


def test_an_unreachable_server_is_degraded_bounded_and_closes_in_time(tmp_path):
    # Nothing listens on this port: every send fails at once.
    spec = MLflowSpec(
        tracking_uri=f"http://127.0.0.1:{processes.free_port()}", experiment_name="never"
    )
    store = open_store(str(tmp_path))
    tracker = MLflowTracker(spec, RUN, "curation", max_pending=100, backoff_s=0.2)
    reporter = ProgressReporter(store, "curation", min_interval_s=0, tracker=tracker)
    for step in range(1, 301):
        reporter.log_metrics({"kept": step}, step=step)
    _wait(lambda: tracker.state()["error"] is not None)
    reporter.update(step=300, total=300, force=True)
    tracking = read_progress(store)["tracking"]
    assert tracking["degraded"] and tracking["runId"] is None and tracking["url"] is None
    assert tracking["pending"] == 100 and tracking["dropped"] >= 200  # bounded: oldest dropped
    started = time.perf_counter()
    tracker.close(timeout_s=2)
    assert time.perf_counter() - started < 2.5


def test_a_batch_the_server_refuses_is_dropped_not_resent_forever(mlflow_server):
    mlflow_server.start()
    tracker = MLflowTracker(_spec(mlflow_server), RUN, "sft", interval_s=0.2)
    tracker.log_params({"seed": 1})
    _wait(lambda: tracker.state()["sent"] >= 1, timeout=120)
    tracker.log_params({"seed": 2})  # MLflow refuses a param that changes value (400)
    _wait(lambda: tracker.state()["dropped"] == 1, timeout=60)
    tracker.log_metrics({"loss": 0.5}, step=3)  # what follows is not held up by it
    state = tracker.close(timeout_s=60)
    assert (
        state["degraded"] and "INVALID_PARAMETER_VALUE" in state["error"] and state["pending"] == 0
    )
    run = mlflow_server.client().get_run(state["runId"])
    assert run.data.params == {"seed": "1"} and run.data.metrics == {"sft.loss": 0.5}
