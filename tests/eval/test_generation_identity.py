"""Stored generations are keyed by benchmark and split, and reused only for the same model,
generation settings, template and items (the tiny model, real PubMedQA / VQA-RAD samples)."""

from __future__ import annotations

import json
from pathlib import Path

from eval.eval_fixtures import PUBMEDQA, VQA_RAD

from medsft_pipelines.eval.run import default_engine_factory, evaluate
from medsft_pipelines.specs.jobconfig import EvalJobConfig, parse_job_config


def job(out: Path, model: Path, benchmarks: list[dict], **generation) -> EvalJobConfig:
    return parse_job_config(  # type: ignore[return-value]
        {
            "kind": "EvalJobConfig",
            "run": {"name": "eval-identity", "generation": 1},
            "outputUri": f"file://{out}",
            "modelUri": str(model),
            "storage": {"localPath": str(out.parent / "store")},
            "spec": {
                "benchmarks": benchmarks,
                "generation": {
                    "seeds": 1,
                    "maxNewTokens": 4,
                    "forcedExitTokens": 2,
                    "promptTemplate": "thinking",
                    "maxPixels": 65536,
                    **generation,
                },
            },
        }
    )


class CountingFactory:
    """The real engine factory, counting the models it loads."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def __call__(self, path, gen):
        self.loaded.append(path)
        return default_engine_factory(path, gen)


def responses(out: Path) -> list[str]:
    path = out / "generations/model/pubmedqa/test/seed-0.jsonl"
    return [json.loads(line)["response"] for line in path.read_text().splitlines()]


PUBMED = [{"name": "pubmedqa", "uri": str(PUBMEDQA), "maxItems": 2}]


def test_two_splits_of_one_benchmark_are_two_rows_and_two_files(tmp_path, tiny_model) -> None:
    splits = [
        {"name": "vqa-rad", "uri": str(VQA_RAD), "split": split, "maxItems": 2}
        for split in ("test", "train")
    ]
    out = tmp_path / "out"
    results = evaluate(job(out, tiny_model, splits), cache_dir=tmp_path / "cache")
    rows = {row["name"]: row for row in results["benchmarks"]}
    assert set(rows) == {"vqa-rad[test]", "vqa-rad[train]"}
    assert [rows[n]["split"] for n in sorted(rows)] == ["test", "train"]
    ids = {}
    for split in ("test", "train"):
        path = out / f"generations/model/vqa-rad[{split}]/{split}/seed-0.jsonl"
        ids[split] = {json.loads(line)["id"] for line in path.read_text().splitlines()}
    assert len(ids["test"]) == len(ids["train"]) == 2 and not ids["test"] & ids["train"]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["name"] for r in summary["results"]) == ["vqa-rad[test]", "vqa-rad[train]"]


def test_generations_are_reused_only_for_the_same_model_and_settings(
    tmp_path, tiny_model, tiny_baseline
) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    factory = CountingFactory()
    first = evaluate(job(out, tiny_model, PUBMED), engine_factory=factory, cache_dir=cache)
    assert len(factory.loaded) == 1
    first_responses = responses(out)
    # Same model, same settings: nothing generated, the same scores.
    again = evaluate(job(out, tiny_model, PUBMED), engine_factory=factory, cache_dir=cache)
    assert len(factory.loaded) == 1 and again["benchmarks"] == first["benchmarks"]
    # Another model at the same location and label (``medsft run --local`` after an edit):
    # generated again, with that model's answers.
    evaluate(job(out, tiny_baseline, PUBMED), engine_factory=factory, cache_dir=cache)
    assert factory.loaded == [str(tiny_model), str(tiny_baseline)]
    assert responses(out) != first_responses
    # Other decoding settings for the same model: generated again.
    for settings in ({"temperature": 0.0}, {"maxNewTokens": 6}, {"mode": "direct"}):
        evaluate(
            job(out, tiny_baseline, PUBMED, **settings), engine_factory=factory, cache_dir=cache
        )
    assert len(factory.loaded) == 5
