"""Each curation step on its own: sources, images, text, dedup, decontamination, verify,
format, lengths, balance, quarantine. Real files (../shared/data and generated fixtures),
the real processor of the tiny model; no mocks."""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from medsft_pipelines.curation.balance import (
    capped,
    class_balanced,
    length_mixture,
    rank,
    repeats,
)
from medsft_pipelines.curation.decontam import BenchmarkIndex, BenchmarkText
from medsft_pipelines.curation.dedup import lsh_bands, near_duplicates
from medsft_pipelines.curation.errors import BadInput, ErrorBudgetExceeded
from medsft_pipelines.curation.format import render_messages, render_question
from medsft_pipelines.curation.images import ImageProcessor, process_image, target_size
from medsft_pipelines.curation.lengths import template_messages
from medsft_pipelines.curation.quarantine import Quarantine, check_error_budget
from medsft_pipelines.curation.sample import Sample
from medsft_pipelines.curation.sources import (
    Fetcher,
    SourceContext,
    SourceReader,
    canonical_answer,
    to_sample,
    worker_slice,
)
from medsft_pipelines.curation.text import ngram_hashes, question_hash, shingles, word_ids, words
from medsft_pipelines.curation.verify import verify
from medsft_pipelines.specs.curation import CurationSource, FormatSpec, VerificationSpec


def _source(**kw) -> CurationSource:
    return CurationSource.model_validate({"name": "src", "task": "mcq", **kw})


