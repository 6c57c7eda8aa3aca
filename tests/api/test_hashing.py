"""Stage hashes survive upgrades: pinned for the examples, blind to new defaulted fields and
to changed defaults of resources that already exist, sensitive to every real change."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from medsft_operator.api import hashing
from medsft_operator.api.hashing import canonical_data, spec_hash
from medsft_operator.api.kinds import KINDS, MedSFTRun
from medsft_operator.cli import load_documents
from medsft_operator.plan import plan_run, project, storage_key
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.curation import CurationSpec
from medsft_pipelines.specs.eval import EvalSpec, GenerationSpec
from medsft_pipelines.specs.sft import SFTSpec, TrainingSpec

from .conftest import EXAMPLES_DIR

GOLDEN = Path(__file__).with_name("golden_hashes.json")
DEFAULT_STORAGE = StorageSpec(endpoint="minio.minio.svc:9000", bucket="medsft")
BY_KIND = {kind.__name__: kind for kind in KINDS}
PURE = {"CurationJob": CurationSpec, "SFTJob": SFTSpec, "EvalJob": EvalSpec}


def example_hashes() -> dict[str, Any]:
    """Every example's stage hashes, as the operator computes them."""
    found: dict[str, Any] = {}
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for doc in load_documents(path):
            where = f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"
            resource = BY_KIND[doc["kind"]].from_manifest(doc)
            if isinstance(resource, MedSFTRun):
                plan = plan_run(resource, default_storage=DEFAULT_STORAGE)
                found[where] = {s.stage: s.hash for s in plan.stages} | {"key": plan.key}
            else:
                spec = resource.spec
                storage = spec.storage or DEFAULT_STORAGE
                found[where] = spec_hash(project(spec, PURE[doc["kind"]]), storage_key(storage))
    return found


def test_golden_hashes_of_the_examples():
    if os.environ.get("MEDSFT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(example_hashes(), indent=1, sort_keys=True) + "\n")
    assert example_hashes() == json.loads(GOLDEN.read_text()), (
        "a stage hash of an example changed: every existing resource with this spec would "
        "start a new generation. If the *result* really changes (a changed default), update "
        "with MEDSFT_UPDATE_GOLDEN=1 pytest tests/api/test_hashing.py"
    )


def test_every_default_is_recorded():
    missing = set(hashing.current_defaults()) - set(hashing.recorded_defaults())
    assert not missing, (
        f"defaults not recorded in {hashing.DEFAULTS_FILE.name}: {sorted(missing)}; "
        "run python -m medsft_operator.api.hashing --record"
    )


# --------------------------------------------------------------- a release adds a field


class TrainingV2(TrainingSpec):
    label_smoothing: float = 0.0
    """A knob a later release adds, defaulted to what training did before."""


class SFTV2(SFTSpec):
    training: TrainingV2 = TrainingV2()


class GenerationV2(GenerationSpec):
    temperature: float = 0.7  # a later release changes a default
    speculative_decoding: bool = False


class EvalV2(EvalSpec):
    generation: GenerationV2 = GenerationV2()


SFT = {"model": {"uri": "s3://m/qwen"}, "training": {"epochs": 2, "maxSteps": 9}}
EVAL = {"benchmarks": [{"name": "medqa"}, {"name": "pubmedqa", "maxItems": 50}]}


def stored(model: type, data: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver stores for ``data``: every default of that release filled in."""
    return model.model_validate(data).to_wire()


def test_a_new_defaulted_field_leaves_the_hash_alone():
    as_created = stored(SFTSpec, SFT)  # stored by the old release: no labelSmoothing
    assert "labelSmoothing" not in as_created["training"]
    old = spec_hash(SFTSpec.model_validate(as_created))
    assert spec_hash(SFTV2.model_validate(as_created)) == old  # read by the new release
    assert spec_hash(SFTV2.model_validate(stored(SFTV2, SFT))) == old  # re-defaulted by it
    changed = {**SFT, "training": {**SFT["training"], "labelSmoothing": 0.1}}
    assert spec_hash(SFTV2.model_validate(changed)) != old  # using it is a real change


def test_a_changed_default_keeps_existing_resources_and_separates_new_ones():
    as_created = stored(EvalSpec, EVAL)  # temperature 0.6 filled in at creation
    old = spec_hash(EvalSpec.model_validate(as_created))
    assert spec_hash(EvalV2.model_validate(as_created)) == old
    # Created under the new release, the same manifest samples at 0.7: another result.
    assert spec_hash(EvalV2.model_validate(EVAL)) != old


def test_explicit_defaults_equal_omitted_fields_but_unset_optionals_do_not():
    explicit = {**SFT, "training": {**SFT["training"], "learningRate": 5e-5, "seed": 42}}
    assert spec_hash(SFTSpec.model_validate(explicit)) == spec_hash(SFTSpec.model_validate(SFT))
    # fields.id defaults to "id"; an explicit null means "derive ids": not the same data.
    source = {"name": "s", "uri": "s3://bucket/s.jsonl", "task": "mcq"}
    derived = {**source, "fields": {"id": None}}
    base = {"sources": [source], "tracesFrom": {}}
    assert canonical_data(CurationSpec.model_validate(base)) != canonical_data(
        CurationSpec.model_validate({**base, "sources": [derived]})
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("training.epochs", 4),
        ("training.learningRate", 1e-5),
        ("deepspeed.zeroStage", 2),
        ("model.freezeVisionTower", True),
    ],
)
def test_every_real_change_changes_the_hash(path, value):
    data = json.loads(json.dumps(SFT))
    node = data
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    assert spec_hash(SFTSpec.model_validate(data)) != spec_hash(SFTSpec.model_validate(SFT))
