"""EvalSpec: which model, which benchmarks, how to generate.

Defaults follow the published evaluation: temperature 0.6, top-p 0.95, up to 8,192
response tokens, mean over 5 seeds, up to 10 images of at most 262,144 pixels, and a
"forced exit" (append the end-of-think token) when a model never closes its reasoning.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import (
    Distribution,
    Ident,
    ModelLocation,
    ObjectRef,
    OneOf,
    StorageUri,
    cel,
    k8s_rules,
    one_of_rule,
)

BenchmarkFormat = Literal["auto", "jsonl", "json", "parquet", "hf"]

#: Every name of the benchmark registry (``medsft_pipelines.eval.registry``), kept here so the
#: control plane checks names without importing the data plane; a test keeps the two equal.
#: The CRD does not list them: a trainer image may ship a newer registry than the operator's CRD.
BENCHMARK_NAMES: tuple[str, ...] = (
    *("aptos", "bcss", "brain-tumor", "coronahack", "headqa", "medmcqa", "medqa"),
    *("medxpertqa-mm", "medxpertqa-text", "messidor-2", "mmlu-medical", "mmlu-pro-health"),
    *("mmmu-pro-health", "nejm", "pmc-vqa", "pubmedqa", "slake", "vqa-rad"),
)


def unknown_benchmark_message(name: str) -> str:
    """What ``medsft validate`` and the operator say about a name the registry lacks."""
    return f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}"


def _registered(name: str) -> str:
    if name not in BENCHMARK_NAMES:
        raise ValueError(unknown_benchmark_message(name))
    return name


#: A benchmark of the registry (checked offline against :data:`BENCHMARK_NAMES`).
BenchmarkName = Annotated[Ident, AfterValidator(_registered)]


class BenchmarkSpec(Spec):
    """One benchmark to evaluate on (and, in a MedSFTRun, to decontaminate the training data against)."""

    name: BenchmarkName
    """Registry name of the benchmark, e.g. ``medqa``, ``pubmedqa``, ``vqa-rad``, ``mmmu-pro-health``."""
    uri: StorageUri | None = None
    """Where the benchmark files live; unset: the registry's default location under the storage root."""
    format: BenchmarkFormat = "auto"
    """File format; ``auto`` lets the benchmark's loader pick its published format."""
    split: Annotated[str, Field(min_length=1, max_length=63)] = "test"
    """Split to evaluate on."""
    distribution: Distribution | None = None
    """Whether the benchmark is in-distribution (its training split fed the SFT data) or
    out-of-distribution; unset: the benchmark's published role (registry default)."""
    max_items: Annotated[int, Field(ge=1)] | None = None
    """Evaluate on at most this many items (deterministic subset); unset: all."""


class ModelSource(OneOf):
    """A model to evaluate: an SFTJob's final export, or a model location. Exactly one."""

    sft_job_ref: ObjectRef | None = None
    """An SFTJob in the same namespace; its exported model is evaluated."""
    uri: ModelLocation | None = None
    """A model location (``s3://``, ``file://`` or a local folder) in Hugging Face format."""

    one_of = ("sft_job_ref", "uri")
    model_config = k8s_rules(one_of_rule(one_of))


class BaselineSpec(ModelSource):
    """A reference model evaluated with the same settings; the report shows deltas against it."""

    name: Annotated[str, Field(min_length=1, max_length=128)] = "baseline"
    """Display name of the baseline in reports and status."""


class GenerationSpec(Spec):
    """Decoding settings, identical for the model under test and the baseline."""

    backend: Literal["transformers", "vllm"] = "transformers"
    """Inference backend: transformers (always available) or vLLM (GPU, when installed)."""
    mode: Literal["cot", "direct"] = "cot"
    """``cot``: let the model reason before answering; ``direct``: ask for the answer only."""
    prompt_template: Annotated[str, Field(max_length=128)] | None = None
    """Name of the per-model prompt template; unset: picked from the model's family."""
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.6
    """Sampling temperature (paper: 0.6)."""
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    """Nucleus sampling mass (paper: 0.95)."""
    max_new_tokens: Annotated[int, Field(ge=1, le=131072)] = 8192
    """Maximum response tokens per item (paper: 8,192)."""
    seeds: Annotated[int, Field(ge=1, le=64)] = 5
    """Number of seeds; accuracy is reported as mean and std over them (paper: 5)."""
    base_seed: Annotated[int, Field(ge=0)] = 0
    """First seed; seed i is ``baseSeed + i``."""
    forced_think_exit: bool = True
    """When a response never closes ``</think>``, append it and let the model answer (paper's forced exit)."""
    forced_exit_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    """Tokens allowed for the answer after a forced exit."""
    majority_vote: bool = False
    """Also report majority-vote accuracy across seeds."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 8
    """Items generated together (transformers backend)."""
    max_images: Annotated[int, Field(ge=0, le=64)] = 10
    """Maximum images per item (paper: 10)."""
    max_pixels: Annotated[int, Field(ge=3136)] = 262144
    """Images are resized to at most this many pixels (paper: 262,144 = 512x512)."""


class EvalSpec(Spec):
    """What to evaluate and how: the data part of an EvalJob."""

    model: ModelSource | None = None
    """The model under test. Required for a standalone EvalJob; in a MedSFTRun it is the SFT stage's model."""
    benchmarks: Annotated[list[BenchmarkSpec], Field(min_length=1, max_length=64)]
    """Benchmarks to run, each marked in- or out-of-distribution."""
    generation: GenerationSpec = GenerationSpec()
    """Decoding settings."""
    baseline: BaselineSpec | None = None
    """Optional reference model to compare against."""

    model_config = k8s_rules(
        cel(
            "self.benchmarks.all(b, self.benchmarks.exists_one(c, c.name == b.name && c.split == b.split))",
            "benchmark names must be unique (per split)",
            field_path=".benchmarks",
        )
    )

    @model_validator(mode="after")
    def _unique_benchmarks(self) -> EvalSpec:
        keys = [(b.name, b.split) for b in self.benchmarks]
        if len(keys) != len(set(keys)):
            raise ValueError("benchmark names must be unique (per split)")
        return self


__all__ = [
    "BENCHMARK_NAMES",
    "BaselineSpec",
    "BenchmarkSpec",
    "EvalSpec",
    "GenerationSpec",
    "ModelSource",
]
