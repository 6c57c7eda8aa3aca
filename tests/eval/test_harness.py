"""The whole harness with the tiny model on the real PubMedQA and VQA-RAD samples.

A random model scores near chance, so these tests check the pipeline — counts, lengths,
forced exits, files — and recompute every reported number independently from the raw
generations stored next to the report, grading against the original data files.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from eval.eval_fixtures import PUBMEDQA, VQA_RAD, WRITERS
from PIL import Image
from safetensors import safe_open

from medsft_pipelines.answers import grade_response, normalize_answer
from medsft_pipelines.eval import BenchmarkFileMissing
from medsft_pipelines.eval.run import evaluate
from medsft_pipelines.specs.jobconfig import EvalJobConfig, dump_job_config, parse_job_config

SEEDS = 2
MAX_NEW = 10
EXIT_TOKENS = 5
ITEMS = {"pubmedqa": 4, "vqa-rad": 6}


def job(tmp_path: Path, model: Path, baseline: Path | None = None, **generation) -> EvalJobConfig:
    spec = {
        "benchmarks": [
            {"name": "pubmedqa", "uri": f"file://{PUBMEDQA}", "maxItems": ITEMS["pubmedqa"]},
            {
                "name": "vqa-rad",
                "uri": str(VQA_RAD),
                "maxItems": ITEMS["vqa-rad"],
                "distribution": "out",
            },
        ],
        "generation": {
            "seeds": SEEDS,
            "maxNewTokens": MAX_NEW,
            "forcedExitTokens": EXIT_TOKENS,
            "batchSize": 4,
            "promptTemplate": "thinking",
            "majorityVote": True,
            "maxPixels": 65536,
            **generation,
        },
    }
    config = {
        "kind": "EvalJobConfig",
        "run": {"name": "eval-test", "generation": 2},
        "outputUri": f"file://{tmp_path / 'out'}",
        "modelUri": str(model),
        "storage": {"localPath": str(tmp_path / "store")},
        "spec": spec,
    }
    if baseline:
        spec["baseline"] = {"name": "base", "uri": str(baseline)}
        config["baselineUri"] = str(baseline)
    return parse_job_config(config)  # type: ignore[return-value]


def gold_items() -> dict[str, dict[str, tuple[str, str, list[str] | None]]]:
    """(gold, kind, options) per item id, straight from the original data files."""
    truth = json.loads((PUBMEDQA / "test_ground_truth.json").read_text())
    letter = {"yes": "A", "no": "B", "maybe": "C"}
    pubmed = {
        pmid: (letter[label], "choice", ["yes", "no", "maybe"]) for pmid, label in truth.items()
    }
    vqa = {}
    for row in json.loads((VQA_RAD / "VQA_RAD_Dataset_Public.json").read_text()):
        if row["phrase_type"].startswith("test"):
            answer = row["answer"].strip()
            if answer.lower() in ("yes", "no"):
                vqa[str(row["qid"])] = (
                    "A" if answer.lower() == "yes" else "B",
                    "choice",
                    ["yes", "no"],
                )
            else:
                vqa[str(row["qid"])] = (answer, "open", None)
    return {"pubmedqa": pubmed, "vqa-rad": vqa}


def p90(values: list[int]) -> float:
    ordered = sorted(values)
    pos = 0.9 * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def recompute(out: Path, label: str) -> dict[str, dict]:
    """Accuracy and lengths per benchmark from generations/ alone, grading the raw responses."""
    golds = gold_items()
    found = {}
    for name in ITEMS:
        per_seed, lengths, think, answer, f1, forced = [], [], [], [], [], 0
        for seed in range(SEEDS):
            rows = [
                json.loads(x)
                for x in (out / f"generations/{label}/{name}/test/seed-{seed}.jsonl")
                .read_text()
                .splitlines()
            ]
            assert len(rows) == ITEMS[name] and len({r["id"] for r in rows}) == ITEMS[name]
            correct = 0
            for row in rows:
                gold, kind, options = golds[name][row["id"]]
                grade = grade_response(row["response"], gold, kind, options, opened_in_prompt=True)
                assert (grade.prediction, grade.correct) == (row["prediction"], row["correct"])
                correct += grade.correct
                if kind == "open":
                    f1.append(grade.score)
                assert row["think_tokens"] + row["answer_tokens"] == row["response_tokens"]
                assert (
                    row["think_tokens"] <= MAX_NEW and row["answer_tokens"] <= MAX_NEW + EXIT_TOKENS
                )
                if row["forced_exit"]:
                    forced += 1
                    assert (
                        "\n</think>\n\n" in row["response"] and row["answer_tokens"] <= EXIT_TOKENS
                    )
                lengths.append(row["response_tokens"])
                think.append(row["think_tokens"])
                answer.append(row["answer_tokens"])
            per_seed.append(correct / len(rows))
        found[name] = {
            "per_seed": per_seed,
            "accuracy": statistics.fmean(per_seed),
            "accuracy_std": statistics.stdev(per_seed),
            "mean": statistics.fmean(lengths),
            "median": statistics.median(lengths),
            "p90": p90(lengths),
            "think_mean": statistics.fmean(think),
            "answer_mean": statistics.fmean(answer),
            "token_f1": statistics.fmean(f1) if f1 else None,
            "forced_exit_rate": forced / len(lengths),
        }
    return found


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model: Path, tiny_baseline: Path):
    tmp_path = tmp_path_factory.mktemp("harness")
    config = job(tmp_path, tiny_model, tiny_baseline)
    results = evaluate(config, cache_dir=tmp_path / "cache")
    return config, results, tmp_path / "out"


def test_report_files_are_written(evaluated) -> None:
    _, _, out = evaluated
    for key in ["results.json", "report.md", "summary.json", "progress.json"]:
        assert (out / key).is_file(), key
    for key in ["plots/accuracy.png", "plots/response_length.png"]:
        with Image.open(out / key) as image:
            assert image.format == "PNG" and image.width > 300
    report = (out / "report.md").read_text()
    assert "pubmedqa" in report and "vqa-rad" in report and "Response length" in report
    # Both models were generated here on the CPU: the report says so, per model.
    stored = json.loads((out / "results.json").read_text())
    assert set(stored["parallel"]) == set(stored["models"])
    for label, layout in stored["parallel"].items():
        assert (layout["backend"], layout["gpus"], layout["device_map"]) == (
            "transformers",
            0,
            "cpu",
        )
        assert f"GPU layout of {label}: transformers on CPU." in report
    progress = json.loads((out / "progress.json").read_text())
    total = 2 * SEEDS * sum(ITEMS.values())
    assert (progress["step"], progress["total"]) == (total, total)
    assert progress["counts"]["generations"] == total


def test_reported_numbers_match_an_independent_recomputation(evaluated) -> None:
    _, results, out = evaluated
    stored = json.loads((out / "results.json").read_text())
    assert stored["benchmarks"] == results["benchmarks"]
    rows = {row["name"]: row for row in stored["benchmarks"]}
    mine = {label: recompute(out, label) for label in ("model", "base")}
    for label in ("model", "base"):
        for name, expect in mine[label].items():
            score = rows[name]["scores"][label]
            assert score["items"] == ITEMS[name] and score["seeds"] == SEEDS
            assert score["per_seed"] == pytest.approx(expect["per_seed"])
            assert score["accuracy"] == pytest.approx(expect["accuracy"])
            assert score["accuracy_std"] == pytest.approx(expect["accuracy_std"])
            assert score["forced_exit_rate"] == pytest.approx(expect["forced_exit_rate"])
            for key in ("mean", "median", "p90", "think_mean", "answer_mean"):
                assert score["length"][key] == pytest.approx(expect[key]), (label, name, key)
            if expect["token_f1"] is None:
                assert score["token_f1"] is None
            else:
                assert score["token_f1"] == pytest.approx(expect["token_f1"])
        families = stored["groups"][label]["families"]
        assert families["text"] == pytest.approx(mine[label]["pubmedqa"]["accuracy"])
        assert families["mm_reasoning"] == pytest.approx(mine[label]["vqa-rad"]["accuracy"])
        assert stored["groups"][label]["distributions"] == pytest.approx(
            {"in": mine[label]["pubmedqa"]["accuracy"], "out": mine[label]["vqa-rad"]["accuracy"]}
        )
    for name in ITEMS:
        delta = mine["model"][name]["accuracy"] - mine["base"][name]["accuracy"]
        assert rows[name]["delta"] == pytest.approx(delta)
    # The forced exit was exercised: the thinking template opens <think> in the prompt and a
    # random model does not close it within 10 tokens.
    assert any(mine["model"][name]["forced_exit_rate"] > 0 for name in ITEMS)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["reportUri"].endswith("/results.json")
    by_name = {entry["name"]: entry for entry in summary["results"]}
    for name in ITEMS:
        assert by_name[name]["accuracy"] == pytest.approx(mine["model"][name]["accuracy"], abs=1e-6)
        assert by_name[name]["baselineAccuracy"] == pytest.approx(
            mine["base"][name]["accuracy"], abs=1e-6
        )
        assert by_name[name]["meanResponseTokens"] == pytest.approx(
            mine["model"][name]["mean"], abs=0.01
        )
        assert by_name[name]["items"] == ITEMS[name]
    assert (
        by_name["vqa-rad"]["distribution"] == "out" and by_name["pubmedqa"]["distribution"] == "in"
    )
    overall = statistics.fmean(mine["model"][n]["accuracy"] for n in ITEMS)
    assert summary["meanAccuracy"] == pytest.approx(overall, abs=1e-6)
    assert summary["meanAccuracyIn"] == pytest.approx(
        mine["model"]["pubmedqa"]["accuracy"], abs=1e-6
    )
    # The paper's groups: PubMedQA is the text family, VQA-RAD multimodal reasoning.
    assert summary["meanAccuracyText"] == pytest.approx(
        mine["model"]["pubmedqa"]["accuracy"], abs=1e-6
    )
    assert summary["meanAccuracyMultimodalReasoning"] == pytest.approx(
        mine["model"]["vqa-rad"]["accuracy"], abs=1e-6
    )
    assert "meanAccuracyClassification" not in summary  # no classification benchmark ran


def test_majority_vote_and_unparsed_ids_are_reported(evaluated) -> None:
    _, results, out = evaluated
    for row in results["benchmarks"]:
        assert row["scores"]["model"]["majority_vote"] is not None
    for label in ("model", "base"):
        for name in ITEMS:
            ids = set()
            for seed in range(SEEDS):
                for line in (
                    (out / f"generations/{label}/{name}/test/seed-{seed}.jsonl")
                    .read_text()
                    .splitlines()
                ):
                    row = json.loads(line)
                    if row["prediction"] is None:
                        ids.add(row["id"])
            assert results["unparsed"][label][name] == sorted(ids)


def _no_engine(*_args, **_kwargs):
    raise AssertionError("the model must not be loaded: every generation is stored")


def test_restart_reuses_stored_generations(evaluated, caplog) -> None:
    config, results, _ = evaluated
    caplog.set_level(logging.INFO, logger="medsft_pipelines.eval.run")
    again = evaluate(config, engine_factory=_no_engine)
    assert again["benchmarks"] == results["benchmarks"]
    assert "reusing" in caplog.text


def test_unparseable_answers_are_wrong_and_logged_by_id(tmp_path, tiny_model, caplog) -> None:
    # Without forced exit, an unclosed reasoning block has no answer part.
    caplog.set_level(logging.WARNING, logger="medsft_pipelines.eval.run")
    config = job(tmp_path, tiny_model, seeds=1, forcedThinkExit=False, majorityVote=False)
    results = evaluate(config)
    out = tmp_path / "out"
    rows = [
        json.loads(x)
        for x in (out / "generations/model/pubmedqa/test/seed-0.jsonl").read_text().splitlines()
    ]
    unparsed = [r for r in rows if r["prediction"] is None]
    assert unparsed, "an open reasoning block without forced exit leaves no answer"
    assert all(not r["correct"] and not r["forced_exit"] for r in unparsed)
    for row in unparsed:
        assert row["id"] in caplog.text
    assert results["unparsed"]["model"]["pubmedqa"] == sorted(r["id"] for r in unparsed)
    # No response text in the logs (only ids): responses can quote case text.
    assert all(r["response"][:20] not in caplog.text for r in unparsed if len(r["response"]) >= 20)


def test_missing_benchmark_file_fails_before_loading_the_model(tmp_path, tiny_model) -> None:
    config = job(tmp_path, tiny_model)
    data = config.spec.model_copy(deep=True)
    data.benchmarks[0].uri = f"file://{tmp_path / 'empty'}"
    (tmp_path / "empty").mkdir()
    config = config.model_copy(update={"spec": data})
    with pytest.raises(BenchmarkFileMissing, match=r"pubmedqa: none of ori_pqal\.json"):
        evaluate(config, engine_factory=_no_engine)


def test_multimodal_benchmark_with_inline_images(tmp_path, tiny_model) -> None:
    # MMMU-Pro stores its images inside the parquet file; the harness feeds them to the model.
    WRITERS["mmmu-pro-health"][0](tmp_path / "mmmu")
    config = job(tmp_path, tiny_model, seeds=1)
    spec = config.spec.model_copy(deep=True)
    spec.benchmarks = [
        spec.benchmarks[0].model_copy(
            update={"name": "mmmu-pro-health", "uri": str(tmp_path / "mmmu"), "max_items": None}
        )
    ]
    results = evaluate(config.model_copy(update={"spec": spec}))
    assert results["benchmarks"][0]["items"] == 2
    assert results["benchmarks"][0]["family"] == "mm_reasoning"


def test_cli_entry_point(tmp_path, tiny_model) -> None:
    config = job(tmp_path, tiny_model, seeds=1)
    spec = config.spec.model_copy(deep=True)
    spec.benchmarks = spec.benchmarks[:1]
    path = tmp_path / "job.yaml"
    path.write_text(dump_job_config(config.model_copy(update={"spec": spec})))
    proc = subprocess.run(
        [sys.executable, "-m", "medsft_pipelines.eval.cli", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)
    assert printed["results"][0]["name"] == "pubmedqa"
    stored = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert printed["results"] == stored["results"]


def _model_and_benchmark_in_minio(minio, bucket: str, tiny_model: Path) -> dict[str, object]:
    """The tiny model and the pubmedqa files uploaded under ``s3://<bucket>/team``, as an
    EvalJob's pod finds them; returns the job config's storage block."""
    from medsft_pipelines.storage import StorageSettings, open_store

    root = open_store(f"s3://{bucket}/team", StorageSettings.from_env(minio.env()))
    for path in sorted(tiny_model.iterdir()):
        root.upload_file(path, f"models/tiny/{path.name}")
    for name in ("ori_pqal.json", "test_ground_truth.json"):
        root.upload_file(PUBMEDQA / name, f"benchmarks/pubmedqa/{name}")
    return {"endpoint": minio.endpoint, "secure": False, "bucket": bucket, "prefix": "team"}


def _minio_job(tmp_path: Path, tiny_model: Path, bucket: str, storage: dict, items: int) -> Any:
    """An eval job reading its model and benchmark from MinIO and writing back to it."""
    wire = job(tmp_path, tiny_model, seeds=1).to_wire()
    wire.update(
        storage=storage,
        modelUri=f"s3://{bucket}/team/models/tiny",
        outputUri=f"s3://{bucket}/team/runs/r1/eval",
    )
    wire["spec"]["benchmarks"] = [{"name": "pubmedqa", "maxItems": items}]
    return parse_job_config(wire)


def test_eval_job_against_minio(minio, minio_bucket, tiny_model, tmp_path, monkeypatch) -> None:
    # As in the EvalJob's pod: model and benchmark files in object storage (the benchmark at the
    # registry's default location under the storage root), credentials from the env vars the
    # operator fills from the storage Secret, results written back to storage.
    from medsft_pipelines.specs.common import ACCESS_KEY_ENV, SECRET_KEY_ENV
    from medsft_pipelines.storage import StorageSettings, open_store
    from medsft_pipelines.storage.progress import read_progress

    for variable in ("MEDSFT_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(ACCESS_KEY_ENV, minio.access_key)
    monkeypatch.setenv(SECRET_KEY_ENV, minio.secret_key)
    storage = _model_and_benchmark_in_minio(minio, minio_bucket, tiny_model)
    config = _minio_job(tmp_path, tiny_model, minio_bucket, storage, items=3)
    results = evaluate(config, cache_dir=tmp_path / "cache")

    root = open_store(f"s3://{minio_bucket}/team", StorageSettings.from_env(minio.env()))
    out = root.child("runs/r1/eval")
    summary = out.get_json("summary.json")
    assert summary["results"][0]["name"] == "pubmedqa" and summary["results"][0]["items"] == 3
    assert summary["reportUri"] == f"s3://{minio_bucket}/team/runs/r1/eval/results.json"
    assert out.get_json("results.json")["benchmarks"] == results["benchmarks"]
    assert len(out.get_bytes("generations/model/pubmedqa/test/seed-0.jsonl").splitlines()) == 3
    assert out.get_bytes("plots/response_length.png")[:4] == b"\x89PNG"
    progress = read_progress(out)
    assert progress is not None and progress["step"] == progress["total"] == 3


def test_eval_credentials_from_the_mounted_secret_win_over_the_variables(
    minio, minio_bucket, tiny_model, tmp_path, monkeypatch
) -> None:
    # The operator mounts the storage Secret (MEDSFT_S3_CREDENTIALS_DIR); StorageSettings.from_env
    # lets it win over AWS_* variables, which may be stale (left in a pod template or image).
    # Eval used to apply the variables again on top, and so sent the stale keys.
    from medsft_pipelines.specs.common import ACCESS_KEY_ENV, SECRET_KEY_ENV
    from medsft_pipelines.storage.settings import ENV_CREDENTIALS_DIR

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "accessKey").write_text(minio.access_key)
    (secret / "secretKey").write_text(minio.secret_key)
    monkeypatch.delenv("MEDSFT_S3_ENDPOINT", raising=False)
    monkeypatch.setenv(ENV_CREDENTIALS_DIR, str(secret))
    monkeypatch.setenv(ACCESS_KEY_ENV, "stale-access-key")
    monkeypatch.setenv(SECRET_KEY_ENV, "stale-secret-key")
    storage = _model_and_benchmark_in_minio(minio, minio_bucket, tiny_model)
    config = _minio_job(tmp_path, tiny_model, minio_bucket, storage, items=1)
    results = evaluate(config, cache_dir=tmp_path / "cache")
    assert results["benchmarks"][0]["name"] == "pubmedqa"


def test_a_half_downloaded_model_is_fetched_again(
    minio, minio_bucket, tiny_model, tmp_path
) -> None:
    # A download that died after config.json (pod killed, node drained) leaves a folder that
    # looks like a model; eval must not load it, but fetch the model again.
    from medsft_pipelines.eval.run import models_of
    from medsft_pipelines.sft.model_files import check_model_dir
    from medsft_pipelines.storage import StorageSettings

    storage = _model_and_benchmark_in_minio(minio, minio_bucket, tiny_model)
    config = _minio_job(tmp_path, tiny_model, minio_bucket, storage, items=1)
    settings = StorageSettings.from_env(minio.env())
    cache = tmp_path / "cache"
    [model] = models_of(config, settings, cache)
    for path in model.path.iterdir():
        if path.name != "config.json":
            path.unlink()

    [again] = models_of(config, settings, cache)
    check_model_dir(again.path)

    def files(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    assert files(again.path) == files(tiny_model)


def _generations(out: Path, label: str, name: str) -> list[dict]:
    return [
        json.loads(line)
        for seed in range(SEEDS)
        for line in (out / f"generations/{label}/{name}/test/seed-{seed}.jsonl")
        .read_text()
        .splitlines()
    ]


def test_report_sets_the_baseline_beside_the_model_with_the_label_prior(
    evaluated, tiny_model: Path, tiny_baseline: Path
) -> None:
    """Format adherence, the label prior and the models' sizes, recomputed from the raw
    generations, the gold files and the weights."""
    _, results, out = evaluated
    golds = gold_items()
    for row in results["benchmarks"]:
        name = row["name"]
        parseable = {}
        for label in ("model", "base"):
            rows = _generations(out, label, name)
            parseable[label] = statistics.fmean(r["prediction"] is not None for r in rows)
            assert row["parseable"][label] == pytest.approx(parseable[label])
            answers = Counter(
                r["prediction"].strip().upper()
                if r["kind"] == "choice"
                else normalize_answer(r["prediction"])
                for r in rows
                if r["prediction"]
            )
            top = row["top_prediction"][label]
            if not answers:
                assert top is None
            else:
                most = answers.most_common(1)[0][1]
                assert answers[top["answer"]] == most
                assert top["share"] == pytest.approx(most / len(rows))
        assert row["parseable_delta"] == pytest.approx(parseable["model"] - parseable["base"])
        ids = {r["id"] for r in _generations(out, "model", name)}
        gold = Counter(golds[name][i][0] for i in ids)
        assert row["majority_label"]["accuracy"] == pytest.approx(
            gold.most_common(1)[0][1] / len(ids)
        )

    def weights(model: Path) -> int:
        with safe_open(str(model / "model.safetensors"), "pt") as f:
            return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118

    assert results["parameters"] == {"model": weights(tiny_model), "base": weights(tiny_baseline)}
    report = (out / "report.md").read_text()
    assert "## base vs model" in report and "How to read these numbers" in report
    # Both are ~0.45M-parameter models: the report says what such numbers can and cannot mean.
    assert "test-sized models (at most 0.45M parameters" in report


def test_the_sampling_protocol_is_recorded(evaluated) -> None:
    # Exactly the spec's settings, nothing from the checkpoint (the same on either backend).
    config, results, out = evaluated
    gen = config.spec.generation
    assert results["sampling"] == {
        "backend": "transformers",
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "top_k": None,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_new_tokens": MAX_NEW,
        "forced_exit_tokens": EXIT_TOKENS,
        "from_checkpoint": None,
        "seeds": list(range(SEEDS)),
    }
    report = (out / "report.md").read_text()
    assert "nothing taken from the checkpoint's generation_config" in report


def test_how_answers_were_read_per_benchmark_and_model(evaluated) -> None:
    _, results, out = evaluated
    for row in results["benchmarks"]:
        for label in ("model", "base"):
            rows = _generations(out, label, row["name"])
            counts = Counter(r["reading"] for r in rows)
            assert row["readings"][label] == pytest.approx(
                {reading: n / len(rows) for reading, n in counts.items()}
            )
    assert "## How answers were read" in (out / "report.md").read_text()
