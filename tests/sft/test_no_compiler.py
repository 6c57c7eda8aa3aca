"""The trainer image has no C++ compiler; on a CPU node the recipe must still join its process
group (DeepSpeed would otherwise JIT-compile its shared-memory allreduce and fail). Found by
the first SFT pod on the real node (tests/e2e/test_cluster_run.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

JOIN_AND_ALLREDUCE = """
import torch, torch.distributed as dist
from medsft_pipelines.sft.distributed import init_distributed
topo, device = init_distributed()
value = torch.ones(1)
dist.all_reduce(value)
print("joined", topo.world_size, device.type, value.item())
dist.destroy_process_group()  # as medsft-train does on its way out (see below)
"""


def test_a_cpu_rank_joins_its_group_without_a_compiler(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    assert not (venv_bin / "c++").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC", "WORLD_SIZE", "RANK")}
    env.update(
        PATH=str(venv_bin),  # python and pip's ninja, as in the image; no c++
        TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"),  # nothing prebuilt
        CUDA_VISIBLE_DEVICES="",
    )
    proc = subprocess.run(
        [sys.executable, "-c", JOIN_AND_ALLREDUCE],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # Without destroy_process_group, gloo's threads can outlive the interpreter and abort it
    # after the work is done ("terminate called without an active exception", exit -6; seen
    # once in CI). medsft-train destroys its group in a finally, so the snippet does too.
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "joined 1 cpu 1.0" in proc.stdout
