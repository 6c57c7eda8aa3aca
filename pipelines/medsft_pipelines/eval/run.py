"""The eval harness: benchmarks x seeds x models -> graded generations -> scores -> report.

Layout written under the job's ``outputUri``::

    generations/<model>/<benchmark>/<split>/seed-<n>.jsonl          every graded generation
    generations/<model>/<benchmark>/<split>/seed-<n>.identity.json  what produced it
    results.json, report.md, plots/*.png, summary.json   (see :mod:`.report`)

and ``progress.json`` under the progress URI. A restarted job reuses a complete generations
file only when its identity (the model's weights, the generation settings, the prompt
template, the items) is the current one, so only unfinished or changed passes run again; a
reused pass is re-graded with the current answer extraction.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsft_pipelines.answers import grade_response
from medsft_pipelines.models.fetch import model_folder
from medsft_pipelines.specs.common import join_uri
from medsft_pipelines.specs.eval import GenerationSpec
from medsft_pipelines.specs.jobconfig import EvalJobConfig
from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store
from medsft_pipelines.storage.progress import ProgressReporter
from medsft_pipelines.tracking import MLflowTracker, open_tracker

from .backends import Engine, Request, generate, open_engine
from .files import BenchmarkFormatError
from .items import BenchItem, Benchmark
from .metrics import Record
from .prompting import (
    PromptTemplate,
    build_messages,
    generation_prefix,
    sampling_of,
    template_for,
)
from .registry import load_benchmark
from .report import count_parameters, write_report

log = logging.getLogger(__name__)

EngineFactory = Callable[[str, GenerationSpec], Engine]


@dataclass(frozen=True)
class ModelUnderTest:
    """A model to generate with: its report label and its local Hugging Face folder."""

    label: str
    """``model`` for the model under test, the baseline's name otherwise."""
    path: Path
    """Local folder with config.json, weights and processor."""
    fine_tuned: bool
    """A medsft fine-tune (prompted with the curation recipe's template)."""


# ----------------------------------------------------------------------------- storage


