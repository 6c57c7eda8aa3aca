"""Two processes under torchrun, DeepSpeed on CPU (gloo), real shards and checkpoints on the
real MinIO: overfitting, kill + exact resume, ZeRO-3, the Hugging Face export, telemetry."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from sft.sft_helpers import (
    curated_rows,
    job_config,
    run_training,
    torchrun_cmd,
    train_env,
    write_config,
    write_dataset,
)
from transformers import AutoModelForImageTextToText

from medsft_pipelines.models import load_processor
from medsft_pipelines.sft.layout import EXPORT_MARKER, LOSS_CURVE, SUMMARY, node_checkpoints
from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store
from medsft_pipelines.storage.checkpoints import COMPLETE_MARKER, CheckpointStore, step_prefix
from medsft_pipelines.storage.progress import read_metrics, read_progress

pytestmark = pytest.mark.slow

STEPS = 40
EVERY = 4
TRAINING = {"maxSteps": STEPS, "maxSeqLength": 192, "learningRate": 3e-3}


@dataclass
class Setup:
    bucket: str
    settings: StorageSettings
    env: dict[str, str]
    storage: dict[str, Any]
    model_uri: str
    manifest_uri: str
    tmp: Path

    def store(self, prefix: str) -> ObjectStore:
        return open_store(f"s3://{self.bucket}/{prefix}", self.settings)

    def config(self, name: str, **overrides: Any) -> Path:
        training = {**TRAINING, **overrides.pop("training", {})}
        checkpointing = {"everySteps": EVERY, **overrides.pop("checkpointing", {})}
        config = job_config(
            name=name,
            output_uri=f"s3://{self.bucket}/runs/{name}",
            manifest_uri=self.manifest_uri,
            model_uri=self.model_uri,
            storage=self.storage,
            training=training,
            checkpointing=checkpointing,
            **overrides,
        )
        return write_config(config, self.tmp / f"{name}.yaml")

    def train(self, name: str, **overrides: Any) -> subprocess.CompletedProcess:
        result = run_training(self.config(name, **overrides), nproc=2, env=self.env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        return result


@pytest.fixture(scope="module")
def setup(minio, shared_data: Path, tiny_model_dir: Path, tmp_path_factory) -> Setup:
    """A bucket holding the tiny model and a curated dataset in several real shards."""
    minio.start()
    bucket = "sft-e2e"
    if not minio.client().bucket_exists(bucket):
        minio.client().make_bucket(bucket)
    settings = StorageSettings(
        endpoint=minio.endpoint,
        secure=False,
        access_key=minio.access_key,
        secret_key=minio.secret_key,
    )
    models = open_store(f"s3://{bucket}/models/tiny", settings)
    for path in sorted(tiny_model_dir.iterdir()):
        models.upload_file(path, path.name)
    write_dataset(open_store(f"s3://{bucket}/data", settings), curated_rows(shared_data), 4096)
    tmp = tmp_path_factory.mktemp("sft-e2e")
    return Setup(
        bucket=bucket,
        settings=settings,
        # Each test run gets its own scratch and model cache: nothing carries over between runs.
        # A nominal 10 GFLOP/s "peak" makes the CPU runs report an MFU figure too.
        env={**minio.env(), "MEDSFT_CACHE": str(tmp / "cache"), "MEDSFT_PEAK_TFLOPS": "0.01"},
        storage={"endpoint": minio.endpoint, "secure": False},
        model_uri=f"s3://{bucket}/models/tiny",
        manifest_uri=f"s3://{bucket}/data/manifest.json",
        tmp=tmp,
    )


def _by_step(store: ObjectStore) -> dict[int, dict]:
    """The metrics records per step; a resumed attempt's record replaces the killed one's."""
    return {r["step"]: r for r in read_metrics(store) if "loss" in r}


@pytest.fixture(scope="module")
def reference(setup: Setup) -> dict[int, dict]:
    """An uninterrupted ZeRO-2 run: the baseline the other runs are compared with."""
    setup.train("reference")
    return _by_step(setup.store("runs/reference"))


def _download_export(out: ObjectStore, local: Path) -> Path:
    for key in out.list("model/"):
        out.download_file(key, local / key.removeprefix("model/"))
    return local


@pytest.fixture(scope="module")
def reference_export(setup: Setup, reference: dict[int, dict]) -> Path:
    return _download_export(setup.store("runs/reference"), setup.tmp / "export")


def test_overfits_checkpoints_exports_and_reports(
    setup: Setup, reference: dict[int, dict], reference_export: Path, tiny_model_dir: Path
) -> None:
    out = setup.store("runs/reference")
    assert sorted(reference) == list(range(1, STEPS + 1))
    losses = [reference[s]["loss"] for s in range(1, STEPS + 1)]
    # The tiny set is seen ~10 times: the loss must fall well below its random-init value.
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert all(r["tokens"] > 0 and r["padded_tokens"] >= r["tokens"] for r in reference.values())
    assert all(0 < r["mfu"] < 10 and r["tokens_per_s"] > 0 for r in reference.values())
    assert {r["epoch"] for r in reference.values()} >= {0, 1, 2}

    # Retention keeps the newest two complete checkpoints.
    ckpts = CheckpointStore(out.child(node_checkpoints(0)))
    assert ckpts.steps() == [STEPS - EVERY, STEPS]

    # Over-long samples (maxSeqLength 192) are dropped and counted, consistently everywhere.
    progress = read_progress(out)
    summary = out.get_json(SUMMARY)
    assert progress["step"] == STEPS and progress["phase"] == "done"
    assert progress["counts"]["overlong_dropped"] > 0
    assert progress["counts"] == summary["counts"]
    assert out.get_bytes(LOSS_CURVE)[:8] == b"\x89PNG\r\n\x1a\n"

    # The export is a Hugging Face model folder that loads with stock classes and generates.
    assert out.exists(f"model/{EXPORT_MARKER}")
    model = AutoModelForImageTextToText.from_pretrained(reference_export)
    processor = load_processor(reference_export)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "Is the heart enlarged?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = processor(text=[prompt], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5
    # The exported weights are the trained ones, not the initial ones.
    initial = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()
    trained = model.state_dict()
    assert initial.keys() == trained.keys()
    assert not torch.equal(initial["lm_head.weight"], trained["lm_head.weight"])


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every worker at once, as when a pod or node dies."""
    parent = psutil.Process(proc.pid)
    victims = [*parent.children(recursive=True), parent]
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_killed_job_resumes_at_the_same_step_batch_and_loss(
    setup: Setup, reference: dict[int, dict]
) -> None:
    config = setup.config("killed")
    out = setup.store("runs/killed")
    marker = f"{node_checkpoints(0)}/{step_prefix(EVERY)}{COMPLETE_MARKER}"
    proc = subprocess.Popen(
        torchrun_cmd(config, 2), env=train_env(setup.env), cwd=Path(__file__).parents[2],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not out.exists(marker):
            assert proc.poll() is None, "the job ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        _kill_tree(proc)

    killed_at = CheckpointStore(out.child(node_checkpoints(0))).latest()
    assert killed_at is not None and killed_at < STEPS, "the job was not interrupted mid-run"

    setup.train("killed")  # same config, same output: resumes
    summary = out.get_json(SUMMARY)
    assert summary["resumed_from"] == killed_at
    assert summary["steps"] == STEPS
    resumed = _by_step(out)
    for step in range(killed_at + 1, STEPS + 1):
        # Same next batch (the sample ids on every rank) and the same loss, step after step.
        assert resumed[step]["batch_fingerprint"] == reference[step]["batch_fingerprint"], step
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], abs=1e-6), step
        assert resumed[step]["lr"] == pytest.approx(reference[step]["lr"], rel=1e-9), step
    # Counted data events continue from the checkpoint instead of restarting from zero.
    assert read_progress(out)["counts"] == read_progress(setup.store("runs/reference"))["counts"]


