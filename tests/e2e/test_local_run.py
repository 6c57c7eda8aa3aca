"""The embedded default end to end: the README's first command, as a newcomer runs it.

``test_newcomer_clone_runs_make_demo`` clones the repository (its committed state) into an
empty folder — nothing beside it, so no ``../shared`` — and runs ``make demo`` there against
this venv (the one documented shortcut: ``VENV=`` names an existing environment, so only its
creation is skipped). That is curation on the vendored PubMedQA sample, SFT of the tiny model
under torchrun with DeepSpeed on CPU (2 ranks), and eval of the untrained and the fine-tuned
model on PubMedQA and VQA-RAD. ``test_quickstart_on_real_minio`` runs the same example with
storage on the real MinIO server. Both check every artifact; the first also that the
fine-tuned model beats its untrained self on PubMedQA and that the terminal stays quiet.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from harness.testbin import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
RUN_ROOT = "medsft/default/quickstart/g1"  # <bucket>/<namespace>/<run>/g<generation>
ARTIFACTS = [  # the final table, in order: where a person looks afterwards
    "dataset manifest",
    "curation report",
    "trace-length plot",
    "fine-tuned model",
    "loss curve",
    "eval report",
    "eval plots",
]
# Library chatter that belongs in the stage logs, never on the terminal.
NOISE = ["OMP_NUM_THREADS", "real_accelerator", "Setting accelerator", "findfont", "Warning"]


def check_artifacts(read: callable) -> dict:
    """Every stage wrote what the next one and a person need; returns the eval results."""
    manifest = json.loads(read("curation/manifest.json"))
    curation_report = json.loads(read("curation/report/report.json"))
    removed = curation_report["removed_by_reason"]  # the recipe's report, next to the dataset
    # The vendored sample carries the 32 PubMedQA test items the eval uses: decontamination
    # removes them. maxSamples then takes 128 questions before any trace is looked at (a
    # teacher is paid for no more); rationales over lengths.maxTokens go last.
    assert removed["decontamination"] == 32 and removed["source_cap"] > 0
    assert manifest["numRows"] == 128 - removed.get("too_long", 0) > 64
    assert sum(s["numRows"] for s in manifest["shards"]) == manifest["numRows"]

    summary = json.loads(read("sft/train_summary.json"))
    assert summary["steps"] > 0
    assert summary["dataset_manifest_uri"].endswith("curation/manifest.json")
    Image.open(io.BytesIO(read("sft/loss_curve.png"))).verify()
    assert json.loads(read("sft/model/config.json"))["model_type"].startswith("qwen2_5_vl")

    results = json.loads(read("eval/results.json"))
    assert [b["name"] for b in results["benchmarks"]] == ["pubmedqa", "vqa-rad"]
    assert results["baseline"] == "untrained"
    for bench in results["benchmarks"]:
        for label in ("model", "untrained"):  # same items, same seeds for both
            scores = bench["scores"][label]
            assert bench["items"] == 16 and scores["seeds"] == 1
            assert 0.0 <= scores["accuracy"] <= 1.0
    Image.open(io.BytesIO(read("eval/plots/response_length.png"))).verify()
    report = read("eval/report.md").decode()
    assert "## untrained vs model" in report and "How to read these numbers" in report
    return results


def check_tracked(server, experiment: str, read: callable, results: dict) -> None:
    """The local run is one MLflow run of ``experiment``, tagged; every stage's numbers in it."""
    client = server.client()
    found = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([found.experiment_id])  # the stages logged into the one run
    tags = run.data.tags
    assert (tags["medsft.run"], tags["medsft.namespace"], tags["medsft.generation"]) == (
        "quickstart", "default", "1",
    )  # fmt: skip
    assert {"medsft.curation.inputHash", "medsft.sft.inputHash", "medsft.eval.inputHash"} <= set(
        tags
    )
    summary = json.loads(read("sft/train_summary.json"))
    assert tags["medsft.sft.inputHash"] == summary["spec_hash"]
    losses = client.get_metric_history(run.info.run_id, "sft.loss")
    assert losses and max(m.step for m in losses) == summary["steps"]
    metrics = run.data.metrics
    assert metrics["curation.rows"] == json.loads(read("curation/manifest.json"))["numRows"]
    pubmedqa = results["benchmarks"][0]["scores"]["model"]["accuracy"]
    assert metrics["eval.pubmedqa.model.accuracy"] == pytest.approx(pubmedqa)
    assert run.data.params["sft.training.learningRate"]
    assert tags["medsft.sft.modelUri"].endswith("/g1/sft/model")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "sft")] == ["sft/loss_curve.png"]


