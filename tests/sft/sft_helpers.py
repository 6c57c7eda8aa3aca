"""Test helpers: curated-format rows from the real public data, shards, job configs, torchrun."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from medsft_pipelines.specs.jobconfig import SFTJobConfig, dump_job_config
from medsft_pipelines.storage import ObjectStore
from medsft_pipelines.storage.shards import Manifest, ShardWriter, write_manifest

SYSTEM = (
    "You are a helpful medical assistant. Think step by step inside <think> </think> tags, "
    "then give the final answer."
)
REPO = Path(__file__).resolve().parents[2]
# The columns of the curated row schema (curation's ROW_SCHEMA) that these tests fill.
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("task_type", pa.string()),
        ("modality", pa.string()),
        ("images", pa.list_(pa.binary())),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ]
)


def _conversation(question: str, trace: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": f"<think>{trace}</think>Answer: {answer}"},
    ]


def curated_rows(
    shared_data: Path, n_text: int = 16, n_image: int = 8, image_px: int = 56
) -> list[dict]:
    """Rows in the curated shard format: PubMedQA (text, the human rationale as the trace) and
    VQA-RAD (image; a short templated trace), images downsized like curation does."""
    rows = pubmedqa_rows(shared_data, n_text)
    vqa = json.loads((shared_data / "vqa-rad" / "VQA_RAD_Dataset_Public.json").read_text())
    for item in vqa[:n_image]:
        with Image.open(shared_data / "vqa-rad" / "images" / item["image_name"]) as im:
            small = im.convert("RGB").resize((image_px, image_px))
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=90)
        trace = (
            f"The question is about {item['question_type'].lower()} in an image of the "
            f"{item['image_organ'].lower()}."
        )
        rows.append(
            {
                "id": f"vqarad-{item['qid']}",
                "source": "vqa-rad",
                "task_type": "open",
                "modality": "image",
                "images": [buf.getvalue()],
                "question": item["question"],
                "options": [],
                "answer": str(item["answer"]),
                "messages": _conversation(item["question"], trace, str(item["answer"])),
            }
        )
    return rows


def pubmedqa_rows(
    shared_data: Path, n: int, skip: int = 0, context: bool = False
) -> list[dict[str, Any]]:
    """PubMedQA in the curated format, the human rationale as the trace; with ``context``,
    the abstract leads the question (a longer kind of sample, another source)."""
    pubmedqa = json.loads((shared_data / "pubmedqa" / "ori_pqal.json").read_text())
    rows: list[dict[str, Any]] = []
    for pmid, item in list(pubmedqa.items())[skip : skip + n]:
        question = item["QUESTION"] + " Options: yes, no, maybe"
        if context:
            question = " ".join(item["CONTEXTS"])[:500] + "\n\n" + question
        rows.append(
            {
                "id": f"pubmedqa-{'ctx-' if context else ''}{pmid}",
                "source": "pubmedqa-context" if context else "pubmedqa",
                "task_type": "mcq",
                "modality": "text",
                "images": [],
                "question": item["QUESTION"],
                "options": ["yes", "no", "maybe"],
                "answer": item["final_decision"],
                "messages": _conversation(
                    question, item["LONG_ANSWER"].split(". ")[0], item["final_decision"]
                ),
            }
        )
    return rows


def write_sources(store: ObjectStore, sources: list[list[dict]], target_shard_bytes: int) -> None:
    """One folder of shards per source, listed by one manifest: what the curation merge writes."""
    parts = []
    for index, rows in enumerate(sources):
        writer = ShardWriter(
            store, ROW_SCHEMA, target_shard_bytes=target_shard_bytes, row_group_bytes=2048,
            shard_prefix=f"shards/s{index:05d}/",
        )  # fmt: skip
        writer.write(rows)
        parts.append(writer.close(publish=False))
    write_manifest(store, Manifest.combine(parts))


def write_dataset(store: ObjectStore, rows: list[dict], target_shard_bytes: int = 8 * 1024) -> None:
    """Shards + manifest through the storage layer, as curation writes them."""
    with ShardWriter(
        store, ROW_SCHEMA, target_shard_bytes=target_shard_bytes, row_group_bytes=2048
    ) as writer:
        writer.write(rows)


def job_config(
    *,
    output_uri: str,
    manifest_uri: str,
    model_uri: str,
    storage: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    deepspeed: dict[str, Any] | None = None,
    checkpointing: dict[str, Any] | None = None,
    name: str = "tiny",
) -> SFTJobConfig:
    return SFTJobConfig.model_validate(
        {
            "run": {"name": name},
            "storage": storage or {},
            "outputUri": output_uri,
            "modelUri": model_uri,
            "datasetManifestUri": manifest_uri,
            "spec": {
                "model": {"uri": model_uri},
                "training": {
                    "globalBatchSize": 2,
                    "batchUnit": "rows",  # what these tests were sized for; see DEFAULT_RECIPE
                    "microBatchSize": 1,
                    "maxSeqLength": 256,
                    "learningRate": 1e-3,
                    "warmupRatio": 0.1,
                    "gradientCheckpointing": False,
                    "precision": "fp32",
                    "seed": 7,
                    **(training or {}),
                },
                "deepspeed": {"zeroStage": 2, **(deepspeed or {})},
                "checkpointing": {"everySteps": 5, "keepLast": 2, **(checkpointing or {})},
            },
        }
    )


def write_config(config: SFTJobConfig, path: Path) -> Path:
    path.write_text(dump_job_config(config))
    return path


def train_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        TORCH_EXTENSIONS_DIR=os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "medsft" / "torch_extensions")
        ),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def torchrun_cmd(config_path: Path, nproc: int) -> list[str]:
    """``torchrun --nproc_per_node=N medsft-train --config ...`` on a free rendezvous port."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(nproc), "--nnodes", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
        "-m", "medsft_pipelines.sft.train", "--config", str(config_path),
    ]  # fmt: skip


def run_training(
    config_path: Path, nproc: int, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_cmd(config_path, nproc), env=train_env(env), cwd=REPO,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


class PausableProxy:
    """A TCP proxy on 127.0.0.1 in front of a real server that can stop relaying: one
    node's network to storage going quiet (what a slow or partitioned node looks like)."""

    def __init__(self, target: str) -> None:
        import socket
        import threading

        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.relaying = threading.Event()
        self.relaying.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst) -> None:
        try:
            while data := src.recv(65536):
                self.relaying.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def pause(self) -> None:
        self.relaying.clear()

    def resume(self) -> None:
        self.relaying.set()

    def close(self) -> None:
        self.relaying.set()
        self.server.close()


def torchrun_node_cmd(config_path: Path, node: int, nodes: int, port: int) -> list[str]:
    """One node of a multi-node job on this machine (one process; static rendezvous)."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "1", "--nnodes", str(nodes), "--node_rank", str(node),
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        "-m", "medsft_pipelines.sft.train", "--config", str(config_path),
    ]  # fmt: skip
