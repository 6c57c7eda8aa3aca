"""The embedded default: ``medsft run --local FILE`` runs a MedSFTRun on one machine.

The same job configs the operator would hand to pods (``builders.jobconfig``) are
written to ``.medsft/runs/<run>/`` and each stage runs as a local process: curation
(workers and merge in one process), SFT under ``torchrun`` with DeepSpeed on CPU, eval
with the transformers backend. Storage is a local folder (``file://``) unless the spec
names an S3 endpoint or ``MEDSFT_S3_ENDPOINT`` is set. This module never imports torch:
the stages are subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from medsft_operator import layout
from medsft_operator.api import kubeyaml
from medsft_operator.api.kinds import MedSFTRun
from medsft_operator.builders.jobconfig import JobConfig, local_job_configs
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.jobconfig import (
    CurationJobConfig,
    EvalJobConfig,
    SFTJobConfig,
    dump_job_config,
)

#: Models that ``run --local`` builds offline when a spec points at a missing one.
TINY_MODEL_PREFIX = "tiny-"
STAGE_MODULES = {
    "CurationJobConfig": "medsft_pipelines.curation.cli",
    "SFTJobConfig": "medsft_pipelines.sft.recipe",
    "EvalJobConfig": "medsft_pipelines.eval.cli",
}


@dataclass
class StageResult:
    stage: str
    output_uri: str
    seconds: float
    log: Path


@dataclass
class LocalRun:
    name: str
    workdir: Path
    stages: list[StageResult] = field(default_factory=list)

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


def run_local(
    manifest: Path,
    *,
    workdir: Path = Path(".medsft/runs"),
    nproc: int | None = None,
    console: Console | None = None,
) -> LocalRun:
    """Run every stage of the MedSFTRun in ``manifest`` on this machine, in order."""
    console = console or Console(stderr=True)
    run = load_run(manifest)
    storage = effective_storage(run, dict(os.environ))
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
    }
    # Two ranks on CPU exercise the distributed path the cluster takes; one is enough
    # to learn, but the point of the demo is to run the real thing.
    nproc = nproc or min(2, os.cpu_count() or 1)
    result = LocalRun(name=name, workdir=folder)
    console.rule(
        f"medsft run --local: {name} ({len(configs)} stages, storage {storage.root_uri()})"
    )

    for model_dir in sorted(local_models(configs)):
        if not (model_dir / "config.json").exists():
            console.print(f"[bold]building the tiny offline model[/] in {model_dir}")
            _check(
                subprocess.run(
                    [sys.executable, "-m", "medsft_pipelines.models", "build-tiny", str(model_dir)],
                    env=env,
                ),
                "building the tiny model",
            )

    for config in configs:
        stage = stage_name(config)
        config_path = folder / f"{stage}.yaml"
        config_path.write_text(dump_job_config(config), encoding="utf-8")
        log = folder / f"{stage}.log"
        command = stage_command(config, config_path, nproc)
        console.rule(f"[bold]{stage}[/] → {config.output_uri}")
        started = time.monotonic()
        with log.open("w", encoding="utf-8") as sink:
            proc = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert proc.stdout is not None
            for line in proc.stdout:  # tee: the person watches, the log keeps everything
                sink.write(line)
                console.out(line.rstrip("\n"), highlight=False)
            proc.wait()
        _check(proc, f"the {stage} stage (full log: {log})")
        elapsed = time.monotonic() - started
        result.stages.append(StageResult(stage, config.output_uri, elapsed, log))
        console.print(f"[green]✓ {stage}[/] in {elapsed:.0f}s")
    return result


def _check(proc: subprocess.CompletedProcess | subprocess.Popen, what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {proc.returncode}")