def test_zero3_runs_and_matches_zero2(
    setup: Setup, reference: dict[int, dict], reference_export: Path
) -> None:
    # With gradient checkpointing too: recomputation must not change the numbers either.
    setup.train(
        "zero3",
        deepspeed={"zeroStage": 3},
        training={"gradientCheckpointing": True},
        checkpointing={"everySteps": 20},
    )
    out = setup.store("runs/zero3")
    zero3 = _by_step(out)
    assert sorted(zero3) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert zero3[step]["batch_fingerprint"] == reference[step]["batch_fingerprint"]
        # Same maths, another reduction order: equal up to float rounding.
        assert zero3[step]["loss"] == pytest.approx(reference[step]["loss"], abs=1e-4), step
    assert CheckpointStore(out.child(node_checkpoints(0))).steps() == [20, 40]
    # ZeRO-3 shards the weights; the export gathers them into the same model ZeRO-2 trained.
    local = _download_export(out, setup.tmp / "zero3-export")
    exported = AutoModelForImageTextToText.from_pretrained(local).state_dict()
    zero2 = AutoModelForImageTextToText.from_pretrained(reference_export).state_dict()
    assert exported.keys() == zero2.keys()
    for name, weight in exported.items():
        torch.testing.assert_close(weight, zero2[name], atol=2e-3, rtol=0, msg=name)


