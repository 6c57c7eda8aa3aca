"""MedSFTRun end to end: stages in order, generations with reuse, promotion, deletion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from controller.operator_harness import FAKE, REPO, RunDriver, resource, run_spec, wait_for

HELD = {f"{FAKE}outcome": "Running"}  # PyTorchJobs wait for the test to finish them


def test_full_run_succeeds_stage_by_stage_and_promotes(cluster, storage, operator):
    cluster.create(resource("MedSFTRun", "run", run_spec(storage), annotations=HELD))
    drive = RunDriver(cluster, storage, "run")

    # One stage at a time: nothing of SFT exists before curation succeeded.
    wait_for(lambda: cluster.find("CurationJob", "run-curation-g1"), what="the CurationJob")
    status = wait_for(
        lambda: (s := cluster.status("MedSFTRun", "run")).get("stage") == "Curation" and s,
        what="stage Curation",
    )
    assert status["currentGeneration"] == 1 and status["phase"] == "Running"
    assert cluster.find("SFTJob", "run-sft-g1") is None
    curation = cluster.get("CurationJob", "run-curation-g1")
    assert curation["metadata"]["ownerReferences"][0]["name"] == "run"
    # Effective spec: processor from the SFT model, output under the run's prefix.
    assert curation["spec"]["processor"]["model"] == f"s3://{storage.bucket}/models/tiny"
    assert curation["spec"]["output"]["uri"] == drive.output(1, "curation")
    drive.curation()

    sft = wait_for(lambda: cluster.find("SFTJob", "run-sft-g1"), what="the SFTJob")
    assert sft["spec"]["dataset"] == {"curationJobRef": {"name": "run-curation-g1"}}
    drive.sft()
    evaljob = wait_for(lambda: cluster.find("EvalJob", "run-eval-g1"), what="the EvalJob")
    assert evaljob["spec"]["model"] == {"sftJobRef": {"name": "run-sft-g1"}}
    drive.eval(scores={"pubmedqa": 0.6, "medqa": 0.7})

    status = cluster.wait_phase("MedSFTRun", "run", "Succeeded")
    assert status["stage"] == "Done"
    assert abs(status["score"] - 0.65) < 1e-9
    (record,) = status["history"]
    assert (
        record["generation"] == 1 and record["phase"] == "Succeeded" and record["promoted"] is True
    )
    assert (record["curationJob"], record["sftJob"], record["evalJob"]) == (
        "run-curation-g1",
        "run-sft-g1",
        "run-eval-g1",
    )
    assert record["scores"] == {
        "pubmedqa": 0.6,
        "medqa": 0.7,
        "mean": 0.65,
        "mean.in": 0.6,
        "mean.out": 0.7,
    }
    assert status["promotedGeneration"] == 1
    assert status["promotedModelUri"] == f"{drive.output(1, 'sft')}/model"
    assert cluster.condition("MedSFTRun", "run", "Promoted")["status"] == "True"
    pointer = json.loads(
        storage.store(f"s3://{storage.bucket}/{cluster.namespace}/run").get_bytes("promoted.json")
    )
    assert pointer["generation"] == 1 and pointer["modelUri"] == status["promotedModelUri"]

    # `kubectl get medsft` tells where everything stands.
    table = cluster.kube.kubectl("get", "medsft", "-n", cluster.namespace).stdout
    run_row = next(
        line for line in table.splitlines() if line.startswith("medsftrun.medsft.io/run ")
    )
    assert "Done" in run_row and "Succeeded" in run_row and "0.65" in run_row
    assert (
        "curationjob.medsft.io/run-curation-g1" in table
        and "evaljob.medsft.io/run-eval-g1" in table
    )
    cluster.wait_events("run", "Created", "Promoted", "Succeeded")
    assert operator.metric("medsft_resources", kind="MedSFTRun", phase="Succeeded") == 1
    assert operator.metric("medsft_reconcile_duration_seconds_count", kind="MedSFTRun") > 0


def test_a_failed_stage_fails_the_run_with_its_reason(cluster, storage, operator):
    cluster.create(resource("MedSFTRun", "doomed", run_spec(storage), annotations=HELD))
    wait_for(lambda: cluster.job("doomed-curation-g1-work"), what="the worker Job")
    cluster.finish_job("doomed-curation-g1-work", succeeded=False, reason="DeadlineExceeded")
    status = cluster.wait_phase("MedSFTRun", "doomed", "Failed")
    assert cluster.condition("MedSFTRun", "doomed", "Failed")["reason"] == "CurationJobFailed"
    assert "DeadlineExceeded" in status["message"]
    assert status["history"][0]["phase"] == "Failed"
    assert cluster.find("SFTJob", "doomed-sft-g1") is None


def test_spec_edits_start_generations_that_reuse_unchanged_stages(cluster, storage, operator):
    spec = run_spec(storage, retraining={"historyLimit": 2})
    cluster.create(resource("MedSFTRun", "git", spec, annotations=HELD))
    drive = RunDriver(cluster, storage, "git")
    drive.curation()
    drive.sft(finish=False)  # training is under way...

    # ...when the eval settings change in git: generation 2, curation and SFT unchanged.
    cluster.patch("MedSFTRun", "git", {"spec": {"eval": {"spec": {"generation": {"seeds": 3}}}}})
    status = wait_for(
        lambda: (s := cluster.status("MedSFTRun", "git")).get("currentGeneration") == 2 and s,
        what="generation 2",
    )
    record = wait_for(
        lambda: (h := cluster.status("MedSFTRun", "git")["history"][0]).get("sftJob") and h,
        what="generation 2 to resolve its SFT stage",
    )
    assert (record["curationJob"], record["sftJob"]) == ("git-curation-g1", "git-sft-g1")
    assert (
        cluster.find("CurationJob", "git-curation-g2") is None
        and cluster.find("SFTJob", "git-sft-g2") is None
    )
    assert cluster.get("SFTJob", "git-sft-g1")["status"]["phase"] == "Running"  # not restarted
    drive.sft(1)  # the running training finishes and serves generation 2
    drive.eval(2)
    status = cluster.wait_phase("MedSFTRun", "git", "Succeeded")
    assert [r["generation"] for r in status["history"]] == [2, 1]
    assert status["history"][0]["evalJob"] == "git-eval-g2"
    assert status["history"][1].get("phase") is None  # superseded before it finished
    assert cluster.find("EvalJob", "git-eval-g1") is None
    cluster.wait_events("git", "GenerationStarted", "StageReused")

    # A new learning rate re-trains and re-evaluates, and still reuses the dataset.
    cluster.patch(
        "MedSFTRun", "git", {"spec": {"sft": {"spec": {"training": {"learningRate": 1e-5}}}}}
    )
    drive.sft(3)
    drive.eval(3)
    status = cluster.wait_phase("MedSFTRun", "git", "Succeeded")
    assert status["currentGeneration"] == 3
    assert (status["history"][0]["curationJob"], status["history"][0]["sftJob"]) == (
        "git-curation-g1",
        "git-sft-g3",
    )
    assert sorted(c["metadata"]["name"] for c in cluster.list("CurationJob")) == ["git-curation-g1"]

    # Generation 4 pushes generation 2 out of the history (limit 2): its children that no
    # kept generation uses go; the dataset and the newest model stay.
    cluster.patch("MedSFTRun", "git", {"spec": {"eval": {"spec": {"generation": {"seeds": 2}}}}})
    drive.eval(4)
    status = cluster.wait_phase("MedSFTRun", "git", "Succeeded")
    assert [r["generation"] for r in status["history"]] == [4, 3]
    assert status["history"][0]["sftJob"] == "git-sft-g3"
    wait_for(
        lambda: cluster.find("SFTJob", "git-sft-g1") is None, what="generation 2's SFTJob deleted"
    )
    wait_for(
        lambda: cluster.find("EvalJob", "git-eval-g2") is None,
        what="generation 2's EvalJob deleted",
    )
    assert cluster.find("CurationJob", "git-curation-g1") and cluster.find("EvalJob", "git-eval-g3")


def test_dropping_an_eval_only_benchmark_keeps_the_dataset_and_the_model(
    cluster, storage, operator
):
    """Curation protects only pubmedqa itself; medqa is protected because eval scores it.
    Dropping medqa from eval leaves the dataset valid (it was decontaminated against a
    superset), so generation 2 reuses curation and SFT: the reconciler reads the benchmark
    set from generation 1's CurationJob (issue 22). The old planner re-hashed the smaller
    set and re-curated and re-trained."""
    spec = run_spec(storage)
    spec["curation"]["spec"]["decontamination"] = {"benchmarks": [{"name": "pubmedqa"}]}
    cluster.create(resource("MedSFTRun", "drop", spec, annotations=HELD))
    drive = RunDriver(cluster, storage, "drop")
    drive.curation()
    protected = cluster.get("CurationJob", "drop-curation-g1")["spec"]["decontamination"]
    assert [b["name"] for b in protected["benchmarks"]] == ["medqa", "pubmedqa"]
    drive.sft()
    drive.eval()
    cluster.wait_phase("MedSFTRun", "drop", "Succeeded")

    only = [{"name": "pubmedqa", "distribution": "in"}]
    cluster.patch("MedSFTRun", "drop", {"spec": {"eval": {"spec": {"benchmarks": only}}}})
    drive.eval(2, scores={"pubmedqa": 0.6})
    status = cluster.wait_phase("MedSFTRun", "drop", "Succeeded")
    record = status["history"][0]
    assert record["generation"] == 2
    assert (record["curationJob"], record["sftJob"], record["evalJob"]) == (
        "drop-curation-g1",
        "drop-sft-g1",
        "drop-eval-g2",
    )
    assert cluster.find("CurationJob", "drop-curation-g2") is None


def test_deletion_applies_the_artifact_policy(cluster, storage, operator):
    for name, policy in (("keep", "Retain"), ("wipe", "Delete")):
        cluster.create(
            resource("MedSFTRun", name, run_spec(storage, artifactPolicy=policy), annotations=HELD)
        )
        wait_for(
            lambda n=name: cluster.find("CurationJob", f"{n}-curation-g1"),
            what=f"{name}'s CurationJob",
        )
        storage.write_progress(f"{storage.root(cluster.namespace, name)}/curation", 1, 2)
    other = (
        f"s3://{storage.bucket}/{cluster.namespace}/keeper-of-secrets"  # shares the prefix's start
    )
    storage.store(other).put_json("x.json", {})
    # The Delete policy's deletion handler holds the finalizer.
    wait_for(
        lambda: (
            "medsft.io/finalizer"
            in (cluster.get("MedSFTRun", "wipe")["metadata"].get("finalizers") or [])
        ),
        what="the finalizer",
    )

    for name in ("keep", "wipe"):
        cluster.delete("MedSFTRun", name)
    for name in ("keep", "wipe"):
        wait_for(lambda n=name: cluster.find("MedSFTRun", n) is None, what=f"{name} deleted")
        # Children go by garbage collection.
        wait_for(
            lambda n=name: cluster.find("CurationJob", f"{n}-curation-g1") is None,
            what=f"{name}'s children collected",
        )
    assert storage.keys(f"{cluster.namespace}/keep/"), "Retain keeps the artifacts"
    assert storage.keys(f"{cluster.namespace}/wipe/") == [], "Delete removes the run's prefix"
    assert storage.keys(f"{cluster.namespace}/keeper-of-secrets/") == [
        f"{cluster.namespace}/keeper-of-secrets/x.json"
    ]
    cluster.wait_events("wipe", "ArtifactsDeleted")


def _next_release(tmp_path: Path) -> Path:
    """A copy of the data-plane package as a later release would ship it: TrainingSpec gains
    a defaulted field and GenerationSpec's temperature default changes."""
    copy = tmp_path / "next-release"
    shutil.copytree(REPO / "pipelines", copy, ignore=shutil.ignore_patterns("__pycache__"))
    sft = copy / "medsft_pipelines" / "specs" / "sft.py"
    text = sft.read_text()
    anchor = "    log_every_steps: Annotated[int, Field(ge=1)] = 1\n"
    assert anchor in text
    sft.write_text(
        text.replace(anchor, anchor + '    label_smoothing: float = 0.0\n    """New."""\n')
    )
    ev = copy / "medsft_pipelines" / "specs" / "eval.py"
    text = ev.read_text()
    anchor = "temperature: Annotated[float, Field(ge=0, le=2)] = 0.6"
    assert anchor in text
    ev.write_text(text.replace(anchor, anchor.replace("0.6", "0.7")))
    return copy


