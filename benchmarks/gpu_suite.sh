#!/usr/bin/env bash
# The GPU suite: one command, about 8 minutes on one H100, JSON out. See benchmarks/README.md
# ("GPU suite") for how to run it with the device tool and what it measured.
#
#   bash benchmarks/gpu_suite.sh --prepare      # here (network): the wheels that must travel,
#                                               # into gpu-carry/ (git-ignored, <= 56 MiB)
#   bash benchmarks/gpu_suite.sh [--out DIR]    # on the GPU machine: installs gpu-carry/ and runs
#   bash benchmarks/gpu_suite.sh --cpu-smoke [--out DIR]   # every part at tiny size on CPU
#
# Parts, each with its own time limit, each writing DIR/<part>.json and DIR/<part>.log:
#   a. isolation  — the packing isolation probe on the production kernel (varlen, bf16):
#                   swapping one packed sample moves no other sample's logits beyond bf16 noise
#   b. throughput — SFT tokens/s and MFU of a 7B-wide Qwen2.5-VL (random init, 4 text layers:
#                   it fits one H100 with its optimizer state), packed + varlen vs the padded
#                   Hugging Face baseline, the same engine and samples
#   c. quickstart — `medsft run --local` of examples/quickstart.yaml with SFT in bf16 on one
#                   GPU rank (NCCL), to its final table
# DIR/suite.json gathers them; the exit status is 0 when every part passed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="$ROOT/gpu-carry"
CARRY_LIMIT_MIB=56 # the device tool moves 64 MiB per call; the repository itself takes ~6
MODE=gpu
OUT_DIR="${OUT:-$ROOT/.medsft/gpu-suite}"
PY="${PYTHON:-python3}"

while [ $# -gt 0 ]; do
    case "$1" in
    --prepare) MODE=prepare ;;
    --cpu-smoke) MODE=smoke ;;
    --out) OUT_DIR="$2"; shift ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
cd "$ROOT" || exit 2

prepare() {
    # Wheels for Python 3.12 on x86-64 (the GPU machine's), the versions of the trainer
    # image's lock. DeepSpeed ships no wheel: it is built here, pure Python (its CUDA ops
    # are JIT-built on first use and the recipe needs none on a GPU: torch's fused AdamW).
    local wheels="$CARRY/wheels" list deepspeed
    rm -rf "$CARRY" && mkdir -p "$wheels" || return 1
    list="$("$PY" benchmarks/gpu_suite.py carry-list)" || return 1
    deepspeed="$(grep -i '^deepspeed==' <<<"$list")"
    # shellcheck disable=SC2046
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform any \
        -d "$wheels" $(grep -iv '^deepspeed==' <<<"$list") || return 1
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$wheels" \
        "$deepspeed" || return 1
    (cd "$wheels" && ls -l) >"$CARRY/MANIFEST.txt"
    local mib
    mib=$(du -sm "$CARRY" | cut -f1)
    echo "gpu-carry/: $(ls "$wheels" | wc -l) wheels, ${mib} MiB"
    if [ "$mib" -gt "$CARRY_LIMIT_MIB" ]; then
        echo "gpu-carry/ is over ${CARRY_LIMIT_MIB} MiB: it would not travel" >&2
        return 1
    fi
}

install_carry() {
    # Into a folder of its own, ahead of the machine's site-packages (transformers 5.24
    # shadows its 5.17); the machine's torch, numpy, pyarrow... are used as they are.
    local site=/tmp/medsft-site
    if [ ! -d "$CARRY/wheels" ]; then
        echo "no gpu-carry/wheels: run 'bash benchmarks/gpu_suite.sh --prepare' first and carry gpu-carry" >&2
        return 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$CARRY"/wheels/*.whl || return 1
    export PYTHONPATH="$site:$ROOT/pipelines:$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}"
}

# part NAME SECONDS COMMAND...: runs it under a time limit, its output in NAME.log, and its
# exit status and wall time in times.txt.
part() {
    local name="$1" limit="$2" started rc
    shift 2
    started=$(date +%s%N)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    echo "$name $rc $((($(date +%s%N) - started) / 1000000))e-3" >>"$OUT_DIR/times.txt"
    echo "   exit $rc; last lines:"
    tail -n 3 "$OUT_DIR/$name.log" | sed 's/^/   | /'
}

if [ "$MODE" = prepare ]; then
    prepare
    exit $?
fi

mkdir -p "$OUT_DIR" && rm -f "$OUT_DIR"/{times.txt,suite.json,isolation.json,throughput.json,quickstart.json}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export MEDSFT_CACHE="${MEDSFT_CACHE:-$HOME/.cache/medsft}"
# The quickstart's work folder stays out of OUT_DIR: the device tool brings back 8 files at
# most (3 JSON parts, their 3 logs, times.txt, suite.json).
WORKDIR="$ROOT/.medsft/runs-gpu-suite"
[ "$MODE" = smoke ] && WORKDIR="$OUT_DIR/work"
mkdir -p "$WORKDIR"
QUICKSTART="$WORKDIR/quickstart-gpu.yaml"

if [ "$MODE" = gpu ]; then
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
        echo "no CUDA device: this is the GPU suite (--cpu-smoke runs it on CPU)" >&2
        exit 2
    }
    install_carry || exit 2
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    part isolation 90 "$PY" benchmarks/sft_packing_isolation.py --json "$OUT_DIR/isolation.json"
    part throughput 210 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
        benchmarks/sft_gpu_throughput.py --model 7b --layers 4 --seq-len 8192 \
        --baseline-batch 4 --steps 8 --warmup 3 --json "$OUT_DIR/throughput.json"
    "$PY" benchmarks/gpu_suite.py quickstart "$QUICKSTART" || exit 2
    part quickstart 180 "$PY" -m medsft_operator.cli run --local "$QUICKSTART" --nproc 1 \
        --workdir "$WORKDIR"
else
    # The same parts at tiny size on CPU, in this environment (no wheels to install): the
    # scripts must run, not measure. The isolation probe takes the varlen path (its CPU
    # reference kernel); (c)'s full run is left to tests/cli (the quickstart takes minutes
    # on CPU): here its GPU form is built, validated and its command line checked.
    export PYTHONPATH="$ROOT/pipelines:$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" benchmarks/gpu_suite.py carry-list >"$OUT_DIR/carry-list.txt" || exit 2
    part isolation 120 "$PY" benchmarks/sft_packing_isolation.py --attention varlen \
        --samples 4 --json "$OUT_DIR/isolation.json"
    part throughput 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
        benchmarks/sft_gpu_throughput.py --model tiny --seq-len 512 --baseline-batch 2 \
        --steps 1 --warmup 0 --json "$OUT_DIR/throughput.json"
    "$PY" benchmarks/gpu_suite.py quickstart "$QUICKSTART" || exit 2
    part quickstart 60 "$PY" -m medsft_operator.cli validate "$QUICKSTART"
fi
"$PY" benchmarks/gpu_suite.py quickstart-result "$MODE" "$WORKDIR" \
    "$(awk '$1 == "quickstart" {print $2}' "$OUT_DIR/times.txt")" \
    "$OUT_DIR/quickstart.log" "$OUT_DIR/quickstart.json" >/dev/null
"$PY" benchmarks/gpu_suite.py summary "$OUT_DIR"
