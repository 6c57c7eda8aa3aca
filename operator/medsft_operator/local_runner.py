"""The embedded default: ``medsft run --local FILE`` runs a MedSFTRun on one machine.

The same job configs the operator would hand to pods (``builders.jobconfig``) are
written to ``.medsft/runs/<run>/`` and each stage runs as a local process: curation
(workers and merge in one process), SFT under ``torchrun`` with DeepSpeed on CPU, eval
with the transformers backend. Storage is a local folder (``file://``) unless the spec
names an S3 endpoint or ``MEDSFT_S3_ENDPOINT`` is set. This module never imports torch:
the stages are subprocesses.

The terminal gets one line per stage, with a progress bar while it runs (read from the
``progress.json`` files the stages write, as the operator reads them); everything a stage
prints goes to ``<workdir>/<run>/<stage>.log``, and a failing stage shows the end of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from medsft_operator import layout
from medsft_operator.api import kubeyaml
from medsft_operator.api.kinds import MedSFTRun
from medsft_operator.builders.jobconfig import JobConfig, local_job_configs
from medsft_operator.plan import generation_key
from medsft_operator.tracking import open_generation_run
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.jobconfig import (
    CurationJobConfig,
    EvalJobConfig,
    SFTJobConfig,
    dump_job_config,
)
from medsft_pipelines.storage import ObjectNotFound, ObjectStore, StorageSettings, open_store
from medsft_pipelines.storage.progress import (
    PROGRESS_KEY,
    aggregate_progress,
    read_metrics,
    read_worker_progress,
)

#: Models that ``run --local`` builds offline when a spec points at a missing one.
TINY_MODEL_PREFIX = "tiny-"
STAGE_MODULES = {
    "CurationJobConfig": "medsft_pipelines.curation.cli",
    "SFTJobConfig": "medsft_pipelines.sft.train",
    "EvalJobConfig": "medsft_pipelines.eval.cli",
}


@dataclass
class StageResult:
    stage: str
    output_uri: str
    seconds: float
    log: Path
    summary: str = ""
    """What the stage produced, in a few words (rows, steps and loss, generations)."""


@dataclass
class LocalRun:
    name: str
    workdir: Path
    stages: list[StageResult] = field(default_factory=list)
    results: dict[str, Any] | None = None
    """The eval stage's ``results.json`` (scores per benchmark and model)."""

    def artifacts(self) -> dict[str, str]:
        """Where a person looks afterwards: reports, plots, the model."""
        found: dict[str, str] = {}
        for result in self.stages:
            out = result.output_uri.rstrip("/")
            if result.stage == "curation":
                found["dataset manifest"] = layout.manifest_uri(out)
                found["curation report"] = f"{out}/report/report.md"
                found["trace-length plot"] = f"{out}/report/trace_lengths.png"
            elif result.stage == "sft":
                found["fine-tuned model"] = layout.model_uri(out)
                found["loss curve"] = f"{out}/loss_curve.png"
            else:
                found["eval report"] = f"{out}/report.md"
                found["eval plots"] = f"{out}/plots/"
        # Local files are shown as paths a person can open; s3:// stays a URI.
        return {what: where.removeprefix("file://") for what, where in found.items()}


def with_generation_run(
    run: MedSFTRun, name: str, configs: list[JobConfig], console: Console
) -> list[JobConfig]:
    """With ``spec.tracking.mlflow``: open generation 1's MLflow run and let the stages that
    track to that server log into it. A server that cannot be reached costs a warning: each
    stage then tries to open a run of its own, and the numbers are in storage either way."""
    mlflow = run.spec.tracking.mlflow if run.spec.tracking else None
    if mlflow is None:
        return configs
    try:
        opened = open_generation_run(
            mlflow,
            name=name,
            namespace="default",
            generation=1,
            spec_hash=generation_key(run, [c.run.spec_hash for c in configs]),
            stage_hashes={stage_name(c): c.run.spec_hash for c in configs},
            recipe={stage_name(c): c.spec.to_wire() for c in configs},
        )
    except Exception as exc:  # the tracker's trouble, not the run's
        console.print(
            f"[yellow]tracking degraded[/]: {type(exc).__name__} (MLflow {mlflow.tracking_uri})"
        )
        return configs
    console.print(f"tracking: {opened.url}")
    given = mlflow.model_copy(update={"run_id": opened.run_id})
    return [
        c.model_copy(update={"tracking": given}) if c.tracking == mlflow else c for c in configs
    ]


def load_run(path: Path) -> MedSFTRun:
    docs = [d for d in kubeyaml.load_all(path.read_text(encoding="utf-8")) if d]
    runs = [d for d in docs if d.get("kind") == "MedSFTRun"]
    if len(runs) != 1:
        raise ValueError(f"{path}: expected exactly one MedSFTRun, found {len(runs)}")
    return MedSFTRun.model_validate(runs[0])


