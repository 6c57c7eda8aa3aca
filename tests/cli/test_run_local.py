"""`medsft run --local` output: stage lines and bars on the terminal, everything a stage
prints in its log, and on failure the end of that log with its path.

The stages are real subprocesses; the runs here stop early (a stage that fails, a command
that only prints), so they need no training. The whole demo is tests/e2e/test_local_run.py.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console

from medsft_operator.local_runner import comparison_table, fresh_progress, log_tail, run_stage
from medsft_pipelines.models import cached_tiny_model
from medsft_pipelines.storage import open_store
from medsft_pipelines.storage.progress import ProgressReporter

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())


def capture() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=120, force_terminal=False), buffer


def test_a_stage_prints_to_its_log_only_and_its_progress_drives_the_bar(tmp_path):
    folder = tmp_path / "telemetry"
    store = open_store(str(folder))
    # A stand-in stage that talks like the real ones: library chatter, then progress files.
    script = (
        "import sys, time\n"
        "from medsft_pipelines.storage import open_store\n"
        "from medsft_pipelines.storage.progress import ProgressReporter\n"
        "print('[WARNING] Setting accelerator to CPU', flush=True)\n"
        "print('OMP_NUM_THREADS banner', file=sys.stderr, flush=True)\n"
        f"p = ProgressReporter(open_store({str(folder)!r}), 'sft', min_interval_s=0)\n"
        "for step in range(1, 4):\n"
        "    p.update(step=step, total=3, loss=1.0 / step)\n"
        "    time.sleep(0.3)\n"
    )
    console, out = capture()
    log = tmp_path / "stage.log"
    seconds = run_stage(
        "sft",
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        log=log,
        telemetry=store,
        console=console,
        poll_s=0.1,
    )
    assert seconds > 0.5
    assert "accelerator" not in out.getvalue() and "OMP_NUM_THREADS" not in out.getvalue()
    text = log.read_text()
    assert "Setting accelerator to CPU" in text and "OMP_NUM_THREADS banner" in text
    progress = fresh_progress(store, since=0)
    assert (progress["step"], progress["total"], progress["loss"]) == (3, 3, 1.0 / 3)


def test_a_failed_stage_shows_the_end_of_its_log_and_where_the_whole_log_is(tmp_path):
    script = (
        "import sys\n"
        "for i in range(100):\n"
        "    print(f'line {i}')\n"
        "print('progress 10%\\rprogress 50%\\rprogress 90%')\n"
        "sys.exit('stage exploded: no such file')\n"
    )
    console, out = capture()
    log = tmp_path / "curation.log"
    try:
        run_stage(
            "curation",
            [sys.executable, "-c", script],
            env=dict(os.environ),
            log=log,
            telemetry=None,
            console=console,
        )
    except RuntimeError as exc:
        message = str(exc)
    else:
        raise AssertionError("a failing stage must raise")
    assert "exit code 1" in message and str(log) in message
    shown = out.getvalue()
    assert "stage exploded: no such file" in shown and "line 99" in shown
    assert "line 50" not in shown  # the end of the log, not all of it
    assert "progress 90%" in shown and "progress 10%" not in shown  # bars at their last state
    assert log_tail(log, 2) == ["progress 90%", "stage exploded: no such file"]


def test_progress_of_an_earlier_run_in_the_same_storage_is_not_shown(tmp_path):
    store = open_store(str(tmp_path))
    ProgressReporter(store, "curation", min_interval_s=0).update(step=96, total=96)
    since = time.time() + 1  # this run started after that file was written
    assert fresh_progress(store, since) is None
    for worker in (0, 1):
        reporter = ProgressReporter(store, "curation", worker=worker, min_interval_s=0)
        reporter._clock = lambda: since + 5  # written during this run
        reporter.update(step=10 + worker, total=50)
    progress = fresh_progress(store, since)
    assert (progress["step"], progress["total"], progress["workers"]) == (21, 100, 2)


def _scores(accuracy: float, unparsed: float) -> dict:
    return {"accuracy": accuracy, "unparsed_rate": unparsed}


def test_comparison_table_puts_the_baseline_beside_the_fine_tuned_model():
    results = {
        "models": {"model": "file:///m", "untrained": "file:///b"},
        "baseline": "untrained",
        "benchmarks": [
            {
                "name": "pubmedqa",
                "items": 16,
                "scores": {"model": _scores(0.5, 0.125), "untrained": _scores(0.0, 1.0)},
            }
        ],
    }
    console, out = capture()
    console.print(comparison_table(results))
    lines = out.getvalue().splitlines()
    assert "untrained vs fine-tuned" in lines[0]
    row = next(line.split() for line in lines if line.split()[:1] == ["pubmedqa"])
    # items | parseable: untrained, fine-tuned, Δ | accuracy: untrained, fine-tuned, Δ
    assert row[1:] == ["16", "0.0", "87.5", "+87.5", "0.0", "50.0", "+50.0"]


def test_run_local_stops_at_a_failing_stage_with_its_log(tmp_path):
    run = copy.deepcopy(QUICKSTART)
    curation = run["spec"]["curation"]["spec"]
    curation["sources"][0]["uri"] = str(tmp_path / "missing" / "ori_pqal.json")
    curation["processor"]["model"] = str(cached_tiny_model())  # nothing to build
    for bench in run["spec"]["eval"]["spec"]["benchmarks"]:
        bench["uri"] = str(REPO / bench["uri"])  # found from anywhere: only the source is broken
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(run))
    medsft = Path(sys.executable).parent / "medsft"
    proc = subprocess.run(
        [str(medsft), "run", "--local", str(manifest)],
        cwd=tmp_path,
        env={**os.environ, "MEDSFT_S3_ENDPOINT": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    log = Path(".medsft/runs/quickstart/curation.log")  # relative to where it ran
    assert (tmp_path / log).is_file()
    assert "✗ curation" in proc.stderr and f"full log: {log}" in " ".join(proc.stderr.split())
    assert "missing" in proc.stderr  # the log's last lines name what was wrong
    assert not (tmp_path / ".medsft" / "runs" / "quickstart" / "sft.log").exists()
