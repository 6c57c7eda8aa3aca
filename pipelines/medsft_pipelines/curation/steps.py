"""The per-question steps of a curation worker, as small composable parts.

A worker reads each source's rows into :class:`Item` s (:class:`LoadSamples`), then runs a
list of :class:`Step` s over each batch: every step takes the items of a batch and returns
the items that go on, counting what it saw, removed or quarantined in a :class:`Tally`.
The worker composes two lists from the spec (:func:`scan_steps`: before selection, no
teacher; :func:`trace_steps`: the selected questions, teacher onwards) and writes what comes
out; adding a step (a quality filter, another verifier) means adding it to a list, not
editing the worker. Steps are deterministic given their inputs (the teacher's answers come
from its cache when repeated), so N workers still make the dataset one worker makes.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow.parquet as pq

from medsft_pipelines.specs.common import join_uri
from medsft_pipelines.specs.curation import (
    CurationSource,
    CurationSpec,
    FormatSpec,
    TeacherSpec,
    TracesImport,
    VerificationSpec,
)
from medsft_pipelines.storage import ObjectNotFound, ObjectStore

from .counts import key
from .decontam import BenchmarkIndex
from .errors import BadInput, CurationError
from .format import render_messages
from .images import ImageProcessor
from .lengths import QuestionTokens, TokenCounter
from .quarantine import Quarantine
from .sample import ProcessedImage, Sample
from .sources import Fetcher, RawRow, SourceContext, describe_raw, to_sample
from .teacher import TeacherClient, resolve_api_key
from .text import question_hash
from .verify import ACCEPTED, UNPARSEABLE, verifier_kind, verify


@dataclass
class Tally:
    """What steps count (keys made with :func:`.counts.key`) and the input they quarantine."""

    counts: Counter[str] = field(default_factory=Counter)
    quarantine: Quarantine = field(default_factory=Quarantine)


@dataclass
class Item:
    """One question on its way through the steps."""

    sample: Sample
    traces: list[str] | BadInput | None = None
    """The teacher's (or imported) responses; BadInput when there are none to use."""
    teacher: str = "imported"
    """Who wrote the traces (a row column)."""
    accepted: list[tuple[int, list[dict[str, str]]]] = field(default_factory=list)
    """(trace index, rendered messages) of each trace verification kept."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The training rows made of the item (an item may end with none: it is still recorded
    as a question)."""


class Step(Protocol):
    """Items of a batch in, the items that go on out; what happened counted in ``tally``."""

    cpu: str
    """Where the step's CPU time is reported (``cpu_ms/<cpu>`` in the worker's counts)."""

    async def __call__(self, items: list[Item], tally: Tally) -> list[Item]: ...


async def run_steps(steps: Sequence[Step], items: list[Item], tally: Tally) -> list[Item]:
    """``items`` through ``steps`` in order."""
    for step in steps:
        items = await step(items, tally)
    return items


# -- reading ------------------------------------------------------------------------------------


