"""End to end: raw rows -> manifest, on file:// and on the real MinIO.

Inputs: the real VQA-RAD and PubMedQA files in ../shared/data (VQA-RAD rows as a subset
written at test time, images read in place; PubMedQA read in place), plus the generated
fixtures (synthetic MCQ and image classification) with planted problems. The teacher is a real
HTTP server speaking the chat-completions protocol with generated responses
(curation_helpers.TeacherServer): the real teachers are paid APIs or GPU servers.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from curation.curation_helpers import TeacherServer, gold_responder
from PIL import Image

from medsft_pipelines.answers import grade_response
from medsft_pipelines.curation.cli import main
from medsft_pipelines.curation.errors import CurationError
from medsft_pipelines.curation.lengths import TokenCounter
from medsft_pipelines.curation.merge import run_merge
from medsft_pipelines.curation.worker import run_worker
from medsft_pipelines.specs.jobconfig import CurationJobConfig, dump_job_config
from medsft_pipelines.storage import StorageSettings, open_store
from medsft_pipelines.storage.shards import DatasetReader, dataset_ready

VQA_ROWS = 40


# -- inputs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(
    tmp_path_factory: pytest.TempPathFactory,
    shared_data: Path,
    fixtures_dir: Path,
    tiny_model_dir: Path,
) -> dict[str, Any]:
    """Source files (real subsets + fixtures + planted rows) and the truth the test knows."""
    root = tmp_path_factory.mktemp("inputs")
    vqa = json.loads((shared_data / "vqa-rad/VQA_RAD_Dataset_Public.json").read_text())
    test_images = {r["image_name"] for r in vqa if r["phrase_type"].startswith("test")}
    train = [r for r in vqa if r["phrase_type"] == "freeform"][:VQA_ROWS]
    vqa_rows = [
        {
            "qid": str(r["qid"]),
            "question": r["question"],
            "answer": str(r["answer"]).strip(),
            "image_name": r["image_name"],
        }
        for r in train
    ]
    vqa_rows.append(
        {
            "qid": "corrupt",
            "question": "What organ is shown here, planted corrupt?",
            "answer": "liver",
            "image_name": f"file://{fixtures_dir / 'corrupt.png'}",
        }
    )
    vqa_rows.append(
        {
            "qid": "missing",
            "question": "What organ is shown here, planted missing?",
            "answer": "liver",
            "image_name": "no-such-image.jpg",
        }
    )
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vqa_rows))

    pubmed = json.loads((shared_data / "pubmedqa/ori_pqal.json").read_text())
    test_ids = list(json.loads((shared_data / "pubmedqa/test_ground_truth.json").read_text()))
    target = next(pubmed[i] for i in test_ids if len(pubmed[i]["QUESTION"].split()) >= 12)
    words = target["QUESTION"].split()
    mid = len(words) // 2
    paraphrase = " ".join([*words[:mid], "really", *words[mid + 1 :]])
    yes_no = {"A": "yes", "B": "no", "C": "maybe"}
    planted = [
        {
            "id": "planted-verbatim",
            "question": "\n".join([*target["CONTEXTS"], target["QUESTION"]]),
            "options": yes_no,
            "answer_idx": "ABC"[["yes", "no", "maybe"].index(target["final_decision"])],
        },
        {"id": "planted-paraphrase", "question": paraphrase, "options": yes_no, "answer_idx": "A"},
    ]
    mcq_lines = (fixtures_dir / "mcq.jsonl").read_text().splitlines()
    (root / "mcq.jsonl").write_text("\n".join(mcq_lines + [json.dumps(p) for p in planted]) + "\n")

    gold: dict[str, str] = {}
    wrong: dict[str, str] = {}
    for line in mcq_lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "question" in row:
            gold[row["question"]] = row["answer_idx"]
            wrong[row["question"]] = "D" if row["answer_idx"] != "D" else "A"
    for p in planted:
        gold[p["question"].rsplit("\n", 1)[-1]] = p["answer_idx"]
        wrong[p["question"].rsplit("\n", 1)[-1]] = "C"
    for r in vqa_rows:
        gold[r["question"]] = r["answer"]
        wrong[r["question"]] = "an unrelated finding"
    labels = ["circle", "square", "triangle"]
    for line in (fixtures_dir / "classification.jsonl").read_text().splitlines():
        row = json.loads(line)
        gold[row["question"]] = row["label"]
        wrong[row["question"]] = labels[(labels.index(row["label"]) + 1) % 3]
    return {
        "root": root,
        "fixtures": fixtures_dir,
        "shared": shared_data,
        "gold": gold,
        "wrong": wrong,
        "vqa_rows": vqa_rows,
        "vqa_test_images": test_images,
        "classification_labels": labels,
        "processor_dir": tiny_model_dir,
    }


def make_config(
    inputs: dict[str, Any],
    output_uri: str,
    teacher_url: str,
    *,
    workers: int = 1,
    sources: dict[str, str] | None = None,
    **spec_overrides: Any,
) -> CurationJobConfig:
    shared, root, fixtures = inputs["shared"], inputs["root"], inputs["fixtures"]
    uris = {
        "vqa": f"file://{root / 'vqa.jsonl'}",
        "vqa_images": f"file://{shared / 'vqa-rad/images'}",
        "mcq": f"file://{root / 'mcq.jsonl'}",
        "cls": f"file://{fixtures / 'classification.jsonl'}",
        **(sources or {}),
    }
    teacher = {
        "endpoint": teacher_url,
        "model": "teacher-x",
        "samplesPerQuestion": 4,
        "retry": {"attempts": 3, "backoffSeconds": 0.1},
    }
    spec = {
        "sources": [
            {
                "name": "vqa-rad",
                "uri": uris["vqa"],
                "task": "open",
                "modality": "image",
                "imageRoot": uris["vqa_images"],
                "fields": {"id": "qid", "images": "image_name", "options": None},
            },
            {
                "name": "mcq",
                "uri": uris["mcq"],
                "task": "mcq",
                "fields": {"answer": "answer_idx", "images": None},
            },
            {
                "name": "shapes",
                "uri": uris["cls"],
                "task": "classification",
                "modality": "image",
                "options": inputs["classification_labels"],
                "classBalance": True,
                "fields": {"answer": "label", "images": "image", "options": None},
            },
        ],
        "teachers": {"text": teacher, "image": {**teacher, "model": "teacher-mm"}},
        "verification": {"maxCorrectPerQuestion": 1},
        "lengths": {"maxTokens": 4096},
        "processor": {"model": str(inputs["processor_dir"])},
        "decontamination": {
            "benchmarks": [
                {"name": "pubmedqa", "uri": f"file://{shared / 'pubmedqa'}"},
                {"name": "vqa-rad", "uri": f"file://{shared / 'vqa-rad'}"},
            ]
        },
        "sharding": {"samplesPerShard": 16},
        "errorBudget": {"maxFraction": 0.1},
        **spec_overrides,
    }
    return CurationJobConfig.model_validate(
        {"run": {"name": "e2e"}, "outputUri": output_uri, "workers": workers, "spec": spec}
    )


@pytest.fixture(scope="module")
def teacher(inputs: dict[str, Any]):
    with TeacherServer(gold_responder(inputs["gold"], inputs["wrong"])) as server:
        yield server


@pytest.fixture(scope="module")
def one_worker(inputs, teacher, token_counter: TokenCounter, tmp_path_factory):
    """The reference run: one worker + merge on file://."""
    out = tmp_path_factory.mktemp("one")
    config = make_config(inputs, f"file://{out}", teacher.url)
    before = teacher.requests
    run_worker(config, 0, token_counter=token_counter, show_progress=False)
    manifest = run_merge(config, show_progress=False)
    return {
        "out": out,
        "config": config,
        "manifest": manifest,
        "requests": teacher.requests - before,
    }


