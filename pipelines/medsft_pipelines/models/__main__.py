"""``python -m medsft_pipelines.models build-tiny DIR [--seed N] [--arch qwen2_5_vl|qwen3_vl]``:
write the tiny offline model (what ``medsft run --local`` does when its model folder is absent)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsft_pipelines.models")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-tiny", help="write a tiny random Qwen-VL model folder")
    build.add_argument("out_dir", type=Path)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--arch", choices=["qwen2_5_vl", "qwen3_vl"], default="qwen2_5_vl")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from medsft_pipelines.models.tiny import build_tiny_model

    print(build_tiny_model(args.out_dir, seed=args.seed, arch=args.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