def test_an_upgrade_with_new_defaults_does_not_start_a_generation(
    cluster, storage, start_operator, tmp_path
):
    old = start_operator("operator-old")
    cluster.create(resource("MedSFTRun", "up", run_spec(storage), annotations=HELD))
    drive = RunDriver(cluster, storage, "up")
    drive.curation()
    drive.sft(finish=False)
    old.stop()

    release = _next_release(tmp_path)
    pythonpath = os.pathsep.join([str(REPO / "operator"), str(release)])
    probe = (
        "from medsft_pipelines.specs.sft import TrainingSpec as T;"
        "from medsft_pipelines.specs.eval import GenerationSpec as G;"
        "assert 'label_smoothing' in T.model_fields and G().temperature == 0.7"
    )
    subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": pythonpath}, check=True
    )
    start_operator("operator-new", PYTHONPATH=pythonpath).wait_leading()

    # The new release carries generation 1 to its end: no generation 2, nothing re-run.
    drive.sft(1)
    drive.eval(1)
    status = cluster.wait_phase("MedSFTRun", "up", "Succeeded")
    assert status["currentGeneration"] == 1 and len(status["history"]) == 1
    assert sorted(c["metadata"]["name"] for c in cluster.list("CurationJob")) == ["up-curation-g1"]
    assert sorted(c["metadata"]["name"] for c in cluster.list("SFTJob")) == ["up-sft-g1"]
    assert "GenerationStarted" not in {r for r, _ in cluster.events("up")}
