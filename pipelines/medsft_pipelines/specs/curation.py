"""CurationSpec: the structured-reasoning data recipe as data.

Defaults follow the published recipe: 16 teacher samples per question with rejection
sampling on the final answer, reasoning inside ``<think>...</think>``, 16-gram
decontamination against every benchmark, images resized to at most 262,144 pixels.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import (
    Ident,
    LongText,
    Modality,
    ModelLocation,
    OneOf,
    SecretKeyRef,
    StorageUri,
    TaskType,
    cel,
    k8s_rules,
    one_of_rule,
)
from medsft_pipelines.specs.eval import BenchmarkSpec

SourceFormat = Literal["jsonl", "json", "parquet", "hf"]
"""jsonl: one object per line; json: an array of objects or an ``{id: object}`` map;
parquet: a file or a folder of files; hf: a dataset saved with ``datasets.save_to_disk``."""

VerifierKind = Literal["option", "exact", "normalized", "numeric", "label", "tokenF1", "none"]
"""How a trace's final answer is checked against the ground truth: option (letter or option
text of a multiple-choice question), exact string, normalized text, numeric value, class
label, token F1 above a threshold, or none (keep every trace: no ground truth to check)."""

Column = Annotated[str, Field(min_length=1, max_length=256)]


class FieldMapping(Spec):
    """Which input column (dotted path for nested objects) fills each canonical sample field."""

    id: Column | None = "id"
    """Unique id of a row; unset: ids are derived from the source name and row number."""
    question: Column = "question"
    """The question text."""
    context: Column | None = None
    """Optional context prepended to the question (e.g. an abstract)."""
    options: Column | None = "options"
    """Answer options: a list, or a map from letter to text (multiple choice)."""
    answer: Column = "answer"
    """The ground-truth answer (option letter, option text, label or free text)."""
    images: Column | None = "images"
    """Image file names/URIs (a string or a list) or inline image bytes."""
    traces: Column | None = None
    """Pre-generated reasoning traces (a string or a list), used with ``tracesFrom``."""
    metadata: Annotated[list[Column], Field(max_length=32)] = []
    """Extra columns copied verbatim into the sample's metadata."""


class CurationSource(Spec):
    """One input dataset and how to read it."""

    name: Ident
    """Short name of the source; appears in reports and per-source counts."""
    uri: StorageUri
    """Where the data lives: a file or a folder (``s3://``, ``file:///`` or a path)."""
    format: SourceFormat = "jsonl"
    """File format of the source."""
    fields: FieldMapping = FieldMapping()
    """Mapping from input columns to the canonical sample schema."""
    image_root: StorageUri | None = None
    """Base URI that relative image paths are resolved against; unset: the folder of ``uri``."""
    options: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=26)] = []
    """Fixed answer options for every row (e.g. ``[yes, no, maybe]``) when the data has none."""
    task: TaskType
    """Task type of every row of this source; selects the verifier."""
    modality: Modality = "text"
    """``image`` when rows carry images (selects the image teacher)."""
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    """Relative sampling weight of the source in the final mixture."""
    max_samples: Annotated[int, Field(ge=1)] | None = None
    """Cap on the number of questions taken from this source (deterministic subset)."""
    class_balance: bool = False
    """Stratified sampling so every class label is equally represented (classification sources)."""
    split: Annotated[str, Field(max_length=63)] | None = None
    """Split to read, for formats that hold several (``hf``)."""


class RetryPolicy(Spec):
    """Attempts of one teacher request. Sized for long-reasoning teachers: a DeepSeek-R1
    request for 16 samples of up to 16,384 tokens can take many minutes, and every attempt
    that reaches the server may be billed, so a request is sent at most ``attempts`` times."""

    attempts: Annotated[int, Field(ge=1, le=20)] = 3
    """Sends of one request at most, the first included (1: never retried)."""
    timeout_seconds: Annotated[float, Field(gt=0, le=7200)] = 1800
    """Time one attempt may take before it is abandoned (and, if attempts remain, sent again)."""
    retry_on_timeout: bool = True
    """Send a timed-out request again. A timed-out request may have been generated (and billed)
    all the same; false: a timeout fails the question at once."""
    backoff_seconds: Annotated[float, Field(ge=0, le=600)] = 5
    """Wait before the first retry; doubled before each further one. A server's
    ``Retry-After`` (429/503) is honoured instead, up to ``maxBackoffSeconds``."""
    max_backoff_seconds: Annotated[float, Field(ge=0, le=3600)] = 120
    """Longest wait between two attempts."""