def _png(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        arr = rng.integers(0, 4096, size=(size[1], size[0]), dtype=np.uint16)
        img = Image.fromarray(arr)  # uint16 -> I;16
    else:
        arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB").convert(mode)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


# -- sources ------------------------------------------------------------------------------------


def test_pubmedqa_json_map_reads_every_row_with_its_pmid(shared_data: Path, tmp_path: Path) -> None:
    src = _source(
        uri=f"file://{shared_data}/pubmedqa/ori_pqal.json",
        format="json",
        options=["yes", "no", "maybe"],
        fields={
            "question": "QUESTION",
            "context": "CONTEXTS",
            "answer": "final_decision",
            "traces": "LONG_ANSWER",
            "metadata": ["YEAR"],
        },
    )
    reader = SourceReader(src, Fetcher(tmp_path))
    raw = json.loads((shared_data / "pubmedqa/ori_pqal.json").read_text())
    assert reader.num_rows() == len(raw) == 1000
    rows = list(reader.rows(10, 13))
    pmids = list(raw)[10:13]
    samples = [to_sample(r, SourceContext(src, 2), i) for i, r in rows]
    for sample, pmid in zip(samples, pmids, strict=True):
        record = raw[pmid]
        assert sample.id == f"src/{pmid}"
        assert sample.question == record["QUESTION"]
        assert sample.context == "\n".join(record["CONTEXTS"])
        assert sample.answer == "ABC"[["yes", "no", "maybe"].index(record["final_decision"])]
        assert sample.traces == [record["LONG_ANSWER"]]
        assert sample.metadata == {"YEAR": record["YEAR"]}
        assert sample.order[0] == 2


def test_vqa_rad_json_array_with_image_names(shared_data: Path, tmp_path: Path) -> None:
    src = _source(
        uri=str(shared_data / "vqa-rad/VQA_RAD_Dataset_Public.json"),
        format="json",
        task="open",
        modality="image",
        image_root=f"file://{shared_data}/vqa-rad/images",
        fields={"id": "qid", "images": "image_name", "options": None},
    )
    reader = SourceReader(src, Fetcher(tmp_path))
    ((_, first),) = list(reader.rows(0, 1))
    sample = to_sample(first, SourceContext(src, 0), 0)
    assert (
        sample.image_refs == [first["image_name"]] and sample.answer == str(first["answer"]).strip()
    )


def test_jsonl_malformed_lines_and_rows_become_bad_input(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    src = _source(uri=str(fixtures_dir / "mcq.jsonl"), fields={"answer": "answer_idx"})
    reader = SourceReader(src, Fetcher(tmp_path))
    reasons = Counter()
    ok = 0
    for i, raw in reader.rows(0, reader.num_rows()):
        try:
            to_sample(raw, SourceContext(src, 0), i)
            ok += 1
        except BadInput as bad:
            reasons[bad.reason] += 1
    lines = (fixtures_dir / "mcq.jsonl").read_text().splitlines()
    assert ok + sum(reasons.values()) == len(lines)
    assert reasons == {"malformed_row": 2}  # the row without a question, the broken JSON line


def test_parquet_folder_and_hf_saved_dataset(tmp_path: Path) -> None:
    rows = [
        {"id": f"r{i}", "question": f"question {i}?", "options": ["x", "y"], "answer": "y"}
        for i in range(10)
    ]
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:6]), folder / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:]), folder / "part-1.parquet")
    # The layout datasets.save_to_disk writes: a DatasetDict with one folder per split, each
    # with state.json listing Arrow IPC stream files.
    hf = tmp_path / "hf"
    (hf / "train").mkdir(parents=True)
    (hf / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    table = pa.Table.from_pylist(rows)
    with (
        pa.OSFile(str(hf / "train" / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    (hf / "train" / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    for fmt, uri in (("parquet", f"file://{folder}"), ("hf", str(hf))):
        src = _source(uri=uri, format=fmt)
        reader = SourceReader(src, Fetcher(tmp_path))
        assert reader.num_rows() == 10
        got = [to_sample(r, SourceContext(src, 0), i) for i, r in reader.rows(4, 8)]
        assert [s.id for s in got] == [f"src/r{i}" for i in range(4, 8)]
        assert all(s.answer == "B" for s in got)


def test_real_datasets_save_to_disk_is_read(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")  # installed in the dev venv for the benchmark
    ds = datasets.Dataset.from_list(
        [{"id": str(i), "question": f"q{i}", "answer": "a"} for i in range(5)]
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    src = _source(uri=str(tmp_path / "saved"), format="hf", task="open", fields={"options": None})
    reader = SourceReader(src, Fetcher(tmp_path))
    assert [to_sample(r, SourceContext(src, 0), i).question for i, r in reader.rows(0, 5)] == [
        f"q{i}" for i in range(5)
    ]


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_worker_slices_cover_every_row_once(workers: int) -> None:
    for n in (0, 1, 5, 100, 101):
        covered = [i for w in range(workers) for i in range(*worker_slice(n, w, workers))]
        assert covered == list(range(n))


def test_canonical_answer_forms() -> None:
    opts = ["aspirin", "heparin", "warfarin"]
    assert canonical_answer("b", opts, "mcq") == "B"
    assert canonical_answer("B) heparin", opts, "mcq") == "B"
    assert canonical_answer("Warfarin", opts, "mcq") == "C"
    assert canonical_answer(0, opts, "mcq") == "A"
    with pytest.raises(BadInput):
        canonical_answer("insulin", opts, "mcq")
    with pytest.raises(BadInput):
        canonical_answer(7, opts, "mcq")
    assert canonical_answer(" Left lung ", [], "open") == "Left lung"


def test_image_question_without_image_is_quarantined() -> None:
    src = _source(task="open", modality="image", uri="file:///x.jsonl")
    with pytest.raises(BadInput) as err:
        to_sample({"question": "what?", "answer": "x"}, SourceContext(src, 0), 0)
    assert err.value.reason == "missing_image"


# -- images -------------------------------------------------------------------------------------


def test_resize_to_pixel_budget_keeps_aspect() -> None:
    w, h = target_size(2000, 1000, 262144, 3136)
    assert w * h <= 262144 and abs(w / h - 2.0) < 0.01 and w * h > 0.98 * 262144
    assert target_size(512, 512, 262144, 3136) == (512, 512)
    w, h = target_size(20, 20, 262144, 3136)
    assert w * h >= 3136


def test_process_real_vqa_rad_jpeg(shared_data: Path) -> None:
    path = next(
        p
        for p in sorted((shared_data / "vqa-rad/images").iterdir())
        if Image.open(p).size[0] * Image.open(p).size[1] > 262144
    )
    data = path.read_bytes()
    out = process_image(data, max_pixels=262144, min_pixels=3136, encoding="png")
    assert out.width * out.height <= 262144
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.format == "PNG" and img.size == (out.width, out.height)
    assert out.file_sha256 == hashlib.sha256(data).hexdigest()


def test_small_image_keeps_original_bytes_and_pixel_hash_ignores_encoding() -> None:
    data = _png((64, 80))
    out = process_image(data, max_pixels=262144, min_pixels=10, encoding="png")
    assert out.data == data
    with Image.open(io.BytesIO(data)) as img:
        again = io.BytesIO()
        img.save(again, format="PNG", compress_level=9)  # same pixels, different file
    other = process_image(again.getvalue(), max_pixels=262144, min_pixels=10, encoding="png")
    assert other.file_sha256 != out.file_sha256 and other.sha256 == out.sha256


def test_16bit_image_is_stretched_not_clipped() -> None:
    out = process_image(
        _png((64, 64), mode="I;16"), max_pixels=262144, min_pixels=10, encoding="png"
    )
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.mode == "L"
        lo, hi = img.getextrema()
    assert lo == 0 and hi == 255


def test_corrupt_image_raises_bad_input_and_cache_counts_decodes(fixtures_dir: Path) -> None:
    proc = ImageProcessor(max_pixels=262144, min_pixels=3136, encoding="png")
    for _ in range(2):
        with pytest.raises(BadInput) as err:
            proc((fixtures_dir / "corrupt.png").read_bytes())
        assert err.value.reason == "undecodable_image"
    good = _png((100, 100))
    assert proc(good) is proc(good)
    assert proc.decoded == 2


# -- text, dedup, decontamination ---------------------------------------------------------------


def test_ngram_hashes_match_equal_ngrams_only() -> None:
    a = words("the cat sat on the mat with a hat")
    b = words("a dog: the cat sat on the mat, surely")
    ha, hb = ngram_hashes(word_ids(a), 5), ngram_hashes(word_ids(b), 5)
    assert len(ha) == len(a) - 4
    # "the cat sat on the" and "cat sat on the mat"
    assert len(set(ha.tolist()) & set(hb.tolist())) == 2
    assert len(ngram_hashes(word_ids(a[:3]), 5)) == 0


def test_question_hash_normalises_text_and_sorts_images() -> None:
    assert question_hash("What is X?", ["b", "a"]) == question_hash("  what is x ", ["a", "b"])
    assert question_hash("What is X?", ["a"]) != question_hash("What is X?", ["c"])


@pytest.mark.parametrize("backend", ["rensa", "datasketch"])
def test_near_duplicates_keep_first(backend: str, fixtures_dir: Path) -> None:
    rows = [json.loads(line) for line in (fixtures_dir / "mcq.jsonl").read_text().splitlines()[:36]]
    texts = [r["question"] for r in rows]
    texts.insert(10, texts[5].rsplit(" ", 1)[0] + " glacier?")  # a near copy of item 5, later
    keys = [f"k{i}" for i in range(len(texts))]
    tokens = [shingles(words(t), 5) for t in texts]
    dropped = near_duplicates(keys, tokens, 0.8, 128, backend)  # type: ignore[arg-type]
    assert dropped == {"k10": "k5"}


def test_image_salt_separates_same_question_on_different_images() -> None:
    q = words("Is there a fracture of the left femur visible in this radiograph?")
    same = [
        shingles(q, 5, salt="img1|"),
        shingles(q, 5, salt="img2|"),
        shingles(q, 5, salt="img1|"),
    ]
    assert near_duplicates(["a", "b", "c"], same, 0.8) == {"c": "a"}


def test_lsh_bands_divide_num_perm() -> None:
    for threshold in (0.5, 0.7, 0.8, 0.9):
        b = lsh_bands(128, threshold)
        assert 128 % b == 0 and (1 / b) ** (b / 128) <= threshold


def test_decontamination_against_real_pubmedqa(shared_data: Path) -> None:
    from medsft_pipelines.eval.registry import load_benchmark

    bench = load_benchmark("pubmedqa", str(shared_data / "pubmedqa"), "test")
    items = [
        BenchmarkText(
            "pubmedqa", "\n".join([i.context, i.question, *i.options.values()]), i.question
        )
        for i in bench.items
    ]
    index = BenchmarkIndex.build(items)
    # A question long enough to be indexed on its own (at least 8 words; shorter ones would
    # match common phrasings), paraphrased by swapping one word.
    target = next(i for i in bench.items if len(i.question.split()) >= 12)
    q_words = target.question.split()
    mid = len(q_words) // 2  # no run of 16 words survives: only the MinHash test can find it
    paraphrase = " ".join([*q_words[:mid], "really", *q_words[mid + 1 :]])
    keeps_run = " ".join(["Tell", "me:", *q_words[1:]])  # edits at the start: a 16-gram is left
    raw = json.loads((shared_data / "pubmedqa/ori_pqal.json").read_text())
    test_ids = set(json.loads((shared_data / "pubmedqa/test_ground_truth.json").read_text()))
    clean_id = next(k for k in raw if k not in test_ids)
    clean = raw[clean_id]
    texts = [
        "\n".join([target.context, target.question, "yes", "no", "maybe"]),  # verbatim item
        paraphrase,
        target.question,  # the question alone, as a short text inside a longer prompt
        "\n".join(clean["CONTEXTS"] + [clean["QUESTION"], "yes", "no", "maybe"]),  # a train item
        keeps_run,
    ]
    questions = [target.question, paraphrase, target.question, clean["QUESTION"], keeps_run]
    found = index.check_many(texts, [[]] * len(texts), questions)
    reasons = [f.reason if f else None for f in found]
    assert reasons == ["ngram", "near_duplicate", "ngram", None, "ngram"]
    assert {f.benchmark for f in found if f} == {"pubmedqa"}


def test_image_hash_decontamination_and_short_image_questions() -> None:
    index = BenchmarkIndex.build(
        [BenchmarkText("vqa", "Is there a fracture?", "Is there a fracture?", ("h1", "h2"))]
    )
    found = index.check_many(["Is there a fracture?", "Is there a fracture?"], [["h2"], ["h9"]])
    assert found[0] is not None and found[0].reason == "image_hash"
    assert found[1] is None  # same short question, another image: not contamination


# -- verify, format, lengths ----------------------------------------------------------------------


def _mcq() -> Sample:
    return Sample(
        id="s/1",
        source="s",
        task_type="mcq",
        modality="text",
        question="Which drug?",
        answer="B",
        options=["aspirin", "heparin", "warfarin"],
    )


def test_verify_uses_the_shared_answer_extraction() -> None:
    spec = VerificationSpec()
    s = _mcq()
    cases = {
        "<think>weigh</think>The answer is B.": "accepted",
        "<think>weigh</think>\\boxed{heparin}": "accepted",
        "<think>weigh</think>Answer: C": "wrong_answer",
        "<think>weigh and weigh": "unparseable",
        "<think>weigh</think>Answer: A or B": "unparseable",
        "Answer: B": "no_think",
    }
    for response, reason in cases.items():
        assert verify(s, response, "option", spec).reason == reason, response
    assert verify(s, "Answer: B", "option", VerificationSpec(require_think=False)).accepted
    label = Sample(
        id="s/2",
        source="s",
        task_type="classification",
        modality="image",
        question="Shape?",
        answer="circle",
        options=["circle", "square"],
    )
    assert verify(label, "<think>round</think>Answer: Circle", "label", spec).accepted
    num = Sample(
        id="s/3", source="s", task_type="open", modality="text", question="Dose?", answer="2.5"
    )
    assert verify(num, "<think>x</think>Answer: 2.50 mg", "numeric", spec).accepted
    f1 = Sample(
        id="s/4",
        source="s",
        task_type="open",
        modality="text",
        question="Where?",
        answer="right upper lobe",
    )
    assert verify(f1, "<think>x</think>Answer: upper lobe", "tokenF1", spec).accepted
    assert not verify(f1, "<think>x</think>Answer: upper lobe", "normalized", spec).accepted


def test_render_messages_template() -> None:
    spec = FormatSpec(system_prompt="SYS", answer_template="Final: {answer}")
    msgs = render_messages(_mcq(), "because heparin", spec)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert (
        msgs[1]["content"]
        == render_question(_mcq())
        == "Which drug?\n\nOptions:\nA. aspirin\nB. heparin\nC. warfarin"
    )
    assert msgs[2]["content"] == "<think>\nbecause heparin\n</think>\n\nFinal: B"


def test_numbered_options_are_refused_at_validation() -> None:
    """``optionStyle: numbers`` trained "The answer is 2." while the teacher was told to
    answer with a letter, the verifier read letters only and eval scores letters: a correct
    numbered trace was paid for, then graded unparseable. One convention remains, letters,
    and the spec says so before anything runs (this test fails on the code that accepted
    numbers)."""
    with pytest.raises(ValidationError, match="optionStyle 'numbers' is not supported"):
        FormatSpec.model_validate({"optionStyle": "numbers"})
    assert FormatSpec.model_validate({"optionStyle": "letters"}).option_style == "letters"


def test_token_counts_equal_the_processor_with_images(token_counter, tiny_model_dir: Path) -> None:
    from medsft_pipelines.models import load_processor

    processor = load_processor(tiny_model_dir)
    msgs = render_messages(_mcq(), "because heparin is an anticoagulant", FormatSpec())
    sizes = [(512, 512), (300, 200)]
    q = token_counter.question(msgs, sizes)
    ((n_tokens, trace_tokens),) = token_counter.count([q], [msgs[-1]["content"]])
    text = processor.apply_chat_template(template_messages(msgs, 2), tokenize=False)
    images = [Image.new("RGB", s) for s in sizes]
    expected = len(processor(text=[text], images=images)["input_ids"][0])
    assert n_tokens == expected
    assert trace_tokens == len(
        processor.tokenizer(msgs[-1]["content"], add_special_tokens=False)["input_ids"]
    )


# -- balance ------------------------------------------------------------------------------------


def test_class_balance_is_stratified_and_deterministic() -> None:
    labels = {f"i{i}": ("a" if i < 30 else "b" if i < 45 else "c") for i in range(50)}
    kept = class_balanced(labels, seed=3)
    assert Counter(labels[i] for i in kept) == {"a": 5, "b": 5, "c": 5}
    assert kept == class_balanced(dict(reversed(list(labels.items()))), seed=3)
    assert kept != class_balanced(labels, seed=4)
    capped_kept = class_balanced(labels, seed=3, cap=9)
    assert Counter(labels[i] for i in capped_kept) == {"a": 3, "b": 3, "c": 3}


def test_caps_weights_and_ranks() -> None:
    ids = [f"x{i}" for i in range(100)]
    assert capped(ids, 10, 0, "s") == capped(list(reversed(ids)), 10, 0, "s")
    assert capped(ids, 10, 0, "s") <= capped(ids, 20, 0, "s")  # raising a cap only adds
    assert rank(0, "a") != rank(1, "a")
    copies = [repeats(i, 2.5, 0) for i in ids]
    assert set(copies) == {2, 3} and 30 < sum(c == 3 for c in copies) < 70
    half = [repeats(i, 0.5, 0) for i in ids]
    assert set(half) == {0, 1} and 30 < sum(half) < 70


def test_length_mixture_hits_fractions() -> None:
    rng = random.Random(0)
    lengths = {f"r{i}": rng.choice([100] * 6 + [1000] * 3 + [5000]) for i in range(1000)}
    kept, achieved = length_mixture(lengths, [512, 2048], [0.25, 0.5], seed=0)
    counts = Counter(
        "short" if lengths[i] <= 512 else "mid" if lengths[i] <= 2048 else "long" for i in kept
    )
    total = len(kept)
    assert abs(counts["short"] / total - 0.25) < 0.01 and abs(counts["mid"] / total - 0.5) < 0.01
    assert abs(achieved[">2048"] - 0.25) < 0.01
    again, _ = length_mixture(lengths, [512, 2048], [0.25, 0.5], seed=0)
    assert again == kept


# -- quarantine ---------------------------------------------------------------------------------


def test_error_budget_message_names_reasons_and_file() -> None:
    q = Quarantine()
    q.add("malformed_row", source="s", row_index=1)
    q.add("unparseable_response", source="s", row_index=2, response="x" * 10_000)
    assert q.bad_rows == 1 and q.traces["unparseable_response"] == 1
    assert len(q.entries[1]["response"]) < 4100
    check_error_budget(q.rows, 20, 0.05, where="w", quarantine_uri="file:///q")  # 5 %: ok
    with pytest.raises(
        ErrorBudgetExceeded, match=r"1 of 10 input rows \(10.0%\).*malformed_row=1.*file:///q"
    ):
        check_error_budget(q.rows, 10, 0.05, where="w", quarantine_uri="file:///q")


def test_merge_selection_applies_weights_then_length_mixture() -> None:
    from medsft_pipelines.curation.merge import Question, copy_id, select_rows
    from medsft_pipelines.specs.jobconfig import CurationJobConfig

    spec = {
        "sources": [
            {"name": "a", "uri": "file:///a.jsonl", "task": "open", "weight": 2.0},
            {"name": "b", "uri": "file:///b.jsonl", "task": "open", "weight": 0.5},
        ],
        "tracesFrom": {},
        "lengths": {
            "maxTokens": 4096,
            "buckets": [{"maxTokens": 100, "fraction": 0.5}, {"maxTokens": 4096, "fraction": 0.5}],
        },
    }
    config = CurationJobConfig.model_validate(
        {"run": {"name": "r"}, "outputUri": "file:///o", "spec": spec}
    )
    rng = random.Random(1)
    questions = [
        Question(
            f"{src}/{i}",
            src,
            si,
            i,
            "open",
            "x",
            f"h{src}{i}",
            "text",
            [],
            [0, 1],
            [500, 500],
            [rng.choice([50, 400]), rng.choice([50, 400])],
        )
        for si, src in enumerate("ab")
        for i in range(30)
    ]
    counts: Counter[str] = Counter()
    selection = select_rows(config, questions, counts)
    kept = [copy_id(r, c) for r, cs in selection.items() for c in cs]
    assert counts["added/weight_repeat/a"] == 60  # weight 2: every row of a twice
    # Weight 0.5 subsampled b's questions before the teacher: every row that came back stays.
    assert "removed/weight/b" not in counts
    assert any(k.endswith("#r1") for k in kept)
    lengths = {
        q.question_id: dict(zip(q.trace_index, q.trace_tokens, strict=True)) for q in questions
    }
    short = sum(1 for k in kept if lengths[k.split("#")[0]][int(k.split("#")[1])] <= 100)
    assert short * 2 == len(kept)  # the 50/50 length mixture holds exactly
    assert select_rows(config, list(reversed(questions)), Counter()) == selection


def test_selection_before_the_teacher_dedups_balances_caps_and_subsamples() -> None:
    from medsft_pipelines.curation.select import Candidate, select_questions
    from medsft_pipelines.specs.curation import CurationSpec

    spec = CurationSpec.model_validate(
        {
            "sources": [
                {"name": "a", "uri": "file:///a.jsonl", "task": "open", "maxSamples": 5},
                {
                    "name": "b",
                    "uri": "file:///b.jsonl",
                    "task": "classification",
                    "classBalance": True,
                },
                {"name": "c", "uri": "file:///c.jsonl", "task": "open", "weight": 0.25},
            ],
            "tracesFrom": {},
        }
    )
    rng = random.Random(3)

    def text() -> str:
        return " ".join(f"t{rng.randrange(10**6)}" for _ in range(40))

    a = [Candidate(0, i, f"a/{i}", "a", "x", f"ha{i}", text(), ()) for i in range(12)]
    a.append(Candidate(0, 12, "a/copy", "a", "x", "ha3", a[3].prompt_text, ()))
    labels = ["p"] * 5 + ["q"] * 3
    b = [Candidate(1, i, f"b/{i}", "b", lab, f"hb{i}", text(), ()) for i, lab in enumerate(labels)]
    c = [Candidate(2, i, f"c/{i}", "c", "x", f"hc{i}", text(), ()) for i in range(400)]
    verdict = select_questions(spec, [*c, *b, *a])  # any order: canonical order inside

    assert verdict[(0, 12)] == "duplicate_exact"  # the later copy goes, the first stays
    assert sum(1 for k, v in verdict.items() if k[0] == 0 and v is None) == 5
    assert Counter(v for k, v in verdict.items() if k[0] == 0) == {
        None: 5,
        "source_cap": 7,
        "duplicate_exact": 1,
    }
    kept_b = Counter(x.answer for x in b if verdict[x.order] is None)
    assert kept_b == {"p": 3, "q": 3}
    kept_c = sum(1 for x in c if verdict[x.order] is None)
    assert 70 <= kept_c <= 130  # weight 0.25 of 400, by rank: deterministic, not exact
    assert all(verdict[x.order] in (None, "weight") for x in c)
    assert select_questions(spec, [*a, *b, *c]) == verdict
