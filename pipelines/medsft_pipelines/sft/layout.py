"""Where an SFT job puts things under its ``outputUri`` (pure names: the operator and the
eval stage import this module to find the final model; it imports nothing heavy).

::

    <outputUri>/checkpoints/node-000/step-000000100/...   DeepSpeed checkpoint files of node 0
    <outputUri>/checkpoints/node-001/step-000000100/...   ... of node 1 (multi-node jobs)
    <outputUri>/model/                                    final Hugging Face export
    <outputUri>/model/export.json                         written LAST: the export is complete
    <outputUri>/loss_curve.png, train_summary.json        end-of-run report
    <progressUri>/progress.json, metrics/...              telemetry (storage.progress)

A checkpoint step is complete when every node's folder has its completion marker.
"""

from __future__ import annotations

from medsft_pipelines.specs.common import join_uri

CHECKPOINTS = "checkpoints"
FINAL_MODEL = "model"
EXPORT_MARKER = "export.json"
LOSS_CURVE = "loss_curve.png"
SUMMARY = "train_summary.json"
PROGRESS_STAGE = "sft"


def node_checkpoints(node: int) -> str:
    """Checkpoint root (relative to the output) of one node's files."""
    return f"{CHECKPOINTS}/node-{node:03d}"


def final_model_uri(output_uri: str) -> str:
    """URI of the final Hugging Face export of an SFT job writing to ``output_uri``."""
    return join_uri(output_uri, FINAL_MODEL)