class LoadSamples:
    """Raw rows of one source -> items: the row mapped to a :class:`Sample`, its images read
    and processed (a referenced file once per worker, while it stays in the cache), its
    question hash set. Unusable rows are quarantined by reason; samples with more images
    than the spec allows are removed."""

    cpu = "sources_images"

    def __init__(
        self,
        fetcher: Fetcher,
        images: ImageProcessor,
        *,
        max_images: int,
        pixel_identity: bool,
    ) -> None:
        self.fetcher = fetcher
        self.images = images
        self.max_images = max_images
        self.pixel_identity = pixel_identity
        """Exact-duplicate key of an image: its decoded pixels (True) or its file bytes."""
        self._by_uri: OrderedDict[str, ProcessedImage | BadInput] = OrderedDict()

    def __call__(
        self, ctx: SourceContext, batch: Sequence[tuple[int, RawRow]], tally: Tally
    ) -> list[Item]:
        return [Item(s) for row_index, raw in batch if (s := self.load(ctx, row_index, raw, tally))]

    def load(self, ctx: SourceContext, row_index: int, raw: RawRow, tally: Tally) -> Sample | None:
        src = ctx.source
        try:
            sample = to_sample(raw, ctx, row_index)
            sample.images = [self._image(ref, src) for ref in sample.image_refs]
        except BadInput as bad:
            tally.counts[key("quarantined", src.name, bad.reason)] += 1
            tally.quarantine.add(
                bad.reason,
                source=src.name,
                row_index=row_index,
                detail=bad.detail,
                raw=describe_raw(raw) if bad.reason == "malformed_row" else None,
            )
            return None
        if len(sample.images) > self.max_images:
            tally.counts[key("removed", "too_many_images", src.name)] += 1
            return None
        sample.question_hash = question_hash(sample.prompt_text(), self.image_ids(sample))
        return sample

    def image_ids(self, sample: Sample) -> list[str]:
        """Image identity in the exact-duplicate key: decoded pixels, or file bytes."""
        if self.pixel_identity:
            return [im.sha256 for im in sample.images]
        return [im.file_sha256 for im in sample.images]

    def _image(self, ref: bytes | str, src: CurationSource) -> ProcessedImage:
        if isinstance(ref, bytes):
            return self.images(ref)
        uri = ref if "://" in ref else join_uri(src.image_root or src.uri.rpartition("/")[0], ref)
        hit = self._by_uri.get(uri)
        if hit is None:
            try:
                hit = self.images(self.fetcher.read_bytes(uri))
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ObjectNotFound):
                hit = BadInput("missing_image", f"image {ref!r} not found")
            except BadInput as bad:
                hit = bad
            self._by_uri[uri] = hit
            if len(self._by_uri) > self.images.cache_size:
                self._by_uri.popitem(last=False)
        if isinstance(hit, BadInput):
            raise BadInput(hit.reason, hit.detail)
        return hit


# -- before selection ---------------------------------------------------------------------------


class Decontaminate:
    """Removes questions that overlap an evaluation benchmark (text n-grams, near
    paraphrases, and with ``image_hash`` the images' file or pixel hashes)."""

    cpu = "scan"

    def __init__(self, bench: BenchmarkIndex, *, image_hash: bool) -> None:
        self.bench = bench
        self.image_hash = image_hash

    async def __call__(self, items: list[Item], tally: Tally) -> list[Item]:
        if not items:
            return items
        samples = [item.sample for item in items]
        hashes = [
            [h for im in s.images for h in (im.file_sha256, im.sha256)] if self.image_hash else []
            for s in samples
        ]
        found = self.bench.check_many(
            [s.prompt_text() for s in samples], hashes, [s.question for s in samples]
        )
        kept = []
        for item, hit in zip(items, found, strict=True):
            if hit is None:
                kept.append(item)
            else:
                tally.counts[key("decontam", hit.benchmark, hit.reason)] += 1
                tally.counts[key("removed", "decontamination", item.sample.source)] += 1
        return kept


# -- traces -------------------------------------------------------------------------------------


class TeacherTraces:
    """Each question to the teacher of its modality (an image teacher also answers text
    questions when there is no text teacher); counts what was sent."""

    cpu = "traces"

    def __init__(self, teachers: Mapping[str, TeacherClient]) -> None:
        self.teachers = teachers

    def client(self, sample: Sample) -> TeacherClient | None:
        return self.teachers.get(sample.modality) or self.teachers.get("image")

    async def __call__(self, items: list[Item], tally: Tally) -> list[Item]:
        for item in items:
            tally.counts[key("teacher_sent", "questions", item.sample.source)] += 1
            item.traces = []
            client = self.client(item.sample)
            item.teacher = client.name if client else "none"
        for modality in ("text", "image"):
            client = self.teachers.get(modality) or self.teachers.get("image")
            picked = [item for item in items if item.sample.modality == modality]
            if not picked or client is None:
                continue
            answers = await client.generate_many([item.sample for item in picked])
            for item, answer in zip(picked, answers, strict=True):
                item.traces = answer
        return items