def resolve_model(location: str, settings: StorageSettings, cache_dir: Path) -> Path:
    """A local folder holding the model at ``location`` (``s3://…`` is downloaded once)."""
    path = model_folder(location, settings, cache_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model (config.json) at {location}")
    return path


def benchmark_root(config: EvalJobConfig, name: str, uri: str | None) -> str:
    """Where a benchmark's files are: its URI, else ``<storage root>/benchmarks/<name>``."""
    return uri or join_uri(config.storage.root_uri(), "benchmarks", name)


def load_benchmarks(config: EvalJobConfig, settings: StorageSettings) -> list[Benchmark]:
    """Every benchmark of the spec, loaded and checked (files and images) before any generation."""
    loaded = []
    names = Counter(bench.name for bench in config.spec.benchmarks)
    for bench in config.spec.benchmarks:
        if bench.format == "hf":
            raise BenchmarkFormatError(
                f"benchmark {bench.name}: format 'hf' needs the hub; give the files' uri"
            )
        root = benchmark_root(config, bench.name, bench.uri)
        store = open_store(root, settings) if root.startswith("s3://") else root
        benchmark = load_benchmark(
            bench.name,
            store,
            bench.split,
            distribution=bench.distribution,
            max_items=bench.max_items,
        )
        if names[bench.name] > 1:
            # Two splits of one benchmark are two rows of the report, never one.
            benchmark = dataclasses.replace(benchmark, name=f"{bench.name}[{bench.split}]")
        loaded.append(benchmark)
    return loaded


# ----------------------------------------------------------------------------- generation


class Tracker:
    """Progress of the whole run: ``progress.json`` for the operator, a bar on a terminal."""

    def __init__(self, reporter: ProgressReporter | None, total: int) -> None:
        from rich.progress import Progress

        self.reporter = reporter
        self.total = total
        self.done = 0
        self.counts: dict[str, int] = {"generations": 0, "unparsed": 0, "forcedExits": 0}
        self.bar = Progress(disable=not sys.stderr.isatty(), transient=True)
        self.task = self.bar.add_task("eval", total=total)
        self.bar.start()

    def advance(self, n: int, **where: Any) -> None:
        self.done += n
        self.counts["generations"] = self.done
        self.bar.update(
            self.task, completed=self.done, description=" ".join(map(str, where.values()))
        )
        if self.reporter:
            self.reporter.update(step=self.done, total=self.total, counts=self.counts, **where)

    def close(self) -> None:
        self.bar.stop()
        if self.reporter:
            self.reporter.update(step=self.done, total=self.total, counts=self.counts, force=True)


def load_images(benchmark: Benchmark, item: BenchItem, max_images: int) -> tuple[Any, ...]:
    """The item's first ``max_images`` images, decoded to RGB (resizing is the processor's)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for ref in item.images[:max_images]:
        try:
            images.append(Image.open(io.BytesIO(benchmark.image_bytes(ref))).convert("RGB"))
        except UnidentifiedImageError:
            name = ref if isinstance(ref, str) else "inline image"
            raise BenchmarkFormatError(
                f"benchmark {benchmark.name}: item {item.id}: {name} is not an image"
            ) from None
    return tuple(images)


def grade_generation(
    benchmark: str,
    item: BenchItem,
    seed: int,
    text: str,
    think: int,
    answer: int,
    forced_exit: bool,
    finished: bool,
    think_opened: bool,
) -> Record:
    """Grade one response into a :class:`Record` (bad answers grade as wrong, never raise)."""
    grade = grade_response(
        text, item.answer, item.kind, item.options or None, opened_in_prompt=think_opened
    )
    return Record(
        benchmark=benchmark,
        id=item.id,
        seed=seed,
        kind=item.kind.value,
        gold=item.answer,
        response=text,
        prediction=grade.prediction,
        correct=grade.correct,
        score=grade.score,
        think_tokens=think,
        answer_tokens=answer,
        forced_exit=forced_exit,
        finished=finished,
        reading=grade.reading,
    )


def generations_key(label: str, benchmark: str, split: str, seed: int) -> str:
    """Where one pass's graded generations are stored (two splits never share a file)."""
    return f"generations/{label}/{benchmark}/{split}/seed-{seed}.jsonl"


def identity_key(generations: str) -> str:
    """The identity file beside a generations file."""
    return generations.removesuffix(".jsonl") + ".identity.json"


_SAMPLED_BYTES = 1 << 16
_SAMPLES_PER_FILE = 16
_WHOLE_FILE_BELOW = 1 << 22


def model_fingerprint(path: Path) -> str:
    """A content fingerprint of a model folder, cheap on a 16 GB checkpoint.

    Small files (configs, tokenizer, chat template) are hashed whole; a weights file by its
    size and 16 evenly spaced 64 KiB windows (first and last included). Training changes
    every tensor, so any fine-tune of the same shapes differs in every window; a location is
    not an identity (``medsft run --local`` rewrites the same folder after an edit).
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\0{size}\0".encode())
        with file.open("rb") as f:
            if size <= _WHOLE_FILE_BELOW:
                digest.update(f.read())
                continue
            last = size - _SAMPLED_BYTES
            for i in range(_SAMPLES_PER_FILE):
                f.seek(last * i // (_SAMPLES_PER_FILE - 1))
                digest.update(f.read(_SAMPLED_BYTES))
    return digest.hexdigest()


# Settings that do not change what a pass generates: how many seeds run and whether the
# report adds a majority vote.
_REPORT_ONLY = ("seeds", "majority_vote")


def pass_identity(
    model: str, gen: GenerationSpec, template: PromptTemplate, benchmark: Benchmark, seed: int
) -> dict[str, Any]:
    """Everything a stored pass must match to be reused instead of generated again."""
    items = hashlib.sha256(
        json.dumps([item.to_dict() for item in benchmark.items], sort_keys=True).encode()
    ).hexdigest()
    settings = gen.model_dump(mode="json", exclude=set(_REPORT_ONLY))
    return {
        "model": model,
        "generation": settings,
        "template": dataclasses.asdict(template),
        "benchmark": benchmark.name,
        "split": benchmark.split,
        "items": items,
        "seed": seed,
    }


def read_records(out: ObjectStore, key: str) -> list[Record]:
    """Records of one generations file."""
    lines = out.get_bytes(key).decode().splitlines()
    return [Record.from_json(json.loads(line)) for line in lines if line.strip()]


def regrade(benchmark: Benchmark, stored: Sequence[Record], think_opened: bool) -> list[Record]:
    """Stored generations graded again with today's answer extraction (the raw responses and
    token counts are kept; only prediction, correctness and score are recomputed)."""
    items = {item.id: item for item in benchmark.items}
    return [
        grade_generation(
            r.benchmark,
            items[r.id],
            r.seed,
            r.response,
            r.think_tokens,
            r.answer_tokens,
            r.forced_exit,
            r.finished,
            think_opened,
        )
        for r in stored
    ]


def run_pass(
    engine: Engine,
    benchmark: Benchmark,
    template: PromptTemplate,
    gen: GenerationSpec,
    seed: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[Record]:
    """One seed of one model over one benchmark: prompts, generation, grading."""
    sampling = sampling_of(gen, template, seed)
    think_opened = sampling.think_opened
    prefix = generation_prefix(template, gen.mode)
    requests, items = [], {}
    for item in benchmark.items:
        images = load_images(benchmark, item, gen.max_images)
        prompt = engine.render(build_messages(item, template, gen.mode, len(images))) + prefix
        requests.append(Request(item.id, prompt, images))
        items[item.id] = item
    # Similar lengths together: less padding per batch. Stable, so the order is reproducible.
    requests.sort(key=lambda r: (len(r.images), len(r.prompt)))
    generations = {g.key: g for g in generate(engine, requests, sampling, on_progress)}
    return [
        grade_generation(
            benchmark.name,
            item,
            seed,
            g.text,
            g.think_tokens,
            g.answer_tokens,
            g.forced_exit,
            g.finished,
            think_opened,
        )
        for item in benchmark.items
        for g in [generations[item.id]]
    ]


def run_model(
    model: ModelUnderTest,
    engine: Callable[[], Engine],
    benchmarks: Sequence[Benchmark],
    gen: GenerationSpec,
    template: PromptTemplate,
    out: ObjectStore,
    tracker: Tracker,
) -> list[Record]:
    """Every benchmark x seed for one model; complete passes already in storage are reused
    when their identity (:func:`pass_identity`) is this pass's, and re-graded.

    ``engine`` is called (once, cached by the caller) only when a pass must be generated, so a
    restarted job whose generations are all stored does not load the model at all.
    """
    records: list[Record] = []
    fingerprint = model_fingerprint(model.path)
    think_opened = sampling_of(gen, template, 0).think_opened
    for benchmark in benchmarks:
        for seed in range(gen.base_seed, gen.base_seed + gen.seeds):
            key = generations_key(model.label, benchmark.name, benchmark.split, seed)
            identity = pass_identity(fingerprint, gen, template, benchmark, seed)
            stored = _stored_pass(out, key, identity, benchmark)
            if stored is not None:
                log.info(
                    "%s %s seed %d: reusing %d stored generations",
                    model.label,
                    benchmark.name,
                    seed,
                    len(stored),
                )
                tracker.advance(len(stored), model=model.label, benchmark=benchmark.name, seed=seed)
                records.extend(regrade(benchmark, stored, think_opened))
                continue
            advance = functools.partial(
                tracker.advance, model=model.label, benchmark=benchmark.name, seed=seed
            )
            passed = run_pass(engine(), benchmark, template, gen, seed, advance)
            # Identity last and removed first: a crash in between leaves a pass without one,
            # which is generated again, never one labelled with another pass's identity.
            if out.exists(identity_key(key)):
                out.delete(identity_key(key))
            out.put_bytes(key, "".join(json.dumps(r.to_json()) + "\n" for r in passed).encode())
            out.put_json(identity_key(key), identity)
            unparsed = [r.id for r in passed if r.prediction is None]
            tracker.counts["unparsed"] += len(unparsed)
            tracker.counts["forcedExits"] += sum(r.forced_exit for r in passed)
            if unparsed:
                # Ids only: responses may quote patient-like case text.
                log.warning(
                    "%s %s seed %d: %d/%d answers unparseable (graded wrong), ids: %s",
                    model.label,
                    benchmark.name,
                    seed,
                    len(unparsed),
                    len(passed),
                    ", ".join(unparsed[:50]),
                )
            records.extend(passed)
    return records


def _stored_pass(
    out: ObjectStore, key: str, identity: dict[str, Any], benchmark: Benchmark
) -> list[Record] | None:
    """The stored records of a pass when they are complete and of this identity, else None."""
    if not (out.exists(key) and out.exists(identity_key(key))):
        return None
    if out.get_json(identity_key(key)) != identity:
        log.info("%s: stored by another model or settings, generating again", key)
        return None
    stored = read_records(out, key)
    if {r.id for r in stored} != {item.id for item in benchmark.items}:
        return None
    return stored


def models_of(
    config: EvalJobConfig, settings: StorageSettings, cache_dir: Path
) -> list[ModelUnderTest]:
    """The model under test, then the baseline when one is configured."""
    models = [
        ModelUnderTest(
            "model", resolve_model(config.model_uri, settings, cache_dir), fine_tuned=True
        )
    ]
    if config.baseline_uri:
        name = config.spec.baseline.name if config.spec.baseline else "baseline"
        if name == "model":
            raise ValueError("the baseline cannot be named 'model'")
        models.append(
            ModelUnderTest(
                name, resolve_model(config.baseline_uri, settings, cache_dir), fine_tuned=False
            )
        )
    return models


def _model_type(path: Path) -> str | None:
    return json.loads((path / "config.json").read_text()).get("model_type")


def default_engine_factory(path: str, gen: GenerationSpec) -> Engine:
    return open_engine(
        gen.backend,
        path,
        batch_size=gen.batch_size,
        max_pixels=gen.max_pixels,
        max_images=gen.max_images,
    )


def evaluate(
    config: EvalJobConfig,
    *,
    settings: StorageSettings | None = None,
    engine_factory: EngineFactory = default_engine_factory,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation of ``config`` and write generations, report and summary.

    Returns the results document (also written as ``results.json``).
    """
    settings = settings or StorageSettings.for_spec(config.storage)
    out = open_store(config.output_uri, settings)
    progress_store = open_store(config.effective_progress_uri(), settings)
    benchmarks = load_benchmarks(config, settings)
    cache_dir = (
        cache_dir or Path(os.environ.get("MEDSFT_CACHE", tempfile.gettempdir())) / "eval-models"
    )
    models = models_of(config, settings, cache_dir)
    gen = config.spec.generation
    total = len(models) * gen.seeds * sum(len(b) for b in benchmarks)
    log.info(
        "evaluating %d model(s) on %d benchmark(s), %d generations",
        len(models),
        len(benchmarks),
        total,
    )
    reporter = ProgressReporter(
        progress_store,
        "eval",
        tracker=open_tracker(config.tracking, config.run, "eval", config.spec.to_wire()),
    )
    tracker = Tracker(reporter, total)
    records: dict[str, list[Record]] = {}
    layouts: dict[str, dict[str, Any]] = {}
    try:
        for model in models:
            template = template_for(gen.prompt_template, _model_type(model.path), model.fine_tuned)
            engine = functools.cache(functools.partial(engine_factory, str(model.path), gen))
            records[model.label] = run_model(model, engine, benchmarks, gen, template, out, tracker)
            if engine.cache_info().currsize:  # loaded (not every pass came from the cache)
                layout = getattr(engine(), "layout", None)
                if layout is not None:
                    layouts[model.label] = layout.as_dict()
                    log.info("%s: %s", model.label, layout.describe())
            engine.cache_clear()  # free the model before loading the next one
    finally:
        tracker.close()
    labels = [m.label for m in models]
    parameters = {m.label: count_parameters(m.path) for m in models}
    results = write_report(
        out, config, benchmarks, records, labels, layouts=layouts, parameters=parameters
    )
    if reporter.tracker is not None:
        track_results(reporter.tracker, results, out.uri_of("report.md"))
        reporter.close_tracker()
    return results


def track_results(tracker: MLflowTracker, results: dict[str, Any], report_uri: str) -> None:
    """The scores to MLflow: per benchmark and model every number of its scores (accuracy,
    its std over seeds, reasoning-length statistics...), each seed's accuracy as a step of
    ``<benchmark>.<model>.accuracyPerSeed``, the means; the report by reference."""
    for bench in results.get("benchmarks", []):
        for label, scores in (bench.get("scores") or {}).items():
            key = f"{bench['name']}.{label}"
            tracker.log_metrics({key: scores})
            for index, value in enumerate(scores.get("per_seed") or []):
                tracker.log_metrics({f"{key}.accuracyPerSeed": value}, step=index)
    settings = {"benchmarks", "generation", "parallel", "parameters"}  # not scores
    tracker.log_metrics({k: v for k, v in results.items() if k not in settings})
    tracker.set_tags({"medsft.eval.reportUri": report_uri})
