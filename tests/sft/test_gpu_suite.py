"""The GPU suite (``benchmarks/gpu_suite.sh``) runs in ``make test`` in its CPU smoke form, so
none of its scripts can rot unseen again (the throughput script once broke with a changed
``train_step`` signature and nothing noticed). There is no GPU here: the smoke runs every
part at tiny size on CPU; the varlen kernel and the numbers are the GPU run's
(benchmarks/README.md, "GPU suite")."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _suite_module():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks/gpu_suite.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_what_travels_is_what_the_gpu_image_lacks_at_the_trainers_pins() -> None:
    suite = _suite_module()
    carried = dict(line.split("==") for line in suite.carry_list())
    lock = dict(
        line.split("==")
        for line in (ROOT / "trainer-image/requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    # What the trainer imports and the GPU image lacks, at the lock's versions; transformers
    # although the image has one (5.17, not the trainer's pin).
    for name in ("deepspeed", "pydantic", "minio", "kopf", "transformers"):
        assert carried[name] == lock[name], name
    # Never the CUDA stack (the machine's own) or what the image already holds.
    assert not {n for n in carried if n.startswith(("torch", "nvidia", "triton"))}
    assert not {"numpy", "pyarrow", "tokenizers", "vllm"} & set(carried)


def test_the_quickstart_runs_in_bf16_on_one_gpu_rank(tmp_path: Path) -> None:
    run = _suite_module().quickstart(tmp_path / "q.yaml")
    again = yaml.safe_load((tmp_path / "q.yaml").read_text())
    assert again == run
    sft = run["spec"]["sft"]["spec"]
    assert sft["training"]["precision"] == "bf16" and sft["training"]["packing"] is True
    assert sft["gpusPerNode"] == 1 and run["metadata"]["name"] == "quickstart-gpu"


@pytest.mark.slow
def test_cpu_smoke_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_suite.sh", "--cpu-smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in out.glob("*.log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    suite = json.loads((out / "suite.json").read_text())
    assert suite["pass"] is True

    isolation = json.loads((out / "isolation.json").read_text())
    assert isolation["attention_kernel"] == "medsft_varlen"  # the plumbing, reference kernel
    trainer = [c for c in isolation["cases"] if c["trainer_layout"]]
    assert trainer and all(c["others_moved"] < 1e-5 < c["swapped_moved"] for c in trainer)

    throughput = json.loads((out / "throughput.json").read_text())
    modes = {r["mode"]: r for r in throughput["results"]}
    assert set(modes) == {"padded_hf_baseline", "packed_medsft"}
    assert all(r["tokens_per_s_per_gpu"] > 0 for r in modes.values())
    assert modes["padded_hf_baseline"]["attention_kernel"] == "sdpa"

    quickstart = json.loads((out / "quickstart.json").read_text())
    assert quickstart["validated"] and quickstart["command"][:3] == ["medsft", "run", "--local"]
    assert (out / "carry-list.txt").read_text().count("==") >= 10


def test_the_gpu_quickstart_result_reads_the_final_table_and_the_kernel(tmp_path: Path) -> None:
    """(c)'s verdict on the GPU, from what `medsft run --local` leaves: its printed table and
    the trainer's log line naming the kernel (the lines as train.py and the CLI print them)."""
    suite = _suite_module()
    (tmp_path / "quickstart-gpu").mkdir()
    (tmp_path / "quickstart-gpu" / "sft.log").write_text(
        "rank0 INFO medsft.sft: attention kernel: medsft_varlen (varlen_attn on packed-sample"
        " offsets, no mask)\n"
    )
    log = tmp_path / "quickstart.log"
    log.write_text("...\n medsft run --local quickstart-gpu \n WHAT  WHERE\n")
    out = tmp_path / "quickstart.json"
    result = suite.quickstart_result("gpu", tmp_path, 0, log, out, tmp_path / "q.yaml")
    assert result["pass"] and result["final_table"]
    assert result["attention_kernel_logged"] == "medsft_varlen"
    assert json.loads(out.read_text()) == result
    log.write_text("Traceback ...\n")
    assert not suite.quickstart_result("gpu", tmp_path, 1, log, out, tmp_path / "q.yaml")["pass"]
