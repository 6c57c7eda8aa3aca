"""Where each stage's artifacts live in object storage (pure functions of URIs).

::

    <storage root>/<namespace>/<run>/                      everything of one run (ArtifactPolicy)
    <storage root>/<namespace>/<run>/promoted.json         pointer to the promoted model
    <storage root>/<namespace>/<run>/teacher-cache/        teacher responses, every generation
    <storage root>/teacher-cache/                          the same, teachers.cache.scope: Bucket
    <storage root>/<namespace>/<run>/g<N>/curation/        manifest.json, shards/, report/
    <storage root>/<namespace>/<run>/g<N>/sft/             checkpoints/, model/, metrics
    <storage root>/<namespace>/<run>/g<N>/eval/            summary.json, results.json, ...

A standalone stage resource is its own run (``<run>`` = its name, ``N`` = 1). Each stage
writes ``progress.json`` and ``metrics/`` at its output root (``storage.progress``); the
file names below come from the data plane's layout modules (``storage.layout``,
``curation.layout``, ``sft.layout``, ``eval.layout``), which import nothing heavy.
"""

from __future__ import annotations

from typing import Literal

from medsft_pipelines.curation import layout as curation_layout
from medsft_pipelines.eval import layout as eval_layout
from medsft_pipelines.sft import layout as sft_layout
from medsft_pipelines.specs.common import StorageSpec, join_uri
from medsft_pipelines.storage.layout import MANIFEST_KEY

StageName = Literal["curation", "sft", "eval"]

MANIFEST = MANIFEST_KEY
CURATION_REPORT = f"{curation_layout.REPORT_PREFIX}/{curation_layout.REPORT_JSON}"
SFT_CHECKPOINTS = sft_layout.CHECKPOINTS
SFT_MODEL = sft_layout.FINAL_MODEL
SFT_EXPORT_MARKER = f"{sft_layout.FINAL_MODEL}/{sft_layout.EXPORT_MARKER}"
EVAL_SUMMARY = eval_layout.SUMMARY_KEY
EVAL_REPORT = eval_layout.RESULTS_KEY
PROMOTED_POINTER = "promoted.json"
TEACHER_CACHE = curation_layout.TEACHER_CACHE_PREFIX


def run_root(storage: StorageSpec, namespace: str, run: str) -> str:
    """Root URI of every artifact of a run (what ``artifactPolicy: Delete`` removes)."""
    return join_uri(storage.root_uri(), namespace, run)


def stage_output(
    storage: StorageSpec, namespace: str, run: str, generation: int, stage: StageName
) -> str:
    """Default output URI of a stage of a run's generation."""
    return join_uri(run_root(storage, namespace, run), f"g{generation}", stage)


def teacher_cache_uri(
    storage: StorageSpec, namespace: str, run: str, scope: Literal["Run", "Bucket"] = "Run"
) -> str:
    """The teacher response cache: outside every generation's folder, so that a later
    generation (or, with ``Bucket``, another run) never pays for a response again."""
    if scope == "Bucket":
        return join_uri(storage.root_uri(), TEACHER_CACHE)
    return join_uri(run_root(storage, namespace, run), TEACHER_CACHE)


def manifest_uri(curation_output: str) -> str:
    """The dataset manifest a curation job writes last."""
    return join_uri(curation_output, MANIFEST)


def curation_report_uri(curation_output: str) -> str:
    return join_uri(curation_output, CURATION_REPORT)


def model_uri(sft_output: str) -> str:
    """The final Hugging Face export of an SFT job."""
    return sft_layout.final_model_uri(sft_output)


def checkpoints_uri(sft_output: str, node: int = 0) -> str:
    """Checkpoint root of one node of an SFT job."""
    return join_uri(sft_output, sft_layout.node_checkpoints(node))


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