class TeacherSpec(Spec):
    """A teacher model behind an OpenAI-compatible chat-completions endpoint."""

    endpoint: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^https?://")]
    """Base URL of the API, e.g. ``http://vllm.teachers.svc:8000/v1`` (in-cluster) or a hosted API."""
    model: Annotated[str, Field(min_length=1, max_length=256)]
    """Model name sent with each request, e.g. ``deepseek-ai/DeepSeek-R1`` or ``gpt-4o``."""
    api_key_secret: SecretKeyRef | None = None
    """Secret key holding the API key; unset: no Authorization header (in-cluster servers)."""
    samples_per_question: Annotated[int, Field(ge=1, le=256)] = 16
    """Traces sampled per question before rejection sampling (paper: 16)."""
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.6
    """Sampling temperature; high enough that the samples differ."""
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    """Nucleus sampling mass."""
    max_tokens: Annotated[int, Field(ge=1, le=131072)] = 16384
    """Maximum tokens per teacher response."""
    concurrency: Annotated[int, Field(ge=1, le=4096)] = 32
    """Requests in flight at once, per worker."""
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    """Client-side rate limit per worker; unset: none."""
    retry: RetryPolicy = RetryPolicy()
    """How often one request is sent, and how long each attempt may take. Every attempt is
    counted (a timed-out attempt may still be billed by the provider)."""


class TeacherCacheSpec(Spec):
    """The teacher response cache: one entry per distinct request (endpoint, model, sampling
    parameters, the exact messages), holding its samples by index. It lives outside any
    generation's folder, so a later generation (a fixed verifier, other length buckets,
    another dedup threshold) finds every response an earlier one paid for."""

    scope: Literal["Run", "Bucket"] = "Run"
    """``Run``: ``<storage root>/<namespace>/<run>/teacher-cache/``, shared by every generation
    of the run; ``Bucket``: ``<storage root>/teacher-cache/``, shared by every run in the
    storage (opt-in: runs of other teams then reuse each other's responses)."""