def effective_storage(run: MedSFTRun, environ: dict[str, str]) -> StorageSpec:
    """The spec's storage, with ``MEDSFT_S3_ENDPOINT`` (if set) pointing it at MinIO."""
    storage = run.spec.storage or StorageSpec()
    endpoint = environ.get("MEDSFT_S3_ENDPOINT")
    if endpoint and not storage.endpoint:
        secure = environ.get("MEDSFT_S3_SECURE", "true").lower() in ("1", "true", "yes")
        storage = storage.model_copy(update={"endpoint": endpoint, "secure": secure})
    return storage


def local_models(configs: list[JobConfig]) -> set[Path]:
    """Local model directories the configs name that follow the ``tiny-*`` convention."""
    paths: set[str] = set()
    for config in configs:
        if isinstance(config, CurationJobConfig) and config.spec.processor:
            paths.add(config.spec.processor.model)
        elif isinstance(config, SFTJobConfig):
            paths.add(config.model_uri)
    return {Path(p) for p in paths if "://" not in p and Path(p).name.startswith(TINY_MODEL_PREFIX)}


def stage_command(config: JobConfig, config_path: Path, nproc: int) -> list[str]:
    module = STAGE_MODULES[config.kind]
    if isinstance(config, SFTJobConfig):
        return [
            sys.executable, "-m", "torch.distributed.run",
            "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, "--config", str(config_path),
        ]  # fmt: skip
    return [sys.executable, "-m", module, "--config", str(config_path)]


def stage_name(config: JobConfig) -> str:
    if isinstance(config, CurationJobConfig):
        return "curation"
    if isinstance(config, SFTJobConfig):
        return "sft"
    assert isinstance(config, EvalJobConfig)
    return "eval"


def fresh_progress(store: ObjectStore, since: float) -> dict[str, Any] | None:
    """The stage's progress written since ``since`` (a re-run overwrites an earlier run's
    files, which must not show as this run's): ``progress.json``, else the workers' sum."""
    try:
        main: dict[str, Any] | None = dict(store.get_json(PROGRESS_KEY))
    except ObjectNotFound:
        main = None
    if main and float(main.get("updated_at_unix") or 0) >= since:
        return main
    workers = [
        w for w in read_worker_progress(store) if float(w.get("updated_at_unix") or 0) >= since
    ]
    return aggregate_progress(workers) if workers else None


def progress_view(stage: str, progress: dict[str, Any] | None) -> tuple[int, int | None, str]:
    """(done, total, detail) of a stage's progress, for its bar."""
    if not progress:
        return 0, None, "starting"
    done, total = int(progress.get("step") or 0), progress.get("total")
    if stage == "curation":
        phase = progress.get("phase")
        detail = "merging" if phase == "merge" else "rows read" if "workers" in progress else ""
    elif stage == "sft":
        loss = progress.get("loss")
        detail = f"steps, loss {loss:.3f}" if isinstance(loss, int | float) else "steps"
    else:
        where = [str(progress[k]) for k in ("model", "benchmark") if progress.get(k)]
        detail = "generations" + (f" ({' '.join(where)})" if where else "")
    return done, int(total) if total else None, detail


def stage_summary(stage: str, out: ObjectStore, telemetry: ObjectStore, since: float) -> str:
    """A few words on what a finished stage produced, from what it wrote to storage."""
    try:
        if stage == "curation":
            manifest = out.get_json(layout.MANIFEST)
            return f"{manifest['numRows']} training rows"
        if stage == "sft":
            losses = [m["loss"] for m in read_metrics(telemetry) if "loss" in m]
            steps = (fresh_progress(telemetry, since) or {}).get("step")
            loss = f", loss {losses[0]:.2f} → {losses[-1]:.2f}" if losses else ""
            return f"{steps} steps{loss}"
        progress = fresh_progress(telemetry, since) or {}
        return f"{progress.get('step')} generations"
    except (ObjectNotFound, KeyError, TypeError, ValueError):
        return ""


def log_tail(log: Path, lines: int = 25) -> list[str]:
    """The last lines of a stage log, progress-bar redraws (``\\r``) reduced to their last state."""
    text = log.read_bytes().decode("utf-8", errors="replace")  # keeps the \r
    kept = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return [line for line in kept if line.strip()][-lines:]