def table_rows(stdout: str) -> dict[str, str]:
    """The final WHAT/WHERE table: artifact name -> location (folded lines joined)."""
    rows: dict[str, str] = {}
    current = None
    for line in stdout[stdout.index("WHAT") :].splitlines()[1:]:
        name = next((a for a in ARTIFACTS if line.strip().startswith(a)), None)
        if name:
            current = name
            rows[name] = line.strip()[len(name) :].strip()
        elif current and line.strip():
            rows[current] += line.strip()
    return rows


def test_newcomer_clone_runs_make_demo(tmp_path):
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone = tmp_path / "medsft"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["medsft"]  # nothing beside it

    venv = Path(sys.prefix)
    stamp = f"{venv}/.installed"
    # A newcomer's shell, not the `make test` this runs under: an inherited MAKELEVEL makes
    # the inner make print "make[1]: Leaving directory ..." into the output read below.
    outer_make = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}
    env = {
        **{k: v for k, v in os.environ.items() if k not in outer_make},
        "MEDSFT_S3_ENDPOINT": "",
        # The clone's code, not whatever checkout the venv's editable install points at.
        "PYTHONPATH": f"{clone / 'operator'}{os.pathsep}{clone / 'pipelines'}",
    }
    proc = subprocess.run(
        # -o: never (re)build the shared venv from the clone; everything else is `make demo`.
        ["make", "-o", stamp, "demo", f"VENV={venv}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    root = clone / ".medsft" / "storage" / RUN_ROOT
    results = check_artifacts(lambda key: (root / key).read_bytes())

    # The final table lists every artifact, each where it really is.
    rows = table_rows(proc.stdout)
    assert list(rows) == ARTIFACTS
    for what, where in rows.items():
        assert Path(where).exists(), f"{what}: {where} does not exist"
        assert Path(where).resolve().is_relative_to(clone.resolve())

    # The fine-tuned model beats its untrained self on PubMedQA: answer format and accuracy.
    pubmedqa = results["benchmarks"][0]
    assert pubmedqa["parseable"]["model"] > pubmedqa["parseable"]["untrained"]
    assert pubmedqa["scores"]["model"]["accuracy"] > pubmedqa["scores"]["untrained"]["accuracy"]
    # ... and the terminal says so: the comparison row of PubMedQA, deltas positive.
    row = next(
        line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["pubmedqa"]
    )
    # pubmedqa, items, parseable: untrained, fine-tuned, Δ, accuracy: untrained, fine-tuned, Δ
    parseable_delta, accuracy_delta = float(row[4]), float(row[7])
    assert parseable_delta > 0 and accuracy_delta > 0

    # Quiet: a handful of stage lines on the terminal, the libraries' chatter in the logs.
    terminal = proc.stdout + proc.stderr
    for noise in NOISE:
        assert noise not in terminal, f"{noise!r} reached the terminal"
    stage_lines = [line for line in proc.stderr.splitlines() if re.match(r"^✓ \w+", line)]
    assert [line.split()[1] for line in stage_lines][-3:] == ["curation", "sft", "eval"]
    sft_log = (clone / ".medsft" / "runs" / "quickstart" / "sft.log").read_text()
    assert "OMP_NUM_THREADS" in sft_log or "accelerator" in sft_log  # it went here instead


def test_quickstart_on_real_minio(tmp_path, minio, mlflow_server):
    minio.start()
    mlflow_server.start()
    s3 = minio.client()
    if not s3.bucket_exists("medsft"):
        s3.make_bucket("medsft")
    # The example's paths are relative to the repository root: run in a folder that has it.
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "examples").symlink_to(REPO_ROOT / "examples")
    # Tracked in a real MLflow server (docs/tracking.md): the same run, its numbers also there.
    experiment = f"local-{tmp_path.name}"
    tracked = yaml.safe_load(QUICKSTART.read_text())
    tracked["spec"]["tracking"] = {
        "mlflow": {"trackingUri": mlflow_server.url, "experimentName": experiment}
    }
    manifest = work / "quickstart-tracked.yaml"
    manifest.write_text(yaml.safe_dump(tracked))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "medsft"), "run", "--local", str(manifest)],
        cwd=work,
        env={**os.environ, **minio.env()},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not (work / ".medsft" / "storage").exists()

    def read(key: str) -> bytes:
        return s3.get_object("medsft", f"default/quickstart/g1/{key}").read()

    results = check_artifacts(read)
    check_tracked(mlflow_server, experiment, read, results)
    assert "eval report" in proc.stdout and "s3://medsft/default/quickstart/g1/eval" in "".join(
        proc.stdout.split()
    )