def _rows(uri: str, settings: StorageSettings | None = None) -> list[dict[str, Any]]:
    reader = DatasetReader(open_store(uri, settings))  # verifies every shard's sha256
    return [
        row for i in range(len(reader.manifest.shards)) for row in reader.read_shard(i).to_pylist()
    ]


# -- the reference run ----------------------------------------------------------------------------


def test_end_to_end_dataset_on_file(one_worker, inputs, tiny_model_dir: Path) -> None:
    out: Path = one_worker["out"]
    rows = _rows(f"file://{out}")
    assert rows and len(rows) == one_worker["manifest"].num_rows
    assert len({r["id"] for r in rows}) == len(rows)
    by_source = Counter(r["source"] for r in rows)
    assert set(by_source) == {"vqa-rad", "mcq", "shapes"}

    from medsft_pipelines.curation.lengths import template_messages
    from medsft_pipelines.models import load_processor

    processor = load_processor(tiny_model_dir)
    for row in rows:
        system, user, assistant = row["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        assert (
            assistant["content"].startswith("<think>\n")
            and "\n</think>\n\nThe answer is " in assistant["content"]
        )
        # Rejection sampling: the kept trace's final answer grades correct with the same
        # extraction the eval harness uses.
        kind = {"mcq": "choice", "classification": "label", "open": "open"}[row["task_type"]]
        grade = grade_response(assistant["content"], row["answer"], kind, row["options"] or None)
        assert grade.correct, row["id"]
        assert len(row["images"]) == (1 if row["modality"] == "image" else 0)
        for data in row["images"]:
            with Image.open(io.BytesIO(data)) as img:
                assert img.size[0] * img.size[1] <= 262144
    # Token counts equal the processor's own count (image tokens included) on a sample of rows.
    for row in rows[:: max(1, len(rows) // 6)]:
        images = [Image.open(io.BytesIO(d)).convert("RGB") for d in row["images"]]
        text = processor.apply_chat_template(
            template_messages(row["messages"], len(images)), tokenize=False
        )
        encoded = processor(text=[text], images=images or None)
        assert row["n_tokens"] == len(encoded["input_ids"][0])


def test_rejection_sampling_keeps_at_most_k_and_counts(one_worker) -> None:
    rows = _rows(f"file://{one_worker['out']}")
    per_question = Counter(r["question_id"] for r in rows)
    assert max(per_question.values()) == 1  # maxCorrectPerQuestion: 1
    report = json.loads((one_worker["out"] / "report/report.json").read_text())
    mcq = report["verification"]["mcq/mcq"]
    # The generated responses per question: 2 correct, 1 wrong, 1 unparseable — except the
    # "hard" question: 4 unparseable (see gold_responder).
    asked = mcq["generated"] // 4
    # 41 valid rows - 2 planted (decontaminated) - 1 exact and 1 near copy (never asked)
    assert mcq["generated"] == 4 * asked and asked == 37
    assert mcq["accepted"] == 2 * (asked - 1)
    assert mcq["wrong_answer"] == asked - 1
    assert mcq["unparseable"] == (asked - 1) + 4
    assert mcq["over_max_correct"] == asked - 1  # the second correct trace of each, K = 1
    assert mcq["accept_rate"] == round(mcq["accepted"] / mcq["generated"], 4)
    # One request per question (n = 4 in one request).
    assert (
        one_worker["requests"] == sum(v["generated"] for v in report["verification"].values()) // 4
    )


def test_decontamination_removes_planted_question_and_paraphrase(one_worker, inputs) -> None:
    rows = _rows(f"file://{one_worker['out']}")
    ids = {r["question_id"] for r in rows}
    assert "mcq/planted-verbatim" not in ids and "mcq/planted-paraphrase" not in ids
    report = json.loads((one_worker["out"] / "report/report.json").read_text())
    assert report["decontamination"]["pubmedqa"] == {"ngram": 1, "near_duplicate": 1}
    # Every VQA-RAD training row whose image is also a test image is gone (exact image hash),
    # counted independently from the published file.
    expected = sum(
        1 for r in inputs["vqa_rows"][:VQA_ROWS] if r["image_name"] in inputs["vqa_test_images"]
    )
    assert expected > 0
    assert report["decontamination"]["vqa-rad"] == {"image_hash": expected}
    kept_vqa = {r["question_id"].split("/", 1)[1] for r in rows if r["source"] == "vqa-rad"}
    names = {r["qid"]: r["image_name"] for r in inputs["vqa_rows"]}
    assert not {names[q] for q in kept_vqa} & inputs["vqa_test_images"]


def test_bad_input_lands_in_quarantine_by_reason(one_worker) -> None:
    entries = [
        json.loads(line)
        for line in (one_worker["out"] / "quarantine/worker-00000-of-00001.jsonl")
        .read_text()
        .splitlines()
    ]
    by_reason = Counter(e["reason"] for e in entries)
    assert by_reason["undecodable_image"] == 1 and by_reason["missing_image"] == 1
    assert by_reason["malformed_row"] == 2 and by_reason["teacher_unparseable"] == 1
    assert by_reason["unparseable_response"] > 0
    ids = {(e["reason"], e.get("id") or e.get("row")) for e in entries}
    assert ("teacher_unparseable", "mcq/hard") in ids
    malformed = [e for e in entries if e["reason"] == "malformed_row"]
    assert any(e.get("raw", {}).get("id") == "no-question" for e in malformed)
    report = json.loads((one_worker["out"] / "report/report.json").read_text())
    assert report["quarantine_by_reason"] == {
        "undecodable_image": 1,
        "missing_image": 1,
        "malformed_row": 2,
        "teacher_unparseable": 1,
    }


def test_dedup_and_class_balance(one_worker) -> None:
    rows = _rows(f"file://{one_worker['out']}")
    ids = {r["question_id"] for r in rows}
    assert "mcq/q003" in ids and "mcq/q003-copy" not in ids  # exact duplicate: first kept
    assert "mcq/q005" in ids and "mcq/q005-near" not in ids  # near duplicate: first kept
    report = json.loads((one_worker["out"] / "report/report.json").read_text())
    assert report["removed_by_reason"]["duplicate_exact"] >= 1
    assert report["removed_by_reason"]["near_duplicate"] >= 1
    labels = Counter(r["answer"] for r in rows if r["source"] == "shapes")
    assert labels == {"circle": 4, "square": 4, "triangle": 4}  # 12/8/4 stratified to 4 each
    assert report["removed_by_reason"]["class_balance"] == 12


def test_report_progress_and_manifest_written(one_worker) -> None:
    out: Path = one_worker["out"]
    for name in (
        "trace_lengths.png",
        "rows_per_source.png",
        "accept_rates.png",
        "removed_by_reason.png",
    ):
        with Image.open(out / "report" / name) as img:
            assert img.format == "PNG"
    markdown = (out / "report/report.md").read_text()
    assert "## Decontamination" in markdown and "pubmedqa" in markdown
    progress = json.loads((out / "progress.json").read_text())
    assert (
        progress["phase"] == "done"
        and progress["counts"]["rows"] == one_worker["manifest"].num_rows
    )
    manifest = one_worker["manifest"]
    assert manifest.token_stats["samples"] == manifest.num_rows
    assert all(key.startswith("report/") for key in manifest.extra["report"])


# -- parallelism and restarts ---------------------------------------------------------------------


def test_two_workers_and_merge_equal_one_worker(
    one_worker, inputs, teacher, tmp_path: Path, monkeypatch
) -> None:
    """The Indexed-Job way: the CLI per worker (index from JOB_COMPLETION_INDEX), then --merge."""
    out = tmp_path / "two"
    config = make_config(inputs, f"file://{out}", teacher.url, workers=2)
    path = tmp_path / "job.yaml"
    path.write_text(dump_job_config(config))
    for index in (1, 0):  # any order
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        assert main(["--config", str(path)]) == 0
        if index == 1:  # an Indexed Job's pod runs its own worker only
            assert not (out / "_work/worker-00000-of-00002/manifest.json").exists()
            assert (out / "_work/worker-00001-of-00002/manifest.json").exists()
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    assert main(["--config", str(path), "--merge"]) == 0
    assert _rows(f"file://{out}") == _rows(f"file://{one_worker['out']}")

    # A worker that crashed and is re-run: nothing is paid twice (request cache), same output.
    requests = teacher.requests
    (out / "_work/worker-00001-of-00002/manifest.json").unlink()
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert main(["--config", str(path)]) == 0
    assert teacher.requests == requests
    (out / "manifest.json").unlink()
    assert main(["--config", str(path), "--merge"]) == 0
    assert _rows(f"file://{out}") == _rows(f"file://{one_worker['out']}")


def test_merge_refuses_until_every_worker_finished(inputs, teacher, tmp_path: Path, capsys) -> None:
    config = make_config(inputs, f"file://{tmp_path}", teacher.url, workers=2)
    path = tmp_path / "job.yaml"
    path.write_text(dump_job_config(config))
    assert main(["--config", str(path), "--merge"]) == 1
    err = capsys.readouterr().err
    assert "worker 0 of 2 has not finished" in err


def test_error_budget_exceeded_fails_clearly(inputs, teacher, tmp_path: Path, capsys) -> None:
    config = make_config(
        inputs, f"file://{tmp_path}", teacher.url, errorBudget={"maxFraction": 0.01}
    )
    path = tmp_path / "job.yaml"
    path.write_text(dump_job_config(config))
    assert main(["--config", str(path), "--worker-index", "0"]) == 1
    err = capsys.readouterr().err
    assert "error budget of 1.0%" in err and "malformed_row=2" in err and "quarantine/" in err
    assert not dataset_ready(open_store(f"file://{tmp_path}/_work/worker-00000-of-00001"))
    assert (tmp_path / "quarantine/worker-00000-of-00001.jsonl").exists()


def test_imported_pubmedqa_rationales_decontaminated_in_place(
    shared_data: Path, tiny_model_dir: Path, token_counter: TokenCounter, tmp_path: Path
) -> None:
    """tracesFrom: PubMedQA's human rationales (LONG_ANSWER) read in place as the traces; the
    500 test items are exactly what decontamination removes."""
    spec = {
        "sources": [
            {
                "name": "pubmedqa",
                "uri": f"file://{shared_data / 'pubmedqa/ori_pqal.json'}",
                "format": "json",
                "task": "mcq",
                "options": ["yes", "no", "maybe"],
                "fields": {
                    "question": "QUESTION",
                    "context": "CONTEXTS",
                    "answer": "final_decision",
                    "traces": "LONG_ANSWER",
                    "images": None,
                },
            }
        ],
        "tracesFrom": {},
        "verification": {"verifiers": {"mcq": "none"}, "requireThink": False},
        "processor": {"model": str(tiny_model_dir)},
        "decontamination": {
            "benchmarks": [{"name": "pubmedqa", "uri": str(shared_data / "pubmedqa")}]
        },
    }
    config = CurationJobConfig.model_validate(
        {"run": {"name": "pq"}, "outputUri": f"file://{tmp_path}", "workers": 2, "spec": spec}
    )
    for index in range(2):
        run_worker(config, index, token_counter=token_counter, show_progress=False)
    run_merge(config, show_progress=False)
    rows = _rows(f"file://{tmp_path}")
    test_ids = set(json.loads((shared_data / "pubmedqa/test_ground_truth.json").read_text()))
    raw = json.loads((shared_data / "pubmedqa/ori_pqal.json").read_text())
    assert len(rows) == len(raw) - len(test_ids) == 500
    assert not {r["question_id"].split("/", 1)[1] for r in rows} & test_ids
    for row in rows[:20]:
        pmid = row["question_id"].split("/", 1)[1]
        assert raw[pmid]["LONG_ANSWER"].strip() in row["messages"][-1]["content"]


# -- the real MinIO -------------------------------------------------------------------------------


def test_end_to_end_on_minio_equals_file(
    one_worker, inputs, teacher, minio, minio_bucket: str, token_counter: TokenCounter
) -> None:
    """Output on the real MinIO, with sources and images read from it too."""
    client = minio.client()
    root: Path = inputs["root"]
    client.fput_object(minio_bucket, "raw/mcq.jsonl", str(root / "mcq.jsonl"))
    client.fput_object(minio_bucket, "raw/vqa.jsonl", str(root / "vqa.jsonl"))
    for name in {r["image_name"] for r in inputs["vqa_rows"] if "://" not in r["image_name"]}:
        path = inputs["shared"] / "vqa-rad/images" / name
        if path.exists():
            client.fput_object(minio_bucket, f"raw/images/{name}", str(path))
    settings = StorageSettings.from_env(minio.env())
    config = make_config(
        inputs,
        f"s3://{minio_bucket}/datasets/e2e",
        teacher.url,
        sources={
            "mcq": f"s3://{minio_bucket}/raw/mcq.jsonl",
            "vqa": f"s3://{minio_bucket}/raw/vqa.jsonl",
            "vqa_images": f"s3://{minio_bucket}/raw/images",
        },
    )
    run_worker(config, 0, settings=settings, token_counter=token_counter, show_progress=False)
    manifest = run_merge(config, settings=settings, show_progress=False)
    assert manifest.num_rows == one_worker["manifest"].num_rows
    assert _rows(f"s3://{minio_bucket}/datasets/e2e", settings) == _rows(
        f"file://{one_worker['out']}"
    )
    keys = {
        o.object_name
        for o in client.list_objects(minio_bucket, prefix="datasets/e2e/", recursive=True)
    }
    assert "datasets/e2e/manifest.json" in keys and "datasets/e2e/report/report.md" in keys
    assert any(k.startswith("datasets/e2e/teacher-cache/") for k in keys)


def test_rows_feed_the_sft_encoder(one_worker, tiny_model_dir: Path) -> None:
    """The contract with the trainer: its encoder reads the curated rows as they are (images
    through the shard reader, messages with string content) and counts what n_tokens says."""
    from medsft_pipelines.models import load_processor
    from medsft_pipelines.sft.data import ExampleEncoder

    encoder = ExampleEncoder(load_processor(tiny_model_dir), max_seq_length=8192)
    reader = DatasetReader(open_store(f"file://{one_worker['out']}"))
    rows = list(reader.iter_samples(seed=0, epoch=0))
    assert len(rows) == one_worker["manifest"].num_rows
    for row in [r for r in rows if r["images"]][:3] + [r for r in rows if not r["images"]][:3]:
        example = encoder.encode(row)
        assert example is not None and example.length == row["n_tokens"]
        assert example.num_targets > 0


# -- teacher budget -------------------------------------------------------------------------------


def _long_question(rng: random.Random, n: int = 60) -> str:
    return " ".join(f"w{rng.randrange(100_000)}" for _ in range(n))


def budget_inputs(root: Path, shared: Path) -> dict[str, Any]:
    """Two sources whose surviving questions the test knows without running anything:

    * ``notes``: 20 unique questions + 3 exact copies + 2 near copies (one word changed) +
      1 verbatim PubMedQA test question (decontaminated), capped at 10 questions;
    * ``colours``: 6 red, 4 green, 2 blue, class-balanced to 2 of each.

    So 16 questions can end up in the dataset; nothing else may reach the teacher.
    """
    rng = random.Random(7)
    unique = [_long_question(rng) for _ in range(20)]
    near = []
    for q in unique[3:5]:
        words_ = q.split()
        words_[30] = "changed"
        near.append(" ".join(words_))
    pubmed = json.loads((shared / "pubmedqa/ori_pqal.json").read_text())
    test_ids = list(json.loads((shared / "pubmedqa/test_ground_truth.json").read_text()))
    target = pubmed[test_ids[0]]
    planted = "\n".join([*target["CONTEXTS"], target["QUESTION"]])
    notes = (
        [{"id": f"u{i:02d}", "question": q, "answer": f"finding {i}"} for i, q in enumerate(unique)]
        + [{"id": f"copy{i}", "question": unique[i], "answer": f"finding {i}"} for i in range(3)]
        + [
            {"id": f"near{i}", "question": q, "answer": f"finding {i + 3}"}
            for i, q in enumerate(near)
        ]
        + [{"id": "planted", "question": planted, "answer": "yes"}]
    )
    labels = ["red"] * 6 + ["green"] * 4 + ["blue"] * 2
    colours = [
        {"id": f"c{i:02d}", "question": _long_question(rng, 20) + " which colour?", "label": label}
        for i, label in enumerate(labels)
    ]
    for name, rows in (("notes", notes), ("colours", colours)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = {r["question"]: r["answer"] for r in notes} | {
        r["question"]: r["label"] for r in colours
    }
    wrong = {q: "something else" for q in gold}
    return {
        "root": root,
        "gold": gold,
        "wrong": wrong,
        "unique_notes": set(unique),
        "never": {planted, *near},
        "colours": {r["question"]: r["label"] for r in colours},
    }


def budget_config(
    data: dict[str, Any], out: Path, teacher_url: str, shared: Path, processor: Path, workers: int
) -> CurationJobConfig:
    root = data["root"]
    teacher = {"endpoint": teacher_url, "model": "teacher-x", "samplesPerQuestion": 4}
    spec = {
        "sources": [
            {
                "name": "notes",
                "uri": f"file://{root / 'notes.jsonl'}",
                "task": "open",
                "maxSamples": 10,
                "fields": {"options": None, "images": None},
            },
            {
                "name": "colours",
                "uri": f"file://{root / 'colours.jsonl'}",
                "task": "classification",
                "options": ["red", "green", "blue"],
                "classBalance": True,
                "fields": {"answer": "label", "images": None, "options": None},
            },
        ],
        "teachers": {"text": teacher},
        "lengths": {"maxTokens": 4096},
        "processor": {"model": str(processor)},
        "decontamination": {
            "benchmarks": [{"name": "pubmedqa", "uri": f"file://{shared / 'pubmedqa'}"}]
        },
    }
    return CurationJobConfig.model_validate(
        {"run": {"name": "budget"}, "outputUri": f"file://{out}", "workers": workers, "spec": spec}
    )


def test_the_teacher_sees_only_questions_that_can_be_kept(
    tmp_path: Path, shared_data: Path, tiny_model_dir: Path, token_counter: TokenCounter
) -> None:
    data = budget_inputs(tmp_path, shared_data)
    samples_per_question, surviving = 4, 10 + 3 * 2
    outputs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        with TeacherServer(gold_responder(data["gold"], data["wrong"])) as server:
            config = budget_config(
                data, out, server.url, shared_data, tiny_model_dir, workers=workers
            )
            for index in range(workers):
                run_worker(config, index, token_counter=token_counter, show_progress=False)
            run_merge(config, show_progress=False)
        # Every request asks for all samples of one question (n = samplesPerQuestion).
        assert server.requests == surviving
        assert server.samples_served == surviving * samples_per_question
        asked = [q for q in data["gold"] if any(q in p for p in server.prompts)]
        assert len(asked) == surviving and not set(asked) & data["never"]
        assert len(set(asked) & data["unique_notes"]) == 10
        assert Counter(data["colours"][q] for q in asked if q in data["colours"]) == {
            "red": 2,
            "green": 2,
            "blue": 2,
        }
        report = json.loads((out / "report/report.json").read_text())
        budget = report["teacher_budget"]
        assert budget["prompt_tokens"] > 0 and budget["completion_tokens"] > 0
        assert {k: v for k, v in budget.items() if not k.endswith("_tokens")} == {
            "requests_made": surviving,
            "http_attempts": surviving,
            "retries": 0,
            "timeouts": 0,
            "samples_requested": surviving * samples_per_question,
            "cache_hits": 0,
            "cache_misses": surviving,
            "cached_samples": 0,
            "questions_sent": surviving,
            "questions_saved": 3 + 2 + 10 + 6,  # exact, near, over the cap, class balance
            "samples_saved": (3 + 2 + 10 + 6) * samples_per_question,
        }
        assert "## Teacher budget" in (out / "report/report.md").read_text()
        outputs[workers] = _rows(f"file://{out}")
    assert outputs[1] == outputs[3] and outputs[1]  # N workers select what one does


# -- never pay twice ------------------------------------------------------------------------------


def _generation_config(
    data: dict[str, Any],
    storage: Any,
    generation: int,
    teacher_url: str,
    shared: Path,
    processor: Path,
    **edits: Any,
) -> CurationJobConfig:
    """The config the operator (and ``medsft run --local``) gives generation ``generation``
    of run ``budget``: built by its own builder, so the cache location is the product's."""
    from medsft_operator import layout
    from medsft_operator.api.kinds import CurationStageSpec
    from medsft_operator.builders.jobconfig import build_curation_config
    from medsft_pipelines.specs.jobconfig import RunInfo

    base = budget_config(data, Path("/unused"), teacher_url, shared, processor, workers=1)
    spec = CurationStageSpec.model_validate({**base.spec.to_wire(), **edits, "output": {}})
    run = RunInfo(name="budget", namespace="team", generation=generation)
    output = layout.stage_output(storage, "team", "budget", generation, "curation")
    return build_curation_config(spec, run=run, storage=storage, output_uri=output)


@pytest.mark.parametrize(
    "edit",
    [
        {"verification": {"f1Threshold": 0.9, "requireThink": True}},
        {"lengths": {"maxTokens": 4000}},
    ],
    ids=["verification", "lengths"],
)
def test_a_new_generation_that_asks_the_same_requests_pays_nothing(
    edit: dict[str, Any],
    tmp_path: Path,
    shared_data: Path,
    tiny_model_dir: Path,
    token_counter: TokenCounter,
) -> None:
    """Generation 1, then an edit of the curation spec that changes no teacher request: a
    new generation (another output folder) whose teacher receives 0 requests and whose rows
    are those of generation 1. On the old code the cache lived in the generation's folder,
    so generation 2 paid for every request again."""
    from medsft_pipelines.specs.common import StorageSpec

    data = budget_inputs(tmp_path, shared_data)
    storage = StorageSpec(local_path=str(tmp_path / "store"))
    outputs = []
    with TeacherServer(gold_responder(data["gold"], data["wrong"])) as server:
        for generation, edits in ((1, {}), (2, edit)):
            config = _generation_config(
                data, storage, generation, server.url, shared_data, tiny_model_dir, **edits
            )
            before = server.requests
            run_worker(config, 0, token_counter=token_counter, show_progress=False)
            run_merge(config, show_progress=False)
            report = json.loads(open_store(config.output_uri).get_bytes("report/report.json"))
            outputs.append((server.requests - before, report["teacher_budget"], config))
        (paid, first, g1), (repaid, second, g2) = outputs
    assert g1.output_uri != g2.output_uri and g1.spec != g2.spec
    assert paid == 16 and repaid == 0
    assert g1.teacher_cache_uri == g2.teacher_cache_uri
    assert g1.teacher_cache_uri == (tmp_path / "store/medsft/team/budget/teacher-cache").as_uri()
    assert first["cache_misses"] == 16 and first["http_attempts"] == 16
    assert second["cache_hits"] == 16 and second["cache_misses"] == 0
    assert second["http_attempts"] == 0 and second["completion_tokens"] == 0
    assert _rows(g1.output_uri) == _rows(g2.output_uri)
    markdown = open_store(g2.output_uri).get_bytes("report/report.md").decode()
    assert "16 answered from the response cache" in markdown
    # The CurationJob's status, folded by the operator from each generation's manifest.
    from medsft_operator.api.status import CurationJobStatus
    from medsft_operator.artifacts import ManifestView
    from medsft_operator.fold import fold_manifest

    for config, (attempts, hits, misses) in ((g1, (16, 0, 16)), (g2, (0, 16, 0))):
        manifest = ManifestView.model_validate(
            open_store(config.output_uri).get_json("manifest.json")
        )
        status = fold_manifest(CurationJobStatus(), manifest, None)
        assert (status.teacher_attempts or 0, status.teacher_cache_hits or 0) == (attempts, hits)
        assert (status.teacher_cache_misses or 0) == misses


def _id_config(root: Path, out: Path, teacher_url: str, processor: Path, sources: list) -> Any:
    spec = {
        "sources": [
            {
                "name": name,
                "uri": f"file://{root / f'{name}.jsonl'}",
                "task": "open",
                "fields": {"options": None, "images": None},
            }
            for name in sources
        ],
        "teachers": {"text": {"endpoint": teacher_url, "model": "t", "samplesPerQuestion": 4}},
        "lengths": {"maxTokens": 4096},
        "processor": {"model": str(processor)},
        "decontamination": {"enabled": False},
        "dedup": {"exact": False, "nearDuplicate": False},
    }
    return CurationJobConfig.model_validate(
        {"run": {"name": "ids"}, "outputUri": f"file://{out}", "workers": 2, "spec": spec}
    )


def test_duplicate_ids_stop_the_job_before_the_first_teacher_request(
    tmp_path: Path, tiny_model_dir: Path, token_counter: TokenCounter
) -> None:
    """Two rows with one id (here in different workers' slices, with different questions):
    the old code sent both to the teacher, balanced them as one question and then failed the
    merge with "partial output changed". Now the job stops at selection, naming the ids, with
    no teacher request made. Across sources, ids never collide: the source name is part of
    the question id, so two sources with the same row ids make distinct questions."""
    rng = random.Random(3)
    rows = [{"id": f"r{i}", "question": _long_question(rng), "answer": "x"} for i in range(6)]
    rows[5]["id"] = "r1"  # a second r1, in the second worker's slice
    rows[4]["id"] = "r0"
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = {r["question"]: "x" for r in rows}
    with TeacherServer(gold_responder(gold, dict.fromkeys(gold, "y"))) as server:
        config = _id_config(tmp_path, tmp_path / "out", server.url, tiny_model_dir, ["notes"])
        with pytest.raises(CurationError, match="2 question ids occur more than once") as err:
            run_worker(config, 0, token_counter=token_counter, show_progress=False)
        assert "notes/r0 (x2)" in str(err.value) and "notes/r1 (x2)" in str(err.value)
        assert len(server.arrivals) == 0

        # The same row ids in two sources: two questions each, both kept, no error.
        unique = [{**r, "id": f"r{i}"} for i, r in enumerate(rows[:3])]
        other = [
            {**r, "id": f"r{i}", "question": _long_question(rng)} for i, r in enumerate(rows[:3])
        ]
        for name, part in (("a", unique), ("b", other)):
            (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        server.respond = gold_responder(
            {r["question"]: "x" for r in unique + other},
            {r["question"]: "y" for r in unique + other},
        )
        config = _id_config(tmp_path, tmp_path / "out2", server.url, tiny_model_dir, ["a", "b"])
        for index in range(2):
            run_worker(config, index, token_counter=token_counter, show_progress=False)
        run_merge(config, show_progress=False)
    ids = {row["question_id"] for row in _rows(config.output_uri)}
    assert ids == {f"{s}/r{i}" for s in "ab" for i in range(3)}


def test_the_cache_is_the_runs_or_opt_in_the_buckets(tmp_path: Path, shared_data: Path) -> None:
    """Where the operator points the workers' response cache: the run's folder (every
    generation), or with ``teachers.cache.scope: Bucket`` the storage root (every run)."""
    from medsft_pipelines.specs.common import StorageSpec

    data = budget_inputs(tmp_path, shared_data)
    storage = StorageSpec(endpoint="minio:9000", bucket="lab", prefix="runs")
    url, model = "http://teacher:8000/v1", tmp_path
    run_level = _generation_config(data, storage, 3, url, shared_data, model)
    assert run_level.teacher_cache_uri == "s3://lab/runs/team/budget/teacher-cache"
    assert run_level.output_uri == "s3://lab/runs/team/budget/g3/curation"
    teachers = {"text": {"endpoint": url, "model": "teacher-x"}, "cache": {"scope": "Bucket"}}
    shared = _generation_config(data, storage, 3, url, shared_data, model, teachers=teachers)
    assert shared.teacher_cache_uri == "s3://lab/runs/teacher-cache"