class CountColumn(ProgressColumn):
    """``done/total`` once a stage has reported a total, nothing before."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)}")


def run_stage(
    stage: str,
    command: list[str],
    *,
    env: dict[str, str],
    log: Path,
    telemetry: ObjectStore | None,
    console: Console,
    poll_s: float = 0.5,
) -> float:
    """Run one stage with its output in ``log`` and a progress bar from its progress files;
    on failure, show the end of the log and raise. Returns the seconds it took."""
    started, since = time.monotonic(), time.time()
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<9}"),
        BarColumn(bar_width=30),
        CountColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with (
        log.open("w", encoding="utf-8") as sink,
        Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar,
    ):
        task = bar.add_task(stage, total=None, detail="starting")
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(poll_s)
            if telemetry is not None:
                done, total, detail = progress_view(stage, fresh_progress(telemetry, since))
                bar.update(task, completed=done, total=total, detail=detail)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        console.print(f"[red]✗ {stage}[/] failed after {elapsed:.0f}s; the end of its log:")
        for line in log_tail(log):
            console.print(f"  {line}", markup=False, highlight=False)
        raise RuntimeError(
            f"the {stage} stage failed with exit code {proc.returncode} (full log: {log})"
        )
    return elapsed


def run_local(
    manifest: Path,
    *,
    workdir: Path = Path(".medsft/runs"),
    nproc: int | None = None,
    console: Console | None = None,
) -> LocalRun:
    """Run every stage of the MedSFTRun in ``manifest`` on this machine, in order.

    The terminal gets one line per stage (a progress bar while it runs); everything the
    stage prints, library warnings included, goes to ``<workdir>/<run>/<stage>.log``.
    """
    console = console or Console(stderr=True)
    run = load_run(manifest)
    storage = effective_storage(run, dict(os.environ))
    settings = StorageSettings.for_spec(storage)
    configs = local_job_configs(run, storage)
    name = run.metadata.name or "run"
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/medsft/torch_extensions")
        ),
        "PYTHONUNBUFFERED": "1",
        # torchrun's banner about OMP_NUM_THREADS: it sets 1 thread per rank either way.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    # Two ranks on CPU exercise the distributed path the cluster takes; one is enough
    # to learn, but the point of the demo is to run the real thing.
    nproc = nproc or min(2, os.cpu_count() or 1)
    result = LocalRun(name=name, workdir=folder)
    console.print(
        f"[bold]medsft run --local {name}[/]: {len(configs)} stages, storage "
        f"{storage.root_uri()}, logs in {folder}/"
    )

    configs = with_generation_run(run, name, configs, console)

    for model_dir in sorted(local_models(configs)):
        if not (model_dir / "config.json").exists():
            command = [
                sys.executable,
                "-m",
                "medsft_pipelines.models",
                "build-tiny",
                str(model_dir),
            ]
            seconds = run_stage(
                "model", command, env=env, log=folder / "model.log", telemetry=None, console=console
            )
            console.print(f"[green]✓[/] [bold]{'model':<9}[/] built {model_dir} in {seconds:.0f}s")

    for config in configs:
        stage = stage_name(config)
        config_path = folder / f"{stage}.yaml"
        config_path.write_text(dump_job_config(config), encoding="utf-8")
        log = folder / f"{stage}.log"
        telemetry = open_store(config.effective_progress_uri(), settings)
        since = time.time()
        seconds = run_stage(
            stage,
            stage_command(config, config_path, nproc),
            env=env,
            log=log,
            telemetry=telemetry,
            console=console,
        )
        out = open_store(config.output_uri, settings)
        summary = stage_summary(stage, out, telemetry, since)
        result.stages.append(StageResult(stage, config.output_uri, seconds, log, summary))
        console.print(f"[green]✓[/] [bold]{stage:<9}[/] {summary} in {seconds:.0f}s")
        if isinstance(config, EvalJobConfig):
            result.results = dict(out.get_json(layout.EVAL_REPORT))
    return result


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def comparison_table(results: Mapping[str, Any]) -> Table:
    """Per benchmark: parseable answers and accuracy of the baseline (when the eval had one)
    and of the fine-tuned model, with the differences in percentage points."""
    model, baseline = next(iter(results["models"])), results.get("baseline")
    labels = [baseline, model] if baseline else [model]
    names = {model: "fine-tuned", **({baseline: baseline} if baseline else {})}
    title = (
        f"{baseline} vs fine-tuned: same prompts, decoding and seeds (%)"
        if baseline
        else "fine-tuned model, %"
    )
    table = Table(title=title, box=None, header_style="bold")
    table.add_column("BENCHMARK")
    table.add_column("ITEMS", justify="right")
    for metric in ("PARSEABLE", "ACCURACY"):
        for label in labels:
            table.add_column(f"{metric}\n{names[label].upper()}", justify="right")
        if baseline:
            table.add_column("Δ", justify="right")
    for row in results["benchmarks"]:
        cells = [row["name"], str(row["items"])]
        parseable = {label: 1.0 - row["scores"][label]["unparsed_rate"] for label in labels}
        accuracy = {label: row["scores"][label]["accuracy"] for label in labels}
        for values in (parseable, accuracy):
            cells += [_pct(values[label]) for label in labels]
            if baseline:
                cells.append(f"{100 * (values[model] - values[baseline]):+.1f}")
        table.add_row(*cells)
    return table
