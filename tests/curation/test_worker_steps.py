"""Each step of a curation worker (``curation.steps``) on its own: items in, items out, counts
and quarantine in a Tally. The whole worker (N workers == 1 worker, the content-hash skip of
finished work) is tested in test_pipeline.py."""

from __future__ import annotations

import asyncio
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medsft_pipelines.curation.decontam import BenchmarkIndex, BenchmarkText
from medsft_pipelines.curation.errors import BadInput, CurationError
from medsft_pipelines.curation.format import render_messages
from medsft_pipelines.curation.images import ImageProcessor
from medsft_pipelines.curation.sample import Sample
from medsft_pipelines.curation.sources import Fetcher, SourceContext
from medsft_pipelines.curation.steps import (
    Decontaminate,
    ImportedTraces,
    Item,
    LoadSamples,
    MeasureLengths,
    Tally,
    TeacherTraces,
    VerifyAndFormat,
    read_traces_file,
    run_steps,
    scan_steps,
    teacher_clients,
    trace_steps,
)
from medsft_pipelines.curation.text import question_hash
from medsft_pipelines.specs.curation import (
    CurationSource,
    CurationSpec,
    FormatSpec,
    TracesImport,
    VerificationSpec,
)
from medsft_pipelines.storage import open_store


def run(step, items: list[Item], tally: Tally) -> list[Item]:
    return asyncio.run(step(items, tally))


def _sample(id_: str = "s/1", modality: str = "text", **kw) -> Sample:
    fields = {
        "id": id_,
        "source": "s",
        "task_type": "mcq",
        "modality": modality,
        "question": "Which drug thins the blood?",
        "answer": "B",
        "options": ["aspirin", "heparin", "warfarin"],
    }
    return Sample(**(fields | kw))


def _png(size: tuple[int, int], colour: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (colour, 10, 200)).save(out, format="PNG")
    return out.getvalue()


# -- LoadSamples --------------------------------------------------------------------------------


def test_load_quarantines_bad_rows_removes_too_many_images_and_reads_a_file_once(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((64, 48), 1))
    (tmp_path / "b.png").write_bytes(_png((64, 48), 2))
    source = CurationSource.model_validate(
        {"name": "s", "task": "open", "modality": "image", "uri": f"file://{tmp_path}/rows.jsonl"}
    )
    images = ImageProcessor(max_pixels=262144, min_pixels=3136, encoding="png")
    load = LoadSamples(Fetcher(tmp_path), images, max_images=1, pixel_identity=True)
    rows = [
        (0, {"id": "0", "question": "what is shown?", "answer": "a lung", "images": ["a.png"]}),
        (1, {"id": "1", "question": "and here?", "answer": "a lung", "images": ["a.png"]}),
        (2, {"id": "2", "question": "two?", "answer": "x", "images": ["a.png", "b.png"]}),
        (3, {"id": "3", "question": "gone?", "answer": "x", "images": ["missing.png"]}),
        (4, BadInput("malformed_row", "not JSON")),
    ]
    tally = Tally()
    items = load(SourceContext(source, 0), rows, tally)

    assert [item.sample.id for item in items] == ["s/0", "s/1"]
    assert images.decoded == 2  # a.png once for rows 0-2 (cached), b.png; missing.png never
    first = items[0].sample
    assert first.question_hash == question_hash(first.prompt_text(), [first.images[0].sha256])
    assert tally.counts == {
        "removed/too_many_images/s": 1,
        "quarantined/s/missing_image": 1,
        "quarantined/s/malformed_row": 1,
    }
    assert [e["reason"] for e in tally.quarantine.entries] == ["missing_image", "malformed_row"]


def test_image_identity_is_the_file_or_the_pixels(tmp_path):
    images = ImageProcessor(max_pixels=262144, min_pixels=3136, encoding="png")
    sample = _sample(modality="image")
    sample.images = [images(_png((64, 48), 1))]
    by_file = LoadSamples(Fetcher(tmp_path), images, max_images=1, pixel_identity=False)
    by_pixels = LoadSamples(Fetcher(tmp_path), images, max_images=1, pixel_identity=True)
    assert by_file.image_ids(sample) == [sample.images[0].file_sha256]
    assert by_pixels.image_ids(sample) == [sample.images[0].sha256]


# -- Decontaminate ------------------------------------------------------------------------------