def test_packed_and_unpacked_training_agree_with_less_padding(setup: Setup) -> None:
    """Every step holds the whole dataset, packed into one row or as 24 padded rows: the
    same samples, so the same loss step after step (the updates agree too), less padding."""
    common = {"maxSteps": 3, "maxSeqLength": 8192, "lengthGrouping": False}
    runs = {}
    for name, training in {
        "packed": {"packing": True, "microBatchSize": 1, "globalBatchSize": 1},
        "unpacked": {"packing": False, "microBatchSize": 24, "globalBatchSize": 24},
    }.items():
        config = setup.config(
            name, training={**common, **training}, checkpointing={"everySteps": 100}
        )
        result = run_training(config, nproc=1, env=setup.env)
        assert result.returncode == 0, result.stderr[-6000:]
        runs[name] = _by_step(setup.store(f"runs/{name}"))
    packed, unpacked = runs["packed"], runs["unpacked"]
    for step in (1, 2, 3):
        assert packed[step]["samples"] == unpacked[step]["samples"] == 24
        assert packed[step]["target_tokens"] == unpacked[step]["target_tokens"]
        assert packed[step]["loss"] == pytest.approx(unpacked[step]["loss"], abs=2e-5), step
        assert packed[step]["padded_tokens"] < unpacked[step]["padded_tokens"]
    assert packed[3]["loss"] < packed[1]["loss"]  # the steps did update the model


def test_qwen3_vl_trains_and_exports(setup: Setup, tiny_qwen3_dir: Path) -> None:
    """The same recipe on the Qwen3-VL architecture, base model from a local folder, with
    the vision tower frozen."""
    config = setup.config("qwen3", training={"maxSteps": 4}, checkpointing={"everySteps": 100})
    text = config.read_text().replace(setup.model_uri, str(tiny_qwen3_dir))
    config.write_text(text.replace("freezeVisionTower: false", "freezeVisionTower: true"))
    assert "freezeVisionTower: true" in config.read_text()
    result = run_training(config, nproc=2, env=setup.env)
    assert result.returncode == 0, result.stderr[-6000:]
    out = setup.store("runs/qwen3")
    records = _by_step(out)
    assert sorted(records) == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records.values())
    local = _download_export(out, setup.tmp / "qwen3-export")
    trained = AutoModelForImageTextToText.from_pretrained(local)
    initial = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_dir)
    assert type(trained).__name__ == "Qwen3VLForConditionalGeneration"
    before, after = initial.state_dict(), trained.state_dict()
    vision = [k for k in after if ".visual." in f".{k}"]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)  # frozen
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])  # trained
    assert type(load_processor(local)).__name__ == "ImageOnlyQwen3VLProcessor"
