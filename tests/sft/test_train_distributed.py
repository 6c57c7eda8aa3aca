"""Two processes under torchrun, DeepSpeed on CPU (gloo), real shards and checkpoints on the
real MinIO: overfitting, kill + exact resume, ZeRO-3, the Hugging Face export, telemetry."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from sft.sft_helpers import (
    PausableProxy,
    curated_rows,
    job_config,
    pubmedqa_rows,
    run_training,
    torchrun_cmd,
    torchrun_node_cmd,
    train_env,
    write_config,
    write_dataset,
    write_sources,
)
from transformers import AutoModelForImageTextToText

from medsft_pipelines.models import load_processor
from medsft_pipelines.sft.layout import EXPORT_MARKER, LOSS_CURVE, SUMMARY, node_checkpoints
from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store
from medsft_pipelines.storage.checkpoints import COMPLETE_MARKER, CheckpointStore, step_prefix
from medsft_pipelines.storage.progress import read_metrics, read_progress

# One xdist worker for the whole module: its module-scoped runs (the reference run, the
# default recipe) are each a real training of a minute or more, and tests of the module
# spread over both workers trained each of them once per worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sft-distributed")]

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
            manifest_uri=overrides.pop("manifest_uri", self.manifest_uri),
            model_uri=self.model_uri,
            storage=overrides.pop("storage", self.storage),
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
def setup(
    minio, shared_data: Path, tiny_model_dir: Path, tmp_path_factory, request: pytest.FixtureRequest
) -> Setup:
    """A bucket holding the tiny model and a curated dataset in several real shards. One bucket
    per module that uses the fixture (another module imports it): datasets are write-once, and
    a second module's setup on the same MinIO would find this one's."""
    minio.start()
    module = request.module.__name__.rsplit(".", 1)[-1]
    bucket = "sft-" + module.removeprefix("test_").replace("_", "-")[:40]
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
    # Three sources of different sizes and lengths, one shard folder each (as curation
    # writes them), 37 samples: no batch size divides it.
    rows = curated_rows(shared_data, n_text=20, n_image=10)
    write_sources(
        open_store(f"s3://{bucket}/mixed", settings),
        [rows[:20], rows[20:], pubmedqa_rows(shared_data, 7, skip=20, context=True)],
        3000,
    )
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
    assert summary["attention_kernel"] == "sdpa"  # CPU: varlen_attn is CUDA-only
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


def _kill_after_a_checkpoint(
    config: Path, nproc: int, env: dict[str, str], ckpts: CheckpointStore
) -> None:
    """Start the job and SIGKILL it as soon as a checkpoint is complete."""
    proc = subprocess.Popen(
        torchrun_cmd(config, nproc), env=train_env(env), cwd=Path(__file__).parents[2],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while not ckpts.steps():
            assert proc.poll() is None, "the job ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 900 s"
            time.sleep(0.05)
    finally:
        _kill_tree(proc)


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


# == the default recipe, small ===================================================================

# The paper's defaults but sizes: epochs (no maxSteps), packing, length grouping, ZeRO-3 with
# gradient checkpointing, 2 ranks, 3 mixed sources, keepLast 1.
DEFAULT_RECIPE = {
    "maxSteps": None,
    "epochs": 2,
    "maxSeqLength": 640,
    "microBatchSize": 2,
    "globalBatchSize": 4,
    "batchUnit": "samples",
    "packing": True,
    "lengthGrouping": True,
    "gradientCheckpointing": True,
    "logEverySteps": 1,
}


def _default_recipe(setup: Setup, name: str) -> Path:
    return setup.config(
        name,
        manifest_uri=f"s3://{setup.bucket}/mixed/manifest.json",
        training=DEFAULT_RECIPE,
        deepspeed={"zeroStage": 3},
        checkpointing={"everySteps": 3, "keepLast": 1},
    )


def _mixed_ids(setup: Setup) -> list[str]:
    from medsft_pipelines.storage.shards import DatasetReader

    reader = DatasetReader(setup.store("mixed"), columns=["id"])
    return [s["id"] for s in reader.iter_samples(0, 0)]


def _times_seen(records: dict[int, dict]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for record in records.values():
        for rank_ids in record["sample_ids"]:
            for sample in rank_ids:
                seen[sample] = seen.get(sample, 0) + 1
    return seen


@pytest.fixture(scope="module")
def default_recipe(setup: Setup) -> tuple[dict[int, dict], dict]:
    """The default recipe, small, uninterrupted."""
    run_env = {**setup.env, "MEDSFT_METRICS_SAMPLE_IDS": "1"}
    result = run_training(_default_recipe(setup, "defaults"), nproc=2, env=run_env)
    assert result.returncode == 0, result.stderr[-6000:]
    out = setup.store("runs/defaults")
    return _by_step(out), out.get_json(SUMMARY)


def test_epochs_are_exact_the_schedule_ends_and_batches_are_what_the_docs_say(
    setup: Setup, default_recipe: tuple[dict[int, dict], dict]
) -> None:
    records, summary = default_recipe
    # The run took exactly the planned steps and every sample exactly `epochs` times.
    assert summary["steps"] == summary["total_steps_planned"] == sum(summary["steps_per_epoch"])
    assert summary["epochs_completed"] == 2
    assert sorted(records) == list(range(1, summary["steps"] + 1))
    assert _times_seen(records) == dict.fromkeys(_mixed_ids(setup), 2)
    assert summary["counts"]["overlong_dropped"] == 0
    # The cosine schedule ran to its end: the last step used its last value before zero.
    total = summary["total_steps_planned"]
    warmup = math.ceil(0.1 * total)
    last = 3e-3 * 0.5 * (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup)))
    assert records[total]["lr"] == pytest.approx(last, rel=1e-6)
    assert summary["final_lr"] == pytest.approx(0.0, abs=1e-12)
    # batchUnit: samples: every step holds globalBatchSize (4) samples, 2 a rank, packed into
    # as many rows as they need; an epoch's last step holds the rest (37 = 9 x 4 + 1).
    ends = set(accumulate(summary["steps_per_epoch"]))
    assert summary["steps_per_epoch"] == [10, 10]
    for step, record in records.items():
        ids = [i for rank_ids in record["sample_ids"] for i in rank_ids]
        assert record["samples"] == len(ids) == (1 if step in ends else 4), step
        assert 0 < record["tokens"] <= record["rows"] * 640, step
    assert sum(r["rows"] for r in records.values()) < sum(r["samples"] for r in records.values())
    assert {r["epoch"] for r in records.values()} == {0, 1}


def test_default_recipe_killed_mid_epoch_resumes_and_sees_every_sample_epochs_times(
    setup: Setup, default_recipe: tuple[dict[int, dict], dict]
) -> None:
    reference, summary = default_recipe
    config = _default_recipe(setup, "defaults-killed")
    out = setup.store("runs/defaults-killed")
    run_env = {**setup.env, "MEDSFT_METRICS_SAMPLE_IDS": "1"}
    ckpts = CheckpointStore(out.child(node_checkpoints(0)))
    _kill_after_a_checkpoint(config, 2, run_env, ckpts)
    killed_at = ckpts.latest()
    assert killed_at is not None and killed_at not in set(accumulate(summary["steps_per_epoch"]))

    result = run_training(config, nproc=2, env=run_env)
    assert result.returncode == 0, result.stderr[-6000:]
    resumed = out.get_json(SUMMARY)
    assert resumed["resumed_from"] == killed_at
    assert resumed["steps"] == resumed["total_steps_planned"] == summary["steps"]
    records = _by_step(out)  # the resumed attempt's records replace the killed one's
    assert _times_seen(records) == dict.fromkeys(_mixed_ids(setup), 2)
    for step in range(1, summary["steps"] + 1):
        assert records[step]["batch_fingerprint"] == reference[step]["batch_fingerprint"], step
        assert records[step]["loss"] == pytest.approx(reference[step]["loss"], abs=1e-5), step


# == many nodes ==================================================================================


def test_two_nodes_resume_from_the_last_step_complete_on_both(setup: Setup, minio) -> None:
    """Node 1's storage goes quiet after its step-2 upload; node 0 uploads step 4 (and, with
    keepLast 1, would prune step 2); then both nodes die. The restart must resume from step 2,
    the newest step complete on both nodes, not from scratch."""
    proxy = PausableProxy(minio.endpoint)
    config = setup.config(
        "two-nodes",
        storage={},  # the endpoint comes from each node's environment
        training={"maxSteps": 8, "packing": False},
        checkpointing={"everySteps": 2, "keepLast": 1},
    )
    out = setup.store("runs/two-nodes")
    node0 = CheckpointStore(out.child(node_checkpoints(0)))
    node1 = CheckpointStore(out.child(node_checkpoints(1)))

    def start(port: int) -> list[subprocess.Popen]:
        procs = []
        for node in (0, 1):
            env = {
                **setup.env,
                "MEDSFT_WORK_DIR": str(setup.tmp / f"two-nodes-{node}"),
                "MEDSFT_CACHE": str(setup.tmp / f"cache-node-{node}"),
            }
            if node == 1:
                env["MEDSFT_S3_ENDPOINT"] = proxy.endpoint
            command = torchrun_node_cmd(config, node, 2, port)
            procs.append(
                subprocess.Popen(
                    command,
                    env=train_env(env),
                    cwd=Path(__file__).parents[2],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return procs

    from harness.processes import free_port

    procs = start(free_port())
    try:
        deadline = time.monotonic() + 600
        while not node1.is_complete(2):
            assert all(p.poll() is None for p in procs), "a node ended before step 2"
            assert time.monotonic() < deadline, "no step-2 checkpoint on node 1 within 600 s"
            time.sleep(0.02)
        proxy.pause()  # node 1 cannot upload step 4
        while not node0.is_complete(4):
            assert time.monotonic() < deadline, "node 0 did not upload step 4"
            time.sleep(0.02)
        time.sleep(1.0)  # node 0's pruning after its upload has run
    finally:
        for proc in procs:
            _kill_tree(proc)
        proxy.resume()
    assert not node1.is_complete(4)
    # Step 2 kept: the newest step complete on both nodes. Node 0 may have uploaded step 6 in
    # the second before the kill; it keeps every step from the common one on, so 6 may stay.
    kept = node0.steps()
    assert kept[:2] == [2, 4] and set(kept) <= {2, 4, 6}, kept

    procs = start(free_port())
    try:
        for proc in procs:
            assert proc.wait(timeout=600) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill_tree(proc)
        proxy.close()
    summary = out.get_json(SUMMARY)
    assert summary["resumed_from"] == 2 and summary["steps"] == 8


# == the operator's retries ======================================================================


def test_the_operators_next_attempt_resumes_from_the_checkpoint(setup: Setup, minio) -> None:
    """The operator's builders give attempt 0 and attempt 1 of an SFTJob; the real trainer
    runs each with what the PyTorchJob's pod gets (job config from the ConfigMap, the
    container's environment). Attempt 0 dies after a checkpoint; attempt 1 starts from it."""
    import yaml

    from medsft_operator.api.kinds import SFTJobSpec
    from medsft_operator.builders.stage_children import sft_children, stage_inputs
    from medsft_pipelines.specs.common import StorageSpec

    manifest = {
        "apiVersion": "medsft.io/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "ft", "namespace": "ns", "uid": "u-9"},
        "spec": {
            "model": {"uri": setup.model_uri},
            "dataset": {"manifestUri": setup.manifest_uri},
            "gpusPerNode": 1,
            # Rows, as job_config's runs: steps of packed rows, long enough for the kill to
            # land between the first checkpoint and the end.
            "training": {**TRAINING, "maxSteps": 8, "globalBatchSize": 2, "microBatchSize": 1,
                         "batchUnit": "rows", "precision": "fp32", "gradientCheckpointing": False},
            "checkpointing": {"everySteps": 2, "keepLast": 1},
            "deepspeed": {"zeroStage": 2},
        },
    }  # fmt: skip
    storage = StorageSpec(endpoint=minio.endpoint, bucket=setup.bucket, secure=False)
    spec = SFTJobSpec.model_validate(manifest["spec"])
    inputs = stage_inputs(manifest, "sft", storage=storage, image="img:1", spec_hash="h")

    def attempt(number: int) -> tuple[Path, dict[str, str]]:
        config_map, job = sft_children(
            manifest, spec, inputs, dataset_manifest_uri=setup.manifest_uri, attempt=number
        )
        path = setup.tmp / f"attempt-{number}.yaml"
        path.write_text(config_map["data"]["job.yaml"])
        pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
        keep = {"MEDSFT_ATTEMPT"}  # the rest points at in-cluster paths
        return path, {**setup.env, **{k: v for k, v in env.items() if k in keep}}

    first, env0 = attempt(0)
    output = yaml.safe_load(first.read_text())["outputUri"]
    out = open_store(output, setup.settings)
    ckpts = CheckpointStore(out.child(node_checkpoints(0)))
    # The pod fails: the PyTorchJob fails, the operator makes attempt 1.
    _kill_after_a_checkpoint(first, 1, env0, ckpts)
    killed_at = ckpts.latest()
    assert killed_at is not None and killed_at < 8

    second, env1 = attempt(1)
    assert second.read_text() == first.read_text()  # the same job, the same output
    result = run_training(second, nproc=1, env=env1)
    assert result.returncode == 0, result.stderr[-6000:]
    summary = out.get_json(SUMMARY)
    assert summary["attempt"] == 1
    assert summary["resumed_from"] == killed_at and summary["steps"] == 8
