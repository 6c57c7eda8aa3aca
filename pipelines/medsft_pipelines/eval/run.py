"""The eval harness: benchmarks x seeds x models -> graded generations -> scores -> report.

Layout written under the job's ``outputUri``::

    generations/<model>/<benchmark>/seed-<n>.jsonl   every graded generation (raw responses)
    results.json, report.md, plots/*.png, summary.json   (see :mod:`.report`)

and ``progress.json`` under the progress URI. A restarted job reuses every complete
generations file, so only unfinished (model, benchmark, seed) passes run again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from medsft_pipelines.answers import grade_response
from medsft_pipelines.specs.common import ACCESS_KEY_ENV, SECRET_KEY_ENV, StorageSpec, join_uri
from medsft_pipelines.specs.eval import GenerationSpec
from medsft_pipelines.specs.jobconfig import EvalJobConfig
from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store
from medsft_pipelines.storage.progress import ProgressReporter

from .backends import Engine, Request, Sampling, generate, open_engine
from .files import BenchmarkFormatError
from .items import BenchItem, Benchmark
from .metrics import Record
from .prompting import PromptTemplate, build_messages, generation_prefix, template_for
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


def storage_settings(spec: StorageSpec) -> StorageSettings:
    """S3 settings of a job: the spec's endpoint/TLS, credentials from the environment."""
    settings = StorageSettings.from_env()
    if spec.endpoint:
        settings = settings.model_copy(
            update={
                "endpoint": spec.endpoint,
                "secure": spec.secure,
                "ca_file": spec.ca_file or settings.ca_file,
            }
        )
    access, secret = os.environ.get(ACCESS_KEY_ENV), os.environ.get(SECRET_KEY_ENV)
    if access and secret:
        settings = settings.model_copy(
            update={"access_key": SecretStr(access), "secret_key": SecretStr(secret)}
        )
    return settings


def resolve_model(location: str, settings: StorageSettings, cache_dir: Path) -> Path:
    """A local folder holding the model at ``location`` (``s3://…`` is downloaded once)."""
    if location.startswith("s3://"):
        target = cache_dir / hashlib.sha256(location.encode()).hexdigest()[:16]
        if not (target / "config.json").exists():
            store = open_store(location, settings)
            keys = store.list()
            if "config.json" not in keys:
                raise FileNotFoundError(f"no model (config.json) at {location}")
            for key in keys:
                store.download_file(key, target / key)
        return target
    path = Path(location.removeprefix("file://"))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model (config.json) at {location}")
    return path


def benchmark_root(config: EvalJobConfig, name: str, uri: str | None) -> str:
    """Where a benchmark's files are: its URI, else ``<storage root>/benchmarks/<name>``."""
    return uri or join_uri(config.storage.root_uri(), "benchmarks", name)


def load_benchmarks(config: EvalJobConfig, settings: StorageSettings) -> list[Benchmark]:
    """Every benchmark of the spec, loaded and checked (files and images) before any generation."""
    loaded = []
    for bench in config.spec.benchmarks:
        if bench.format == "hf":
            raise BenchmarkFormatError(
                f"benchmark {bench.name}: format 'hf' needs the hub; give the files' uri"
            )
        root = benchmark_root(config, bench.name, bench.uri)
        store = open_store(root, settings) if root.startswith("s3://") else root
        loaded.append(
            load_benchmark(
                bench.name,
                store,
                bench.split,
                distribution=bench.distribution,
                max_items=bench.max_items,
            )
        )
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
    )


def generations_key(label: str, benchmark: str, seed: int) -> str:
    """Where one pass's graded generations are stored."""
    return f"generations/{label}/{benchmark}/seed-{seed}.jsonl"


def read_records(out: ObjectStore, key: str) -> list[Record]:
    """Records of one generations file."""
    lines = out.get_bytes(key).decode().splitlines()
    return [Record.from_json(json.loads(line)) for line in lines if line.strip()]


def run_pass(
    engine: Engine,
    benchmark: Benchmark,
    template: PromptTemplate,
    gen: GenerationSpec,
    seed: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[Record]:
    """One seed of one model over one benchmark: prompts, generation, grading."""
    think_opened = template.opens_think and gen.mode == "cot"
    prefix = generation_prefix(template, gen.mode)
    requests, items = [], {}
    for item in benchmark.items:
        images = load_images(benchmark, item, gen.max_images)
        prompt = engine.render(build_messages(item, template, gen.mode, len(images))) + prefix
        requests.append(Request(item.id, prompt, images))
        items[item.id] = item
    # Similar lengths together: less padding per batch. Stable, so the order is reproducible.
    requests.sort(key=lambda r: (len(r.images), len(r.prompt)))
    sampling = Sampling(
        temperature=gen.temperature,
        top_p=gen.top_p,
        max_new_tokens=gen.max_new_tokens,
        seed=seed,
        forced_exit=gen.forced_think_exit,
        forced_exit_tokens=gen.forced_exit_tokens,
        think_opened=think_opened,
        think_start=template.think_start,
        think_end=template.think_end,
    )
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
    """Every benchmark x seed for one model; complete passes already in storage are reused.

    ``engine`` is called (once, cached by the caller) only when a pass must be generated, so a
    restarted job whose generations are all stored does not load the model at all.
    """
    records: list[Record] = []
    for benchmark in benchmarks:
        for seed in range(gen.base_seed, gen.base_seed + gen.seeds):
            key = generations_key(model.label, benchmark.name, seed)
            expected = {item.id for item in benchmark.items}
            stored = read_records(out, key) if out.exists(key) else []
            if stored and {r.id for r in stored} == expected:
                log.info(
                    "%s %s seed %d: reusing %d stored generations",
                    model.label,
                    benchmark.name,
                    seed,
                    len(stored),
                )
                tracker.advance(len(stored), model=model.label, benchmark=benchmark.name, seed=seed)
                records.extend(stored)
                continue
            advance = functools.partial(
                tracker.advance, model=model.label, benchmark=benchmark.name, seed=seed
            )
            passed = run_pass(engine(), benchmark, template, gen, seed, advance)
            out.put_bytes(key, "".join(json.dumps(r.to_json()) + "\n" for r in passed).encode())
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
    settings = settings or storage_settings(config.storage)
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
    tracker = Tracker(ProgressReporter(progress_store, "eval"), total)
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
    return write_report(
        out, config, benchmarks, records, labels, layouts=layouts, parameters=parameters
    )