def test_decontaminate_removes_benchmark_questions_and_says_why():
    leaked = "Does regular aspirin use lower the risk of a second heart attack in older adults?"
    bench = BenchmarkIndex.build([BenchmarkText("bench", leaked, leaked)])
    items = [Item(_sample("s/1", question=leaked)), Item(_sample("s/2"))]
    tally = Tally()
    kept = run(Decontaminate(bench, image_hash=False), items, tally)
    assert [item.sample.id for item in kept] == ["s/2"]
    assert tally.counts["removed/decontamination/s"] == 1
    assert sum(v for k, v in tally.counts.items() if k.startswith("decontam/bench/")) == 1


# -- traces -------------------------------------------------------------------------------------


class StandInTeacher:
    """Stands in for the paid teacher API (TeacherClient's generate_many): answers each
    sample with one response naming itself."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def generate_many(self, samples: list[Sample]) -> list[list[str]]:
        return [[f"{self.name} on {s.id}"] for s in samples]


def test_each_question_goes_to_its_modalitys_teacher_else_the_image_one():
    items = [Item(_sample("s/1", "text")), Item(_sample("s/2", "image"))]
    tally = Tally()
    both = {"text": StandInTeacher("t"), "image": StandInTeacher("i")}
    out = run(TeacherTraces(both), items, tally)  # type: ignore[arg-type]
    assert [(item.traces, item.teacher) for item in out] == [
        (["t on s/1"], "t"),
        (["i on s/2"], "i"),
    ]
    assert tally.counts == {"teacher_sent/questions/s": 2}

    only_image = {"image": StandInTeacher("i")}
    out = run(TeacherTraces(only_image), [Item(_sample("s/3", "text"))], Tally())  # type: ignore[arg-type]
    assert (out[0].traces, out[0].teacher) == (["i on s/3"], "i")


def test_imported_traces_by_question_id_or_raw_id_else_the_rows_own():
    imported = {"s/1": ["by id"], "2": ["by raw id"]}
    items = [Item(_sample(f"s/{i}", traces=["own"])) for i in (1, 2, 3)]
    out = run(ImportedTraces(imported), items, Tally())
    assert [item.traces for item in out[:2]] == [["by id"], ["by raw id"]]
    assert isinstance(out[2].traces, BadInput) and out[2].traces.reason == "missing_traces"
    own = run(ImportedTraces(None), [Item(_sample("s/3", traces=["own"]))], Tally())
    assert own[0].traces == ["own"] and own[0].teacher == "imported"


def test_a_traces_file_is_read_by_id_in_either_format(tmp_path):
    rows = [
        {"id": "1", "traces": ["first", "second"]},
        {"id": 2, "traces": "only one"},
        {"id": "1", "traces": ["third"]},  # a question's traces may be split over rows
        {"id": None, "traces": ["no id: skipped"]},
        {"id": "3"},  # no traces: skipped
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = {"1": ["first", "second", "third"], "2": ["only one"]}
    jsonl = TracesImport(uri=f"file://{tmp_path}/t.jsonl")
    assert read_traces_file(jsonl, Fetcher(tmp_path)) == expected

    table = pa.table(
        {"qid": ["1", "2"], "answers": [["first", "second"], ["only one"]], "other": [0, 1]}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    parquet = TracesImport(
        uri=f"file://{tmp_path}/t.parquet",
        format="parquet",
        id_column="qid",
        traces_column="answers",
    )
    assert read_traces_file(parquet, Fetcher(tmp_path)) == {
        "1": ["first", "second"],
        "2": ["only one"],
    }


def test_image_sources_need_an_image_teacher(tmp_path):
    spec = CurationSpec.model_validate(
        {
            "sources": [
                {"name": "s", "uri": "file:///x.jsonl", "task": "open", "modality": "image"}
            ],
            "teachers": {"text": {"endpoint": "http://127.0.0.1:9/v1", "model": "m"}},
        }
    )
    with pytest.raises(CurationError, match=r"image sources need teachers\.image"):
        teacher_clients(spec, open_store(f"file://{tmp_path}"))
    both = spec.model_copy(
        update={"teachers": spec.teachers.model_copy(update={"image": spec.teachers.text})}
    )
    clients = teacher_clients(both, open_store(f"file://{tmp_path}"))
    assert sorted(clients) == ["image", "text"]
    for client in clients.values():
        asyncio.run(client.close())


# -- VerifyAndFormat ----------------------------------------------------------------------------


def test_verify_keeps_at_most_k_correct_traces_and_quarantines_what_does_not_parse():
    step = VerifyAndFormat(
        VerificationSpec(max_correct_per_question=1), FormatSpec(), imported=False
    )
    mixed = Item(_sample("s/1"))
    mixed.traces = [
        "<think>weigh</think>The answer is B.",
        "<think>again</think>The answer is B.",
        "<think>hmm</think>Answer: C",
        "<think>never closes",
    ]
    unparseable = Item(_sample("s/2"))
    unparseable.traces = ["<think>a", "<think>b"]
    failed = Item(_sample("s/3"))
    failed.traces = BadInput("teacher_error", "HTTP 500")
    tally = Tally()
    out = run(step, [mixed, unparseable, failed], tally)

    assert out == [mixed, unparseable, failed]  # every question stays (a question record)
    ((index, messages),) = mixed.accepted
    assert index == 0
    assert messages == render_messages(mixed.sample, "weigh", FormatSpec())
    assert unparseable.accepted == [] and failed.accepted == []
    assert tally.counts == {
        "traces/s/mcq/generated": 6,
        "traces/s/mcq/accepted": 2,
        "traces/s/mcq/over_max_correct": 1,
        "traces/s/mcq/wrong_answer": 1,
        "traces/s/mcq/unparseable": 3,
        "questions/s/with_traces": 1,
        "quarantined/s/teacher_unparseable": 1,
        "quarantined/s/teacher_error": 1,
    }
    reasons = [e["reason"] for e in tally.quarantine.entries]
    assert reasons == ["unparseable_response"] * 3 + ["teacher_unparseable", "teacher_error"]


# -- MeasureLengths -----------------------------------------------------------------------------


def test_lengths_are_the_processors_and_too_long_rows_go(token_counter):
    sample = _sample("s/1")
    messages = render_messages(sample, "weigh the options", FormatSpec())
    ((n_tokens, trace_tokens),) = token_counter.count(
        [token_counter.question(messages, [])], [messages[-1]["content"]]
    )

    item = Item(sample, teacher="t", accepted=[(2, messages)])
    out = run(MeasureLengths(token_counter, max_tokens=n_tokens), [item], Tally())
    (row,) = out[0].rows
    assert (row["id"], row["trace_index"], row["teacher"]) == ("s/1#2", 2, "t")
    assert (row["n_tokens"], row["trace_tokens"]) == (n_tokens, trace_tokens)
    assert row["messages"] == messages

    tally = Tally()
    short = Item(sample, accepted=[(0, messages)])
    out = run(MeasureLengths(token_counter, max_tokens=n_tokens - 1), [short], tally)
    assert out == [short] and short.rows == []
    assert tally.counts == {"removed/too_long/s": 1}


# -- compositions -------------------------------------------------------------------------------


def test_the_spec_picks_the_steps():
    common = {
        "verification": VerificationSpec(),
        "fmt": FormatSpec(),
        "counter": object(),
        "max_tokens": 100,
    }
    teacher = trace_steps(teachers={"text": StandInTeacher("t")}, imported=None, **common)  # type: ignore[arg-type]
    assert [type(s) for s in teacher] == [TeacherTraces, VerifyAndFormat, MeasureLengths]
    assert teacher[1].imported is False  # type: ignore[attr-defined]
    imported = trace_steps(teachers={}, imported=None, **common)  # type: ignore[arg-type]
    assert [type(s) for s in imported] == [ImportedTraces, VerifyAndFormat, MeasureLengths]
    assert imported[1].imported is True  # type: ignore[attr-defined]

    assert scan_steps(None, image_hash=True) == []
    bench = BenchmarkIndex.build([BenchmarkText("b", "a question of eight or more words here", "")])
    assert [type(s) for s in scan_steps(bench, image_hash=True)] == [Decontaminate]


class DropOpenQuestions:
    """A step a user adds (e.g. a quality filter): it only has to follow the protocol."""

    cpu = "filter"

    async def __call__(self, items: list[Item], tally: Tally) -> list[Item]:
        kept = [item for item in items if item.sample.task_type != "open"]
        tally.counts["removed/open/s"] += len(items) - len(kept)
        return kept


def test_steps_compose_in_order():
    items = [Item(_sample("s/1")), Item(_sample("s/2", task_type="open", options=[]))]
    tally = Tally()
    out = asyncio.run(
        run_steps([DropOpenQuestions(), ImportedTraces({"s/1": ["x"]})], items, tally)
    )
    assert [(item.sample.id, item.traces) for item in out] == [("s/1", ["x"])]
    assert tally.counts == {"removed/open/s": 1}
