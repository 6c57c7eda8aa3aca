"""What each stage's pod receives: one YAML file, fully resolved by the control plane.

The operator (or ``medsft run --local``) resolves references, defaults and storage
locations and writes one of these configs; the stage reads it with
:func:`load_job_config` and needs nothing else (no Kubernetes API access). Storage
credentials are not in the file: they arrive as env vars (see ``specs.common``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

import yaml
from pydantic import Field, TypeAdapter

from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import ModelLocation, StorageSpec, StorageUri
from medsft_pipelines.specs.curation import CurationSpec
from medsft_pipelines.specs.eval import EvalSpec
from medsft_pipelines.specs.sft import SFTSpec
from medsft_pipelines.specs.tracking import MLflowSpec

JOB_CONFIG_API_VERSION: Final = "medsft.io/v1alpha1"


class RunInfo(Spec):
    """Identity of the run a stage belongs to (for paths, logs and reports)."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Name of the owning resource (the MedSFTRun, or the stage resource when standalone)."""
    namespace: Annotated[str, Field(min_length=1, max_length=63)] = "default"
    """Namespace of the owning resource."""
    generation: Annotated[int, Field(ge=1)] = 1
    """Generation of the run this stage belongs to."""
    spec_hash: Annotated[str, Field(max_length=128)] = ""
    """Content hash of the stage's effective spec and inputs; written into manifests and reports."""


class _JobConfigBase(Spec):
    kind: str
    """Discriminator of the config type."""
    api_version: Literal["medsft.io/v1alpha1"] = JOB_CONFIG_API_VERSION
    """Version of the job-config contract."""
    run: RunInfo
    """Which run this is."""
    storage: StorageSpec = StorageSpec()
    """How to reach object storage (credentials come from the environment)."""
    output_uri: StorageUri
    """Folder this stage writes its results to."""
    progress_uri: StorageUri | None = None
    """Folder for ``progress.json`` and ``metrics.jsonl``; unset: ``outputUri``."""
    tracking: MLflowSpec | None = None
    """MLflow server (and run) this stage also sends its numbers to; unset: none."""

    def effective_progress_uri(self) -> str:
        """Where progress and metrics go."""
        return self.progress_uri or self.output_uri


class CurationJobConfig(_JobConfigBase):
    """Config of one curation worker or of the merge step."""

    kind: Literal["CurationJobConfig"] = "CurationJobConfig"
    """Discriminator of the config type."""
    spec: CurationSpec
    """The data recipe, with the processor and decontamination benchmarks resolved."""
    workers: Annotated[int, Field(ge=1, le=4096)] = 1
    """Number of parallel workers; each takes a deterministic slice of the input."""
    worker_index: Annotated[int, Field(ge=0)] | None = None
    """This worker's index; unset: taken from ``JOB_COMPLETION_INDEX`` (Indexed Job)."""
    step: Literal["work", "merge", "all"] = "all"
    """``work``: process a slice; ``merge``: combine the slices; ``all``: both, in one process."""
    teacher_cache_uri: StorageUri | None = None
    """Folder of the teacher response cache; unset: ``<outputUri>/teacher-cache``. The control
    plane sets it outside the generation's folder (``spec.teachers.cache.scope``), so every
    generation of a run finds the responses an earlier one paid for."""


class SFTJobConfig(_JobConfigBase):
    """Config of every rank of a training job (rank and world size come from torchrun's env)."""

    kind: Literal["SFTJobConfig"] = "SFTJobConfig"
    """Discriminator of the config type."""
    spec: SFTSpec
    """The training recipe."""
    model_uri: ModelLocation
    """Location of the base model to start from."""
    dataset_manifest_uri: StorageUri
    """URI of the dataset manifest to train on."""
    nodes: Annotated[int, Field(ge=1)] = 1
    """Nodes of the job (informational; torchrun's env is authoritative)."""
    gpus_per_node: Annotated[int, Field(ge=0)] = 0
    """GPUs per node (0: CPU run)."""


class EvalJobConfig(_JobConfigBase):
    """Config of an evaluation run."""

    kind: Literal["EvalJobConfig"] = "EvalJobConfig"
    """Discriminator of the config type."""
    spec: EvalSpec
    """Benchmarks and generation settings."""
    model_uri: ModelLocation
    """Location of the model under test (Hugging Face format)."""
    baseline_uri: ModelLocation | None = None
    """Location of the baseline model, when one is configured."""


JobConfig = Annotated[CurationJobConfig | SFTJobConfig | EvalJobConfig, Field(discriminator="kind")]
_job_config_adapter: TypeAdapter[CurationJobConfig | SFTJobConfig | EvalJobConfig] = TypeAdapter(
    JobConfig
)


def parse_job_config(data: dict) -> CurationJobConfig | SFTJobConfig | EvalJobConfig:
    """Validate a job config given as a dict (camelCase keys)."""
    return _job_config_adapter.validate_python(data)


def load_job_config(path: str | Path) -> CurationJobConfig | SFTJobConfig | EvalJobConfig:
    """Read and validate the job-config YAML (or JSON) file at ``path``."""
    with open(path, encoding="utf-8") as f:
        return parse_job_config(yaml.safe_load(f))


def dump_job_config(config: CurationJobConfig | SFTJobConfig | EvalJobConfig) -> str:
    """The YAML text of a job config, as :func:`load_job_config` reads it back."""
    return yaml.safe_dump(config.to_wire(), sort_keys=False, allow_unicode=True)
