"""The Python half of ``benchmarks/gpu_suite.sh``: what must travel, the GPU form of the
quickstart, and the suite's summary. Standard library and PyYAML only: it runs before the
carried wheels are installed.

    python benchmarks/gpu_suite.py carry-list                 # name==version lines to carry
    python benchmarks/gpu_suite.py quickstart OUT.yaml        # the quickstart in bf16, one GPU
    python benchmarks/gpu_suite.py quickstart-result MODE WORKDIR RC LOG JSON
    python benchmarks/gpu_suite.py summary OUT_DIR            # suite.json from the parts
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "trainer-image" / "requirements.lock"
GPU_IMAGE = Path(__file__).resolve().parent / "gpu_image_packages.txt"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
RUN_NAME = "quickstart-gpu"

FORCE = {"transformers"}
"""Installed on the GPU machine, but not at the trainer's pinned version (5.17 there): carried."""
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|vllm|flash-attn)$")
"""The CUDA stack is the GPU machine's own (torch 2.11 + CUDA 13); vLLM (hundreds of MB) cannot
travel and the suite does not need it; flash-attn is no dependency (varlen_attn replaces it)."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carry_list(lock: Path = LOCK, image: Path = GPU_IMAGE) -> list[str]:
    """The trainer image's pinned packages that the GPU machine's image lacks (or holds at
    another version, :data:`FORCE`), as ``name==version``."""
    present = {
        normalise(line.split("#")[0].strip())
        for line in image.read_text().splitlines()
        if line.split("#")[0].strip()
    }
    wanted = []
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" not in line:
            continue
        name = normalise(line.split("==")[0])
        if NEVER.match(name) or (name in present and name not in FORCE):
            continue
        wanted.append(line.split(";")[0].strip())
    return wanted


def quickstart(out: Path) -> dict[str, Any]:
    """``examples/quickstart.yaml`` as the GPU suite runs it: SFT in bf16 (so the trainer
    picks its GPU kernel: varlen for the packed rows), one rank (NCCL), another run name."""
    docs = [d for d in yaml.safe_load_all(QUICKSTART.read_text()) if d]
    (run,) = [d for d in docs if d.get("kind") == "MedSFTRun"]
    run["metadata"]["name"] = RUN_NAME
    training = run["spec"]["sft"]["spec"]["training"]
    training["precision"] = "bf16"
    training["packing"] = True
    run["spec"]["sft"]["spec"]["gpusPerNode"] = 1
    out.write_text(yaml.safe_dump(run, sort_keys=False))
    return run


def quickstart_command(manifest: Path, workdir: Path) -> list[str]:
    """(c)'s command line (the suite runs it as ``python -m medsft_operator.cli``)."""
    return ["medsft", "run", "--local", str(manifest), "--nproc", "1", "--workdir", str(workdir)]


def quickstart_result(
    mode: str, workdir: Path, rc: int, log: Path, out: Path, manifest: Path
) -> dict[str, Any]:
    """What (c) proves: the command's exit, its final table, and the trainer's summary; in
    the CPU smoke, that the GPU form of the quickstart validates (nothing is run)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if mode == "smoke":
        result = {
            "rc": rc, "validated": rc == 0, "ran": False,
            "command": quickstart_command(manifest, workdir), "pass": rc == 0,
        }  # fmt: skip
        out.write_text(json.dumps(result, indent=2) + "\n")
        return result
    summaries = sorted(
        (p for p in (ROOT / ".medsft").rglob("train_summary.json") if RUN_NAME in str(p)),
        key=lambda p: p.stat().st_mtime,
    )
    summary = json.loads(summaries[-1].read_text()) if summaries else {}
    sft_log = workdir / RUN_NAME / "sft.log"
    logged = re.search(
        r"attention kernel: (\S+)", sft_log.read_text(errors="replace") if sft_log.exists() else ""
    )
    result = {
        "rc": rc,
        "command": quickstart_command(manifest, workdir),
        "final_table": f"medsft run --local {RUN_NAME}" in text,
        "attention_kernel": summary.get("attention_kernel"),
        "attention_kernel_logged": logged.group(1) if logged else None,
        "sft_steps": summary.get("steps"),
        "workdir": str(workdir),
        "pass": rc == 0 and f"medsft run --local {RUN_NAME}" in text,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(out_dir: Path) -> dict[str, Any]:
    """suite.json: each part's JSON (or why there is none) and its wall time."""
    parts = {}
    for part in ("isolation", "throughput", "quickstart"):
        path = out_dir / f"{part}.json"
        parts[part] = json.loads(path.read_text()) if path.exists() else {"missing": True}
    times = out_dir / "times.txt"
    for line in times.read_text().splitlines() if times.exists() else []:
        part, rc, seconds = line.split()
        parts.setdefault(part, {})["_suite"] = {"rc": int(rc), "seconds": float(seconds)}
    result = {
        "parts": parts,
        "pass": all(
            p.get("_suite", {}).get("rc") == 0 and p.get("pass", p.get("speedup") is not None)
            for p in parts.values()
        ),
    }
    (out_dir / "suite.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "carry-list":
        print("\n".join(carry_list()))
    elif command == "quickstart":
        quickstart(Path(args[0]))
    elif command == "quickstart-result":
        mode, workdir, rc, log, out = args
        manifest = Path(workdir) / "quickstart-gpu.yaml"
        result = quickstart_result(mode, Path(workdir), int(rc), Path(log), Path(out), manifest)
        print(json.dumps(result))
    elif command == "summary":
        result = summary(Path(args[0]))
        print(json.dumps({k: v for k, v in result.items() if k != "parts"}))
        return 0 if result["pass"] else 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
