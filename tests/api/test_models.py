"""Unit tests of the models: the paper's defaults, cross-field rules, job configs, hashing, conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml
from pydantic import ValidationError

from medsft_operator.api import KINDS, MedSFTRun, SFTJobSpec
from medsft_operator.api.conditions import (
    READY,
    SUCCEEDED,
    get_condition,
    is_true,
    remove_condition,
    set_condition,
)
from medsft_operator.api.hashing import spec_hash
from medsft_pipelines.specs import (
    CurationJobConfig,
    CurationSpec,
    EvalJobConfig,
    EvalSpec,
    RunInfo,
    SFTJobConfig,
    SFTSpec,
    StorageSpec,
    dump_job_config,
    load_job_config,
)
from medsft_pipelines.specs.sft import check_batch_divisible

from .conftest import EXAMPLES_DIR

SOURCE = {"name": "pubmedqa", "uri": "s3://raw/pubmedqa/", "task": "mcq"}


def test_sft_defaults_are_the_papers_recipe():
    spec = SFTSpec.model_validate({"model": {"uri": "s3://models/qwen"}})
    training = spec.training
    assert training.epochs == 3
    assert training.learning_rate == 5e-5
    assert training.scheduler == "cosine"
    assert training.warmup_ratio == 0.1
    assert training.global_batch_size == 512
    assert spec.model.freeze_vision_tower is False  # full fine-tune


def test_curation_defaults_are_the_papers_recipe():
    spec = CurationSpec.model_validate(
        {
            "sources": [SOURCE],
            "teachers": {
                "text": {"endpoint": "http://vllm:8000/v1", "model": "deepseek-ai/DeepSeek-R1"}
            },
        }
    )
    assert spec.teachers is not None and spec.teachers.text is not None
    assert spec.teachers.text.samples_per_question == 16
    assert spec.decontamination.ngram == 16
    assert spec.images.max_pixels == 262144
    assert spec.format.think_start == "<think>" and spec.format.think_end == "</think>"


def test_eval_defaults_are_the_papers_protocol():
    generation = EvalSpec.model_validate({"benchmarks": [{"name": "medqa"}]}).generation
    assert generation.temperature == 0.6
    assert generation.top_p == 0.95
    assert generation.max_new_tokens == 8192
    assert generation.seeds == 5
    assert generation.forced_think_exit is True
    assert generation.max_images == 10 and generation.max_pixels == 262144


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sources": [SOURCE]}, "exactly one of teachers or tracesFrom"),
        (
            {
                "sources": [SOURCE],
                "tracesFrom": {},
                "teachers": {"text": {"endpoint": "http://t/v1", "model": "m"}},
            },
            "exactly one of teachers or tracesFrom",
        ),
        ({"sources": [SOURCE, SOURCE], "tracesFrom": {}}, "source names must be unique"),
        (
            {
                "sources": [SOURCE],
                "tracesFrom": {},
                "teachers": None,
                "images": {"minPixels": 10_000, "maxPixels": 5_000},
            },
            "minPixels must not exceed maxPixels",
        ),
        (
            {
                "sources": [SOURCE],
                "tracesFrom": {},
                "lengths": {
                    "buckets": [
                        {"maxTokens": 100, "fraction": 0.7},
                        {"maxTokens": 200, "fraction": 0.7},
                    ]
                },
            },
            "fractions must sum to at most 1",
        ),
    ],
)
def test_curation_cross_field_rules(data, message):
    with pytest.raises(ValidationError, match=message):
        CurationSpec.model_validate(data)


def test_batch_divisibility_is_checked_against_the_world_size():
    spec = SFTSpec.model_validate({"model": {"uri": "m"}, "training": {"microBatchSize": 4}})
    assert check_batch_divisible(spec.training, world_size=32) == 4  # 512 = 4 x 4 x 32
    with pytest.raises(ValueError, match="not divisible"):
        check_batch_divisible(spec.training, world_size=3)
    with pytest.raises(ValidationError, match=r"training\.globalBatchSize"):
        SFTJobSpec.model_validate(
            {
                "model": {"uri": "m"},
                "dataset": {"manifestUri": "s3://data/m.json"},
                "nodes": 3,
                "gpusPerNode": 1,
            }
        )


def test_storage_root_uri():
    assert (
        StorageSpec(endpoint="minio:9000", bucket="bkt", prefix="runs").root_uri()
        == "s3://bkt/runs"
    )
    local = StorageSpec(local_path="/tmp/x", bucket="bkt").root_uri()
    assert local == "file:///tmp/x/bkt"


def test_every_example_parses_with_the_models():
    by_kind = {kind.__name__: kind for kind in KINDS}
    seen = set()
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            by_kind[doc["kind"]].model_validate(doc)
            seen.add(doc["kind"])
    assert seen == set(by_kind), "every kind should have an example"


def test_full_scale_example_is_the_papers_recipe():
    run = MedSFTRun.model_validate(yaml.safe_load((EXAMPLES_DIR / "medsft-run.yaml").read_text()))
    sft = run.spec.sft.spec
    assert sft is not None and sft.model.uri.endswith("Qwen2.5-VL-7B-Instruct")
    assert (sft.training.epochs, sft.training.learning_rate, sft.training.global_batch_size) == (
        3,
        5e-5,
        512,
    )
    assert sft.training.scheduler == "cosine" and sft.training.warmup_ratio == 0.1
    curation = run.spec.curation.spec
    assert curation.teachers.text.samples_per_question == 16
    assert curation.teachers.image.samples_per_question == 16
    distributions = {b.distribution for b in run.spec.eval.spec.benchmarks}
    assert distributions == {"in", "out"}


@pytest.mark.parametrize(
    "config",
    [
        CurationJobConfig(
            run=RunInfo(name="r", generation=2, spec_hash="abc"),
            spec=CurationSpec.model_validate({"sources": [SOURCE], "tracesFrom": {}}),
            output_uri="s3://bkt/r/g2/curation",
            workers=4,
        ),
        SFTJobConfig(
            run=RunInfo(name="r"),
            storage=StorageSpec(endpoint="minio:9000", secure=False),
            spec=SFTSpec.model_validate({"model": {"uri": "s3://m/q"}}),
            model_uri="s3://m/q",
            dataset_manifest_uri="s3://bkt/r/g1/curation/manifest.json",
            output_uri="s3://bkt/r/g1/sft",
        ),
        EvalJobConfig(
            run=RunInfo(name="r"),
            spec=EvalSpec.model_validate({"benchmarks": [{"name": "medqa"}]}),
            model_uri="/models/tiny",
            output_uri="file:///tmp/out",
        ),
    ],
    ids=["curation", "sft", "eval"],
)
def test_job_config_round_trips_through_yaml(config, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(dump_job_config(config))
    loaded = load_job_config(path)
    assert type(loaded) is type(config)
    assert loaded == config


def test_job_config_rejects_unknown_fields(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "EvalJobConfig",
                "run": {"name": "r"},
                "outputUri": "file:///o",
                "modelUri": "m",
                "spec": {"benchmarks": [{"name": "medqa"}]},
                "modelURI": "typo",
            }
        )
    )
    with pytest.raises(ValidationError, match="modelURI"):
        load_job_config(path)


# ----------------------------------------------------------------------------- spec_hash


def _sft(**training) -> SFTSpec:
    return SFTSpec.model_validate({"model": {"uri": "s3://m/q"}, "training": training})


def test_spec_hash_is_stable_and_ignores_spelled_out_defaults():
    assert spec_hash(_sft()) == spec_hash(_sft())
    assert spec_hash(_sft()) == spec_hash(_sft(epochs=3, learningRate=5e-5))  # the defaults
    assert len(spec_hash(_sft())) == 64


def test_spec_hash_changes_with_the_spec_and_with_inputs():
    base = spec_hash(_sft())
    assert spec_hash(_sft(epochs=2)) != base
    assert spec_hash(_sft(), "dataset-a") != base
    assert spec_hash(_sft(), "dataset-a") != spec_hash(_sft(), "dataset-b")
    assert spec_hash(_sft(), "a", "b") != spec_hash(_sft(), "ab")


def test_spec_hash_is_independent_of_key_order():
    one = SFTSpec.model_validate({"model": {"uri": "m"}, "training": {"epochs": 1, "seed": 7}})
    two = SFTSpec.model_validate({"training": {"seed": 7, "epochs": 1}, "model": {"uri": "m"}})
    assert spec_hash(one) == spec_hash(two)


# ---------------------------------------------------------------------------- conditions

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_set_condition_appends_and_then_keeps_transition_time_while_status_holds():
    conditions = set_condition([], READY, "False", "Curating", "curation running", 1, now=T0)
    assert conditions[0].last_transition_time == T0
    later = T0 + timedelta(minutes=5)
    conditions = set_condition(conditions, READY, "False", "Training", "sft running", 2, now=later)
    (ready,) = conditions
    assert ready.last_transition_time == T0  # same status: time kept
    assert (ready.reason, ready.message, ready.observed_generation) == (
        "Training",
        "sft running",
        2,
    )


def test_set_condition_moves_transition_time_when_status_changes():
    conditions = set_condition([], READY, "False", "Training", now=T0)
    later = T0 + timedelta(hours=1)
    conditions = set_condition(conditions, READY, "True", "Succeeded", now=later)
    assert conditions[0].last_transition_time == later
    assert is_true(conditions, READY)


def test_set_condition_keeps_other_conditions_and_order():
    conditions = set_condition([], READY, "False", "Pending", now=T0)
    conditions = set_condition(conditions, SUCCEEDED, "Unknown", "Running", now=T0)
    updated = set_condition(conditions, READY, "True", "Done", now=T0)
    assert [c.type for c in updated] == [READY, SUCCEEDED]
    assert get_condition(updated, SUCCEEDED) == conditions[1]
    assert conditions[0].status == "False"  # the input list is not mutated
    assert remove_condition(updated, READY) == [conditions[1]]
    assert get_condition(updated, "Missing") is None and not is_true(updated, "Missing")


def test_condition_reason_must_be_camel_case():
    with pytest.raises(ValidationError, match="reason"):
        set_condition([], READY, "True", "not a reason", now=T0)
