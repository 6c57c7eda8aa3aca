"""The benchmark registry reads each benchmark's published format into canonical items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval.eval_fixtures import PUBMEDQA, VQA_RAD, WRITERS

from medsft_pipelines.answers import AnswerKind
from medsft_pipelines.eval import (
    BenchmarkFileMissing,
    BenchmarkFormatError,
    Family,
    benchmark_names,
    get_benchmark,
    load_benchmark,
)
from medsft_pipelines.storage import open_store


def test_every_registered_benchmark_has_a_fixture() -> None:
    assert set(benchmark_names()) == set(WRITERS) | {"pubmedqa", "vqa-rad"}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_loader_reads_published_format(name: str, tmp_path: Path) -> None:
    writer, expected = WRITERS[name]
    writer(tmp_path)
    bench = load_benchmark(name, str(tmp_path))
    assert len(bench) == expected
    assert bench.family is get_benchmark(name).family
    for item in bench.items:
        assert item.question and item.answer
        if item.kind is AnswerKind.CHOICE:
            assert item.answer in item.options and len(item.options) >= 2
        if bench.family is not Family.TEXT:
            assert item.images, f"{name} item {item.id} has no image"
            for ref in item.images:
                assert bench.image_bytes(ref)[:4] in (b"\x89PNG",)


def test_pubmedqa_real_test_split() -> None:
    bench = load_benchmark("pubmedqa", str(PUBMEDQA))
    truth = json.loads((PUBMEDQA / "test_ground_truth.json").read_text())
    assert len(bench) == len(truth) == 500
    label = {"A": "yes", "B": "no", "C": "maybe"}
    assert all(label[item.answer] == truth[item.id] for item in bench.items)
    assert all(
        item.context and item.options == {"A": "yes", "B": "no", "C": "maybe"}
        for item in bench.items
    )
    assert bench.distribution == "in" and bench.family is Family.TEXT


def test_vqa_rad_real_test_split() -> None:
    bench = load_benchmark("vqa-rad", str(VQA_RAD), distribution="out")
    rows = json.loads((VQA_RAD / "VQA_RAD_Dataset_Public.json").read_text())
    test_rows = [r for r in rows if r["phrase_type"].startswith("test")]
    assert len(bench) == len(test_rows) == 451
    yes_no = sum(r["answer"].strip().lower() in ("yes", "no") for r in test_rows)
    assert sum(i.kind is AnswerKind.CHOICE for i in bench.items) == yes_no
    assert sum(i.kind is AnswerKind.OPEN for i in bench.items) == len(test_rows) - yes_no
    assert bench.distribution == "out"
    assert bench.image_bytes(bench.items[0].images[0])[:2] == b"\xff\xd8"  # JPEG


def test_max_items_is_a_deterministic_subset() -> None:
    first = load_benchmark("vqa-rad", str(VQA_RAD), max_items=7)
    again = load_benchmark("vqa-rad", f"file://{VQA_RAD}", max_items=7)
    full_ids = [i.id for i in load_benchmark("vqa-rad", str(VQA_RAD)).items]
    assert [i.id for i in first.items] == [i.id for i in again.items]
    assert len(first) == 7
    # kept in the benchmark's order, and spread (not simply the first seven)
    positions = [full_ids.index(i.id) for i in first.items]
    assert positions == sorted(positions) and positions != list(range(7))


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    WRITERS["pmc-vqa"][0](tmp_path)
    (tmp_path / "images/PMC1_fig1.jpg").unlink()
    with pytest.raises(BenchmarkFileMissing, match=r"pmc-vqa.*PMC1_fig1\.jpg"):
        load_benchmark("pmc-vqa", str(tmp_path))


def test_missing_benchmark_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkFileMissing, match=r"medqa.*phrases_no_exclude_test\.jsonl"):
        load_benchmark("medqa", str(tmp_path))
    with pytest.raises(BenchmarkFileMissing, match=r"brain-tumor.*Testing"):
        load_benchmark("brain-tumor", str(tmp_path))


def test_unknown_benchmark_and_bad_rows(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="known: aptos"):
        load_benchmark("no-such-bench", str(tmp_path))
    (tmp_path / "test.jsonl").write_text(
        '{"question": "q", "options": {"A": "x"}, "answer_idx": "Q"}\n'
    )
    with pytest.raises(BenchmarkFormatError, match="not an option letter"):
        load_benchmark("medqa", str(tmp_path))


def test_loads_from_object_storage(minio, minio_bucket: str, tmp_path: Path) -> None:
    from medsft_pipelines.storage import StorageSettings

    WRITERS["nejm"][0](tmp_path)
    settings = StorageSettings(
        endpoint=minio.endpoint,
        access_key=minio.access_key,
        secret_key=minio.secret_key,
        secure=False,
    )
    store = open_store(f"s3://{minio_bucket}/benchmarks/nejm", settings)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            store.upload_file(path, path.relative_to(tmp_path).as_posix())
    bench = load_benchmark("nejm", store)
    assert [i.answer for i in bench.items] == ["C"]
    assert bench.image_bytes(bench.items[0].images[0])[:4] == b"\x89PNG"
    store.delete("images/2023-01-05.png")
    with pytest.raises(BenchmarkFileMissing, match=r"2023-01-05\.png"):
        load_benchmark("nejm", store)


def test_specs_know_every_registered_name():
    """The control plane checks names against a copy (it does not import the data plane)."""
    from medsft_pipelines.specs.eval import BENCHMARK_NAMES

    assert list(BENCHMARK_NAMES) == benchmark_names()


def test_registry_roles_are_the_papers() -> None:
    # MESSIDOR-2 has no training split in the paper: evaluation-only, so out-of-distribution
    # when a spec does not say; the other classification sets fed the SFT data.
    from medsft_pipelines.eval.registry import get_benchmark

    assert get_benchmark("messidor-2").distribution == "out"
    for name in ("brain-tumor", "bcss", "coronahack", "aptos"):
        assert get_benchmark(name).distribution == "in"
