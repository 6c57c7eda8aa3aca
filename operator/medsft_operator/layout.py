"""Where each stage's artifacts live in object storage (pure functions of URIs).

::

    <storage root>/<namespace>/<run>/                      everything of one run (ArtifactPolicy)
    <storage root>/<namespace>/<run>/promoted.json         pointer to the promoted model
    <storage root>/<namespace>/<run>/g<N>/curation/        manifest.json, shards/, report/
    <storage root>/<namespace>/<run>/g<N>/sft/             checkpoints/, model/, metrics
    <storage root>/<namespace>/<run>/g<N>/eval/            summary.json, results.json, ...

A standalone stage resource is its own run (``<run>`` = its name, ``N`` = 1). Each stage
writes ``progress.json`` and ``metrics/`` at its output root (``storage.progress``); the
file names below mirror the data plane's layout modules (``curation.layout``,
``sft.layout``, ``eval.report``) without importing them, because those pull in the
training stack.
"""

from __future__ import annotations

from typing import Literal

from medsft_pipelines.specs.common import StorageSpec, join_uri

StageName = Literal["curation", "sft", "eval"]

MANIFEST = "manifest.json"
CURATION_REPORT = "report/report.json"
SFT_CHECKPOINTS = "checkpoints"
SFT_MODEL = "model"
SFT_EXPORT_MARKER = "model/export.json"
EVAL_SUMMARY = "summary.json"
EVAL_REPORT = "results.json"
PROMOTED_POINTER = "promoted.json"


def run_root(storage: StorageSpec, namespace: str, run: str) -> str:
    """Root URI of every artifact of a run (what ``artifactPolicy: Delete`` removes)."""
    return join_uri(storage.root_uri(), namespace, run)


def stage_output(
    storage: StorageSpec, namespace: str, run: str, generation: int, stage: StageName
) -> str:
    """Default output URI of a stage of a run's generation."""
    return join_uri(run_root(storage, namespace, run), f"g{generation}", stage)


def manifest_uri(curation_output: str) -> str:
    """The dataset manifest a curation job writes last."""
    return join_uri(curation_output, MANIFEST)


def curation_report_uri(curation_output: str) -> str:
    return join_uri(curation_output, CURATION_REPORT)


def model_uri(sft_output: str) -> str:
    """The final Hugging Face export of an SFT job."""
    return join_uri(sft_output, SFT_MODEL)


def checkpoints_uri(sft_output: str, node: int = 0) -> str:
    """Checkpoint root of one node of an SFT job."""
    return join_uri(sft_output, SFT_CHECKPOINTS, f"node-{node:03d}")


def eval_summary_uri(eval_output: str) -> str:
    return join_uri(eval_output, EVAL_SUMMARY)


def eval_report_uri(eval_output: str) -> str:
    return join_uri(eval_output, EVAL_REPORT)


def promoted_pointer_uri(storage: StorageSpec, namespace: str, run: str) -> str:
    return join_uri(run_root(storage, namespace, run), PROMOTED_POINTER)


def split_uri(uri: str) -> tuple[str, str]:
    """``("s3://bucket/a/b", "c.json")`` for ``s3://bucket/a/b/c.json``: store root and key."""
    root, _, key = uri.rstrip("/").rpartition("/")
    return root, key