def teacher_clients(spec: CurationSpec, cache: ObjectStore) -> dict[str, TeacherClient]:
    """A client per teacher the spec names, by modality, answering from ``cache`` first;
    CurationError when image sources have no image teacher."""
    assert spec.teachers is not None
    clients = {}
    for modality in ("text", "image"):
        teacher: TeacherSpec | None = getattr(spec.teachers, modality)
        if teacher is not None:
            clients[modality] = TeacherClient(
                teacher,
                api_key=resolve_api_key(modality, teacher),
                cache=cache,
            )
    if "image" not in clients and any(s.modality == "image" for s in spec.sources):
        raise CurationError("image sources need teachers.image (a multimodal teacher)")
    return clients


def read_traces_file(spec: TracesImport, fetcher: Fetcher) -> dict[str, list[str]]:
    """The traces of a ``tracesFrom`` file (jsonl or parquet) by question id: a value of the
    traces column is one trace or a list of them; rows without an id or traces are skipped."""
    assert spec.uri is not None
    path = fetcher.file(spec.uri)
    if spec.format == "parquet":
        records: list[dict[str, Any]] = pq.read_table(
            path, columns=[spec.id_column, spec.traces_column]
        ).to_pylist()
    else:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    traces: dict[str, list[str]] = {}
    for rec in records:
        value = rec.get(spec.traces_column)
        if rec.get(spec.id_column) is None or value is None:
            continue
        values = value if isinstance(value, list) else [value]
        traces.setdefault(str(rec[spec.id_column]), []).extend(str(v) for v in values)
    return traces


class ImportedTraces:
    """Traces that come with the data: a source's own trace column, or a traces file
    (``tracesFrom.uri``, by question id or the source's raw id)."""

    cpu = "traces"

    def __init__(self, imported: Mapping[str, list[str]] | None) -> None:
        self.imported = imported

    async def __call__(self, items: list[Item], tally: Tally) -> list[Item]:
        for item in items:
            s = item.sample
            traces = s.traces
            if self.imported is not None:
                raw_id = s.id.split("/", 1)[1]
                traces = self.imported.get(s.id) or self.imported.get(raw_id) or []
            item.traces = traces if traces else BadInput("missing_traces", "no imported traces")
            item.teacher = "imported"
        return items


# -- verification, format, lengths --------------------------------------------------------------


class VerifyAndFormat:
    """Rejection sampling: keeps at most ``maxCorrectPerQuestion`` traces whose final answer
    grades correct, rendered in the structured format; counts every verdict and quarantines
    unparseable responses (and questions none of whose responses parse)."""

    cpu = "verify_format_lengths"

    def __init__(self, spec: VerificationSpec, fmt: FormatSpec, *, imported: bool) -> None:
        self.spec = spec
        self.format = fmt
        self.imported = imported

    async def __call__(self, items: list[Item], tally: Tally) -> list[Item]:
        for item in items:
            self.verify(item, tally)
        return items

    def verify(self, item: Item, tally: Tally) -> None:
        sample, answer, vspec = item.sample, item.traces, self.spec
        src = sample.source
        if answer is None:
            answer = []
        if isinstance(answer, BadInput):
            tally.counts[key("quarantined", src, answer.reason)] += 1
            tally.quarantine.add(
                answer.reason,
                source=src,
                row_index=sample.order[1],
                sample_id=sample.id,
                detail=answer.detail,
            )
            return
        kind = verifier_kind(sample, vspec)
        verdicts = [verify(sample, r, kind, vspec, imported=self.imported) for r in answer]
        base = ("traces", src, sample.task_type)
        tally.counts[key(*base, "generated")] += len(verdicts)
        kept = 0
        for ti, (response, verdict) in enumerate(zip(answer, verdicts, strict=True)):
            tally.counts[key(*base, verdict.reason)] += 1
            if verdict.reason == UNPARSEABLE:
                tally.quarantine.add(
                    "unparseable_response",
                    source=src,
                    row_index=sample.order[1],
                    sample_id=sample.id,
                    response=response,
                )
            if verdict.reason != ACCEPTED:
                continue
            if kept >= vspec.max_correct_per_question:
                tally.counts[key(*base, "over_max_correct")] += 1
                continue
            kept += 1
            item.accepted.append((ti, render_messages(sample, verdict.reasoning, self.format)))
        if verdicts and all(v.reason == UNPARSEABLE for v in verdicts):
            tally.counts[key("quarantined", src, "teacher_unparseable")] += 1
            tally.quarantine.add(
                "teacher_unparseable",
                source=src,
                row_index=sample.order[1],
                sample_id=sample.id,
                detail=f"none of {len(verdicts)} responses has a parseable answer",
            )
        if kept:
            tally.counts[key("questions", src, "with_traces")] += 1


