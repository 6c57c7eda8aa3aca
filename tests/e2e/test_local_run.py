"""The embedded default end to end: ``medsft run --local examples/quickstart.yaml``.

Runs the real CLI in a subprocess — curation on the vendored PubMedQA sample, SFT of the tiny
model under torchrun with DeepSpeed on CPU (2 ranks), eval on PubMedQA and VQA-RAD — once
on ``file://`` storage (what ``make demo`` does) and once against the real MinIO server.
Scores are near chance (the model is random); the tests check that every stage produced
what the next one and a person need.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from harness.testbin import REPO_ROOT

pytestmark = pytest.mark.slow
QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
RUN_ROOT = "medsft/default/quickstart/g1"  # <bucket>/<namespace>/<run>/g<generation>


def run_quickstart(tmp_path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The example's paths are relative to the repository root: run in a folder that has it.
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "examples").symlink_to(REPO_ROOT / "examples")
    medsft = Path(sys.executable).parent / "medsft"
    return subprocess.run(
        [str(medsft), "run", "--local", str(QUICKSTART)],
        cwd=work,
        env={**os.environ, **extra_env},
        capture_output=True,
        text=True,
        timeout=1200,
    )


def check_artifacts(read: callable, printed: str) -> None:
    manifest = json.loads(read("curation/manifest.json"))
    curation_report = json.loads(read("curation/report/report.json"))
    removed = curation_report["removed_by_reason"]  # the recipe's report, next to the dataset
    # maxSamples takes 96 of the quickstart's one source's questions before any trace is
    # looked at (a teacher is paid for no more); rationales over lengths.maxTokens then go.
    assert removed["source_cap"] > 0 and curation_report["sources"]["pubmedqa"]["rows_read"] > 96
    assert manifest["numRows"] == 96 - removed.get("too_long", 0)
    assert sum(s["numRows"] for s in manifest["shards"]) == manifest["numRows"]

    summary = json.loads(read("sft/train_summary.json"))
    assert summary["steps"] == 8
    assert summary["dataset_manifest_uri"].endswith("curation/manifest.json")
    Image.open(io.BytesIO(read("sft/loss_curve.png"))).verify()
    assert json.loads(read("sft/model/config.json"))["model_type"].startswith("qwen2_5_vl")

    results = json.loads(read("eval/results.json"))
    assert [b["name"] for b in results["benchmarks"]] == ["pubmedqa", "vqa-rad"]
    for bench in results["benchmarks"]:
        scores = bench["scores"]["model"]
        assert bench["items"] == 16 and scores["seeds"] == 2
        assert 0.0 <= scores["accuracy"] <= 1.0
        assert scores["length"]["mean"] > 0
    Image.open(io.BytesIO(read("eval/plots/response_length.png"))).verify()
    assert "eval report" in printed and "loss curve" in printed


def test_quickstart_on_local_files(tmp_path):
    proc = run_quickstart(tmp_path, {"MEDSFT_S3_ENDPOINT": ""})
    assert proc.returncode == 0, proc.stderr[-4000:]
    root = tmp_path / "checkout" / ".medsft" / "storage" / RUN_ROOT
    check_artifacts(lambda key: (root / key).read_bytes(), proc.stdout)
    # The person is told where the reports are (the table may fold long paths).
    assert str(root) in "".join(proc.stdout.split())


def test_quickstart_on_real_minio(tmp_path, minio):
    minio.start()
    s3 = minio.client()
    if not s3.bucket_exists("medsft"):
        s3.make_bucket("medsft")
    proc = run_quickstart(tmp_path, minio.env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not (tmp_path / "checkout" / ".medsft" / "storage").exists()

    def read(key: str) -> bytes:
        return s3.get_object("medsft", f"default/quickstart/g1/{key}").read()

    check_artifacts(read, proc.stdout)