class TeachersSpec(Spec):
    """Teachers per modality; the paper used a long-reasoning text teacher (DeepSeek-R1) and a
    multimodal teacher (GPT-4o) for image questions. Mixing them spreads trace lengths."""

    text: TeacherSpec | None = None
    """Teacher for text-only questions."""
    image: TeacherSpec | None = None
    """Teacher for questions with images."""

    cache: TeacherCacheSpec = TeacherCacheSpec()
    """Where responses are kept so that no request is paid twice."""

    model_config = k8s_rules(
        cel("has(self.text) || has(self.image)", "at least one of text or image must be set")
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> TeachersSpec:
        if self.text is None and self.image is None:
            raise ValueError("at least one of text or image must be set")
        return self


class TracesImport(Spec):
    """Use pre-generated reasoning traces instead of calling a teacher."""

    uri: StorageUri | None = None
    """A jsonl/parquet file of ``{id, traces}`` rows joined to the sources on id; unset: the
    traces come from each source's ``fields.traces`` column."""
    format: Literal["jsonl", "parquet"] = "jsonl"
    """Format of the file at ``uri``."""
    id_column: Column = "id"
    """Id column of the traces file."""
    traces_column: Column = "traces"
    """Column of the traces file holding a trace or a list of traces."""


class VerifierMap(Spec):
    """The verifier used for each task type."""

    mcq: VerifierKind = "option"
    """Verifier for multiple-choice questions."""
    open: VerifierKind = "normalized"
    """Verifier for open questions."""
    classification: VerifierKind = "label"
    """Verifier for classification questions."""
    report: VerifierKind = "none"
    """Verifier for report generation."""


class VerificationSpec(Spec):
    """Rejection sampling: keep only traces whose final answer is correct."""

    max_correct_per_question: Annotated[int, Field(ge=1, le=256)] = 16
    """Keep at most K correct traces per question (16 = every correct sample of 16)."""
    verifiers: VerifierMap = VerifierMap()
    """Verifier per task type."""
    f1_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Token-F1 a ``tokenF1`` verifier needs to accept a trace."""
    require_think: bool = True
    """Reject traces that do not close their reasoning before the answer."""


DEFAULT_SYSTEM_PROMPT = (
    "You are a careful medical expert. Think through the problem step by step inside "
    "<think> </think> tags, then give the final answer."
)


class FormatSpec(Spec):
    """How a sample is rendered: system prompt, user turn, and ``<think>`` trace + final answer."""

    system_prompt: LongText = DEFAULT_SYSTEM_PROMPT
    """System prompt of every training sample."""
    think_start: Annotated[str, Field(min_length=1, max_length=32)] = "<think>"
    """Token opening the reasoning."""
    think_end: Annotated[str, Field(min_length=1, max_length=32)] = "</think>"
    """Token closing the reasoning."""
    answer_template: Annotated[str, Field(min_length=1, max_length=1024)] = (
        "The answer is {answer}."
    )
    """Final answer after the reasoning; ``{answer}`` is replaced by the verified answer."""
    option_style: Literal["letters"] = "letters"
    """How options are labelled in the user turn: ``A.``, ``B.`` ... — the labels the teacher
    answers with, the verifier and the eval harness read, and the trained answer states.
    (``numbers`` was removed: eval prompts and scores letters, so numbered training data would
    teach answers the eval cannot score.)"""

    @field_validator("option_style", mode="before")
    @classmethod
    def _letters_only(cls, value: object) -> object:
        if value == "numbers":
            raise ValueError(
                "optionStyle 'numbers' is not supported: the teacher, the verifier and the "
                "eval harness label options with letters (use 'letters')"
            )
        return value


class LengthBucket(Spec):
    """A share of the final mixture for traces up to a token length."""

    max_tokens: Annotated[int, Field(ge=1)]
    """Upper bound (inclusive) of response tokens of this bucket; buckets are ordered by it."""
    fraction: Annotated[float, Field(gt=0, le=1)]
    """Target fraction of samples in this bucket."""


class LengthsSpec(Spec):
    """Token lengths (measured with the processor) and the optional length mixture."""

    max_tokens: Annotated[int, Field(ge=16)] = 16384
    """Samples longer than this (prompt + images + response) are dropped and counted."""
    buckets: Annotated[list[LengthBucket], Field(max_length=32)] = []
    """Optional length-bucket mixture targets; empty: keep the natural length distribution."""

    model_config = k8s_rules(
        cel(
            "self.buckets.all(b, b.maxTokens <= self.maxTokens)",
            "bucket maxTokens must not exceed maxTokens",
            field_path=".buckets",
        ),
        cel(
            "size(self.buckets) == 0 || self.buckets.map(b, b.fraction).sum() <= 1.000001",
            "bucket fractions must sum to at most 1",
            field_path=".buckets",
        ),
    )

    @model_validator(mode="after")
    def _buckets_fit(self) -> LengthsSpec:
        if any(b.max_tokens > self.max_tokens for b in self.buckets):
            raise ValueError("bucket maxTokens must not exceed maxTokens")
        if sum(b.fraction for b in self.buckets) > 1.000001:
            raise ValueError("bucket fractions must sum to at most 1")
        return self


class DedupSpec(Spec):
    """De-duplication of questions and images."""

    exact: bool = True
    """Drop questions whose normalised text hash was already seen."""
    near_duplicate: bool = True
    """Drop near-duplicate questions found with MinHash LSH."""
    minhash_threshold: Annotated[float, Field(gt=0, le=1)] = 0.8
    """Jaccard similarity above which two questions are near-duplicates."""
    num_perm: Annotated[int, Field(ge=16, le=1024)] = 128
    """MinHash permutations."""
    shingle_size: Annotated[int, Field(ge=1, le=32)] = 5
    """Word n-gram size of the MinHash shingles."""
    image_hash: bool = True
    """Drop exact duplicate images (sha256 of the decoded pixels)."""


class DecontaminationSpec(Spec):
    """Remove training questions that overlap any evaluation benchmark."""

    enabled: bool = True
    """Run decontamination."""
    benchmarks: Annotated[list[BenchmarkSpec], Field(max_length=64)] = []
    """Benchmarks to protect. In a MedSFTRun, the eval stage's benchmarks are always added."""
    ngram: Annotated[int, Field(ge=4, le=64)] = 16
    """Word n-gram size of the overlap test (paper: 16)."""
    image_hash: bool = True
    """Also remove samples whose image hash matches a benchmark image."""


class ImagesSpec(Spec):
    """Image preprocessing."""

    max_pixels: Annotated[int, Field(ge=3136)] = 262144
    """Resize images to at most this many pixels, keeping the aspect ratio (paper: 262,144)."""
    min_pixels: Annotated[int, Field(ge=1)] = 3136
    """Upscale images smaller than this (3,136 = 56x56, the smallest Qwen2.5-VL grid)."""
    max_images_per_sample: Annotated[int, Field(ge=1, le=64)] = 10
    """Samples with more images are dropped and counted."""
    encoding: Literal["png", "jpeg", "webp"] = "png"
    """How resized images are stored in the shards."""

    model_config = k8s_rules(
        cel("self.minPixels <= self.maxPixels", "minPixels must not exceed maxPixels")
    )

    @model_validator(mode="after")
    def _pixel_range(self) -> ImagesSpec:
        if self.min_pixels > self.max_pixels:
            raise ValueError("minPixels must not exceed maxPixels")
        return self


class ProcessorSpec(Spec):
    """The model whose processor measures token lengths (image tokens included)."""

    model: ModelLocation
    """Location of the model/processor files (``s3://``, ``file://`` or a local folder)."""


class ShardingSpec(Spec):
    """Layout of the output shards."""

    samples_per_shard: Annotated[int, Field(ge=1, le=10_000_000)] = 4096
    """Samples per Parquet shard."""
    compression: Literal["zstd", "snappy", "none"] = "zstd"
    """Parquet compression codec."""


class ErrorBudget(Spec):
    """How much bad input (malformed rows, missing images, unparseable teacher output) is tolerated."""

    max_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    """The job fails when more than this fraction of input rows is quarantined."""


class OutputSpec(Spec):
    """Where the dataset goes."""

    uri: StorageUri | None = None
    """Destination folder; unset: ``<storage root>/<namespace>/<run>/g<generation>/curation``."""


class CurationSpec(OneOf):
    """The data recipe: the data part of a CurationJob."""

    sources: Annotated[list[CurationSource], Field(min_length=1, max_length=256)]
    """Input datasets."""
    teachers: TeachersSpec | None = None
    """Teachers that generate traces. Exactly one of teachers or tracesFrom."""
    traces_from: TracesImport | None = None
    """Import pre-generated traces instead of calling teachers. Exactly one of teachers or tracesFrom."""
    verification: VerificationSpec = VerificationSpec()
    """Rejection sampling on the final answer."""
    format: FormatSpec = FormatSpec()
    """The structured output template."""
    lengths: LengthsSpec = LengthsSpec()
    """Token lengths and the optional length mixture."""
    dedup: DedupSpec = DedupSpec()
    """De-duplication."""
    decontamination: DecontaminationSpec = DecontaminationSpec()
    """Decontamination against evaluation benchmarks."""
    images: ImagesSpec = ImagesSpec()
    """Image preprocessing."""
    processor: ProcessorSpec | None = None
    """Processor used to count tokens. Required for a standalone CurationJob; in a MedSFTRun it
    defaults to the SFT base model."""
    sharding: ShardingSpec = ShardingSpec()
    """Output shard layout."""
    error_budget: ErrorBudget = ErrorBudget()
    """Tolerated share of bad input."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of every sampling decision (subsets, class balance, mixture); same seed, same dataset."""
    output: OutputSpec = OutputSpec()
    """Destination of the dataset."""

    one_of = ("teachers", "traces_from")
    model_config = k8s_rules(
        one_of_rule(one_of),
        cel(
            "self.sources.all(s, self.sources.exists_one(t, t.name == s.name))",
            "source names must be unique",
            field_path=".sources",
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> CurationSpec:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError("source names must be unique")
        return self