class MeasureLengths:
    """Token lengths with the target model's processor (what SFT trains on, images
    included); rows longer than ``max_tokens`` are removed, the rest become training rows."""

    cpu = "verify_format_lengths"

    def __init__(self, counter: TokenCounter, max_tokens: int) -> None:
        self.counter = counter
        self.max_tokens = max_tokens

    async def __call__(self, items: list[Item], tally: Tally) -> list[Item]:
        pending = [(item, ti, messages) for item in items for ti, messages in item.accepted]
        if not pending:
            return items
        prompts: dict[int, QuestionTokens] = {}
        for item, _, messages in pending:
            if id(item) not in prompts:
                sizes = [(im.width, im.height) for im in item.sample.images]
                prompts[id(item)] = self.counter.question(messages, sizes)
        lengths = self.counter.count(
            [prompts[id(item)] for item, *_ in pending], [m[-1]["content"] for *_, m in pending]
        )
        for (item, ti, messages), (n_tokens, trace_tokens) in zip(pending, lengths, strict=True):
            sample = item.sample
            if n_tokens > self.max_tokens:
                tally.counts[key("removed", "too_long", sample.source)] += 1
                continue
            item.rows.append(
                {
                    "id": f"{sample.id}#{ti}",
                    "question_id": sample.id,
                    "source": sample.source,
                    "task_type": sample.task_type,
                    "modality": sample.modality,
                    "images": [im.data for im in sample.images],
                    "image_sha256": [im.sha256 for im in sample.images],
                    "question": sample.question,
                    "context": sample.context,
                    "options": sample.options,
                    "answer": sample.answer,
                    "messages": messages,
                    "n_tokens": n_tokens,
                    "trace_tokens": trace_tokens,
                    "trace_index": ti,
                    "teacher": item.teacher,
                    "metadata": json.dumps(sample.metadata, sort_keys=True),
                }
            )
        return items


# -- compositions -------------------------------------------------------------------------------


def scan_steps(bench: BenchmarkIndex | None, *, image_hash: bool) -> list[Step]:
    """What a slice's questions go through before selection (no teacher)."""
    return [Decontaminate(bench, image_hash=image_hash)] if bench is not None else []


def trace_steps(
    *,
    teachers: Mapping[str, TeacherClient],
    imported: Mapping[str, list[str]] | None,
    verification: VerificationSpec,
    fmt: FormatSpec,
    counter: TokenCounter,
    max_tokens: int,
) -> list[Step]:
    """What the selected questions go through: traces (the teacher's when the spec names
    teachers, else imported ones), verification and format, lengths."""
    traces: Step = TeacherTraces(teachers) if teachers else ImportedTraces(imported)
    return [
        traces,
        VerifyAndFormat(verification, fmt, imported=not teachers),
        MeasureLengths(counter, max_tokens),
    ]


__all__ = [
    "Decontaminate",
    "ImportedTraces",
    "Item",
    "LoadSamples",
    "MeasureLengths",
    "Step",
    "Tally",
    "TeacherTraces",
    "VerifyAndFormat",
    "read_traces_file",
    "run_steps",
    "scan_steps",
    "teacher_clients",
    "trace_steps",
]
