"""``python -m medsft_pipelines.models build-tiny DIR``: write the tiny offline model.

The control plane (``medsft run --local``) calls this in a subprocess, so that it never
imports torch itself.
"""

from __future__ import annotations

import argparse
import sys

from medsft_pipelines.models.tiny import build_tiny_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsft_pipelines.models")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("build-tiny", help="build the tiny random Qwen2.5-VL (idempotent)")
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
