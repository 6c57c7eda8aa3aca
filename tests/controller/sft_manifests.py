"""An SFTJob manifest and its training child, built by the real builders (shared by the
builder tests of both backends)."""

from __future__ import annotations

from medsft_operator.api.kinds import SFTJobSpec
from medsft_operator.builders.stage_children import sft_children, stage_inputs
from medsft_pipelines.specs.common import StorageSpec

STORAGE = StorageSpec(endpoint="minio:9000", bucket="medsft", secure=False)


def sft_job(**spec) -> dict:
    base = {
        "model": {"uri": "s3://medsft/m"},
        "dataset": {"manifestUri": "s3://medsft/d/manifest.json"},
        "training": {"globalBatchSize": 64, "microBatchSize": 1},
    }
    return {
        "apiVersion": "medsft.io/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "ft", "namespace": "ns", "uid": "u-2"},
        "spec": base | spec,
    }


def build_training_job(manifest: dict, **kwargs) -> dict:
    """The PyTorchJob (or, with ``backend="TrainJob"``, the TrainJob) of an SFTJob manifest."""
    spec = SFTJobSpec.model_validate(manifest["spec"])
    inputs = stage_inputs(manifest, "sft", storage=STORAGE, image="img:1", spec_hash="h")
    return sft_children(
        manifest, spec, inputs, dataset_manifest_uri="s3://medsft/d/manifest.json", **kwargs
    )[1]
