"""The pure parts of the operator, without a cluster: names, plans and hashes, job configs,
child manifests, status folding, promotion and RBAC data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from controller.sft_manifests import STORAGE, build_training_job, sft_job

from medsft_operator import fold, names, promotion, rbac
from medsft_operator.api.kinds import MedSFTRun, PromotionSpec, SFTJobSpec
from medsft_operator.api.status import CurationJobStatus, EvalJobStatus
from medsft_operator.builders import children
from medsft_operator.builders.jobconfig import local_job_configs
from medsft_operator.plan import PlanError, plan_run
from medsft_operator.render import children_of
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.jobconfig import RunInfo, parse_job_config

REPO = Path(__file__).resolve().parents[2]


def run_manifest(**spec_overrides) -> dict:
    spec = {
        "storage": STORAGE.to_wire(),
        "curation": {
            "spec": {
                "sources": [{"name": "src", "uri": "s3://medsft/raw/a.jsonl", "task": "mcq"}],
                "tracesFrom": {"uri": "s3://medsft/raw/t.jsonl"},
                "decontamination": {"benchmarks": [{"name": "medqa"}]},
            }
        },
        "sft": {
            "spec": {
                "model": {"uri": "s3://medsft/models/base"},
                "training": {"globalBatchSize": 8},
            }
        },
        "eval": {"spec": {"benchmarks": [{"name": "medqa"}, {"name": "pubmedqa", "maxItems": 50}]}},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "medsft.io/v1alpha1",
        "kind": "MedSFTRun",
        "metadata": {"name": "r", "namespace": "ns", "uid": "u-1"},
        "spec": spec,
    }


def hashes(manifest: dict) -> dict[str, str]:
    plan = plan_run(MedSFTRun.from_manifest(manifest))
    return {s.stage: s.hash for s in plan.stages} | {"key": plan.key}


def edit(manifest: dict, path: str, value) -> dict:
    import copy

    out = copy.deepcopy(manifest)
    node = out["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


# ----------------------------------------------------------------------- names


def test_child_names_are_deterministic_and_bounded():
    long = "x" * 56
    assert names.pytorch_job_name("ft", 2) == "ft-a2"
    bounded = names.pytorch_job_name(long, 3)
    assert len(bounded) <= names.PYTORCHJOB_NAME_MAX and bounded.endswith("-a3")
    assert bounded == names.pytorch_job_name(long, 3)  # deterministic
    assert bounded != names.pytorch_job_name("x" * 55 + "y", 3)  # still unique
    assert names.run_stage_name("run", "sft", 12) == "run-sft-g12"


# ------------------------------------------------------------- plans and hashes


def test_stage_hashes_change_with_results_not_with_how_pods_run():
    base = hashes(run_manifest())
    # Runtime only: image, resources, worker/node counts, retries. Nothing re-runs.
    for path, value in [
        ("image", "other:tag"),
        ("sft.spec.resources", {"requests": {"cpu": "8"}}),
        ("curation.spec.workers", 16),
        ("sft.spec.backoffLimit", 9),
        ("retraining.historyLimit", 3),
        ("promotion", {"thresholds": [{"metric": "mean", "min": 0.5}]}),
    ]:
        assert hashes(edit(run_manifest(), path, value)) == base, path

    # Eval settings: only eval re-runs (curation already protects medqa; pubmedqa is
    # protected whole, whatever maxItems says).
    changed = hashes(
        edit(run_manifest(), "eval.spec.benchmarks", [{"name": "medqa"}, {"name": "pubmedqa"}])
    )
    assert (changed["curation"], changed["sft"]) == (base["curation"], base["sft"])
    assert changed["eval"] != base["eval"] and changed["key"] != base["key"]

    # A recipe change re-runs SFT and, through its input, eval; the dataset stays.
    lr = hashes(
        edit(run_manifest(), "sft.spec.training", {"globalBatchSize": 8, "learningRate": 1e-5})
    )
    assert lr["curation"] == base["curation"]
    assert lr["sft"] != base["sft"] and lr["eval"] != base["eval"]

    # A benchmark curation never protected: the dataset must be re-checked against it.
    new_bench = hashes(
        edit(run_manifest(), "eval.spec.benchmarks", [{"name": "medqa"}, {"name": "headqa"}])
    )
    assert new_bench["curation"] != base["curation"] and new_bench["sft"] != base["sft"]


def test_manual_retraining_starts_generations_only_on_a_trigger():
    manual = edit(run_manifest(), "retraining", {"policy": "Manual"})
    key = hashes(manual)["key"]
    assert (
        hashes(edit(manual, "sft.spec.training", {"globalBatchSize": 8, "epochs": 1}))["key"] == key
    )
    assert hashes(edit(manual, "retraining", {"policy": "Manual", "trigger": "v2"}))["key"] != key


def test_curation_processor_defaults_to_the_sft_model_and_protects_eval_benchmarks():
    plan = plan_run(MedSFTRun.from_manifest(run_manifest()))
    curation = plan.get("curation").spec
    assert curation.processor.model == "s3://medsft/models/base"
    assert [b.name for b in curation.decontamination.benchmarks] == ["medqa", "pubmedqa"]
    assert all(b.max_items is None for b in curation.decontamination.benchmarks)


def test_a_run_without_reachable_storage_cannot_be_planned():
    manifest = run_manifest()
    del manifest["spec"]["storage"]
    with pytest.raises(PlanError) as err:
        plan_run(MedSFTRun.from_manifest(manifest))
    assert err.value.reason == "StorageNotConfigured"
    assert plan_run(MedSFTRun.from_manifest(manifest), default_storage=STORAGE).storage == STORAGE


# ---------------------------------------------------------- manifests and configs


def test_rendered_run_children_chain_their_inputs(tmp_path):
    docs = children_of(run_manifest(), generation=2)
    kinds = [d["kind"] for d in docs]
    assert kinds == [
        "CurationJob",
        "ConfigMap",
        "Job",
        "Job",
        "SFTJob",
        "ConfigMap",
        "PyTorchJob",
        "EvalJob",
        "ConfigMap",
        "Job",
    ]
    by_name = {d["metadata"]["name"]: d for d in docs}
    sft_config = parse_job_config(yaml.safe_load(by_name["r-sft-g2-config"]["data"]["job.yaml"]))
    assert sft_config.dataset_manifest_uri == "s3://medsft/ns/r/g2/curation/manifest.json"
    assert sft_config.output_uri == "s3://medsft/ns/r/g2/sft"
    assert sft_config.run == RunInfo(
        name="r", namespace="ns", generation=2, spec_hash=sft_config.run.spec_hash
    )
    eval_config = parse_job_config(yaml.safe_load(by_name["r-eval-g2-config"]["data"]["job.yaml"]))
    assert eval_config.model_uri == "s3://medsft/ns/r/g2/sft/model"
    work = by_name["r-curation-g2-work"]
    assert work["spec"]["completionMode"] == "Indexed"
    assert work["metadata"]["labels"][names.RUN] == "r"
    assert work["metadata"]["labels"][names.GENERATION] == "2"


def test_pytorchjob_has_master_workers_gpus_shm_and_scheduling():
    job = build_training_job(
        sft_job(
            nodes=4,
            gpusPerNode=8,
            shmSize="64Gi",
            backoffLimit=5,
            scheduling={
                "queueName": "gpu",
                "priorityClassName": "high",
                "nodeSelector": {"gpu": "h100"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
        ),
        attempt=1,
    )
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8"
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    # One retry budget: the operator's attempts (backoffLimit 5); the PyTorchJob restarts
    # nothing, and a failed attempt leaves no pod behind to hold GPUs beside the next one.
    assert spec["runPolicy"] == {
        "backoffLimit": 0,
        "cleanPodPolicy": "Running",
        "suspend": True,
        "schedulingPolicy": {"minAvailable": 4, "priorityClass": "high"},
    }
    assert job["metadata"]["labels"][names.KUEUE_QUEUE] == "gpu"
    assert job["metadata"]["name"] == "ft-a1"
    pod = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "pytorch"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["command"][:3] == ["torchrun", "--no-python", "medsft-train"]
    assert {"name": "MEDSFT_ATTEMPT", "value": "1"} in container["env"]
    assert all(r["restartPolicy"] == "Never" for r in spec["pytorchReplicaSpecs"].values())
    assert pod["restartPolicy"] == "Never"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "high"
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    single = build_training_job(sft_job())["spec"]
    assert "Worker" not in single["pytorchReplicaSpecs"] and "suspend" not in single["runPolicy"]


def test_deepspeed_config_in_the_configmap_matches_the_world_size():
    import json

    spec = SFTJobSpec.model_validate(
        sft_job(nodes=2, gpusPerNode=4, deepspeed={"zeroStage": 2})["spec"]
    )
    config = json.loads(children.deepspeed_file(spec))
    assert config["zero_optimization"]["stage"] == 2
    assert config["train_batch_size"] == 64 and config["gradient_accumulation_steps"] == 8


def test_local_job_configs_chain_the_stages_on_local_storage(tmp_path):
    local = StorageSpec(local_path=str(tmp_path))
    configs = local_job_configs(MedSFTRun.from_manifest(run_manifest()), local)
    curation, sft, evaluation = configs
    assert curation.step == "all" and curation.output_uri.startswith(f"file://{tmp_path}")
    assert sft.dataset_manifest_uri == f"{curation.output_uri}/manifest.json"
    assert evaluation.model_uri == f"{sft.output_uri}/model"


# ------------------------------------------------------------------ status folding


def test_job_states_follow_the_job_controllers_conditions():
    def job(*conditions, **status):
        return {
            "status": {
                "conditions": [{"type": t, "status": "True", "reason": r} for t, r in conditions],
                **status,
            }
        }

    assert fold.job_state(job(("Complete", "CompletionsReached"))).phase == "Succeeded"
    failed = fold.job_state(
        job(("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded"))
    )
    assert (failed.phase, failed.reason) == ("Failed", "BackoffLimitExceeded")
    assert fold.job_state({"spec": {"suspend": True}}).reason == "Queued"
    assert fold.job_state(job(active=2)).phase == "Running"


def test_pytorchjob_state_is_its_last_true_condition():
    conditions = [
        {"type": "Created", "status": "True"},
        {"type": "Running", "status": "False"},
        {"type": "Restarting", "status": "False"},
        {"type": "Running", "status": "True"},
    ]
    state = fold.pytorchjob_state({"status": {"conditions": conditions}})
    assert state.phase == "Running" and state.restarted


def test_transitions_become_events_and_timestamps_move_only_on_change():
    status = fold.apply_phase(CurationJobStatus(), "Running", "Running", "working", 1)
    again = fold.apply_phase(status, "Running", "Running", "still working", 1)
    assert [c.last_transition_time for c in again.conditions] == [
        c.last_transition_time for c in status.conditions
    ]
    assert fold.transition_events(status, again) == []
    failed = fold.apply_phase(again, "Failed", "BackoffLimitExceeded", "workers failed", 1)
    assert fold.transition_events(again, failed) == [
        ("Warning", "BackoffLimitExceeded", "workers failed")
    ]
    missing = fold.apply_inputs(failed, False, "SecretNotFound", "Secret 's' does not exist", 1)
    assert ("Warning", "SecretNotFound", "Secret 's' does not exist") in fold.transition_events(
        failed, missing
    )


def test_eval_summary_folds_into_status_and_scores():
    status = fold.fold_eval_summary(
        EvalJobStatus(),
        {
            "results": [
                {"name": "a", "distribution": "in", "accuracy": 0.5},
                {"name": "b", "distribution": "out", "accuracy": 0.9},
            ]
        },
    )
    assert fold.scores_of(status) == pytest.approx(
        {"a": 0.5, "b": 0.9, "mean": 0.7, "mean.in": 0.5, "mean.out": 0.9}
    )


def test_the_papers_groups_fold_into_status_and_are_promotion_metrics():
    # summary.json as the eval harness writes it: the paper's three group means.
    summary = {
        "results": [{"name": "medqa", "distribution": "in", "accuracy": 0.6}],
        "meanAccuracy": 0.5,
        "meanAccuracyText": 0.6,
        "meanAccuracyMultimodalReasoning": 0.45,
        "meanAccuracyClassification": 0.3,
    }
    status = fold.fold_eval_summary(EvalJobStatus(), summary)
    assert (
        status.mean_accuracy_text,
        status.mean_accuracy_multimodal,
        status.mean_accuracy_classification,
    ) == (0.6, 0.45, 0.3)
    scores = fold.scores_of(status)
    assert (scores["mean.text"], scores["mean.multimodal"], scores["mean.classification"]) == (
        0.6,
        0.45,
        0.3,
    )
    spec = PromotionSpec.model_validate(
        {
            "thresholds": [
                {"metric": "mean.text", "min": 0.5},
                {"metric": "mean.multimodal", "min": 0.5},
            ]
        }
    )
    assert promotion.evaluate(spec, scores).failures == ["mean.multimodal 0.4500 < 0.5000"]


def test_promotion_gate_names_every_unmet_requirement():
    spec = PromotionSpec.model_validate(
        {
            "thresholds": [{"metric": "mean", "min": 0.6}, {"metric": "medqa", "min": 0.5}],
            "mustBeatBaseline": True,
        }
    )
    passed = promotion.evaluate(spec, {"mean": 0.7, "medqa": 0.55}, baseline_mean=0.6)
    assert passed.promoted
    failed = promotion.evaluate(spec, {"mean": 0.55}, baseline_mean=0.6)
    assert not failed.promoted
    assert failed.failures == [
        "mean 0.5500 < 0.6000",
        "medqa: no such score",
        "mean 0.5500 does not beat the baseline's 0.6000",
    ]


# ------------------------------------------------------------------ RBAC and imports


def test_rbac_rules_grant_no_wildcards_and_no_secret_listing():
    rules = rbac.cluster_rules() + rbac.namespaced_rules()
    for rule in rules:
        assert (
            "*" not in rule["verbs"]
            and "*" not in rule["resources"]
            and "*" not in rule["apiGroups"]
        )
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    assert all(
        not {"update", "delete", "patch"} & set(r["verbs"])
        for r in rules
        if "jobs" in r["resources"]
    )


def test_the_operator_never_imports_torch():
    code = (
        "import sys, medsft_operator.main, medsft_operator.render\n"
        "import medsft_operator.layout  # the data plane's layout names, imported, not copied\n"
        "import medsft_pipelines.sft.deepspeed_config  # what the SFT ConfigMap is built with\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'pyarrow' not in sys.modules, 'pyarrow was imported (60 MB of RSS)'\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_lease_is_taken_only_after_it_stayed_unchanged_for_its_duration_locally():
    """Expiry is judged on this replica's own clock from when it saw the record change,
    never from the holder's renewTime (another machine's clock, which may be skewed)."""
    from medsft_operator.leader import Observation

    far_future = "2099-01-01T00:00:00.000000Z"  # a holder whose clock runs years ahead
    lease = {"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": far_future}}
    seen = Observation()
    seen.see(lease, now=100.0)
    assert seen.held_by_other("b", now=114.9)
    assert not seen.held_by_other("b", now=115.1)  # unchanged for 15 s: expired
    assert not seen.held_by_other("a", now=101.0)  # the holder itself
    seen.see(lease, now=110.0)  # the same record again: no renewal happened
    assert not seen.held_by_other("b", now=115.1)
    renewed = {"spec": {**lease["spec"], "renewTime": "2000-01-01T00:00:00.000000Z"}}
    seen.see(renewed, now=112.0)  # renewed (with a clock years behind): the term restarts
    assert seen.held_by_other("b", now=126.9) and not seen.held_by_other("b", now=127.1)
    released = {"spec": {**lease["spec"], "holderIdentity": None}}
    seen.see(released, now=113.0)
    assert not seen.held_by_other("b", now=113.0)  # released: free at once


def test_leader_timing_must_leave_the_leader_time_to_stop_first():
    from pydantic import ValidationError

    from medsft_operator.config import OperatorConfig

    assert OperatorConfig().renew_deadline_s < OperatorConfig().lease_duration_s
    with pytest.raises(ValidationError, match="leaseRenewDeadlineS < leaseDurationS"):
        OperatorConfig(lease_duration_s=10, lease_renew_deadline_s=10)
    with pytest.raises(ValidationError):
        OperatorConfig(lease_duration_s=10, lease_renew_s=8, lease_renew_deadline_s=6)


def test_must_beat_promoted_compares_like_with_like():
    from medsft_pipelines.specs.eval import EvalSpec

    def settings(**generation):
        spec = {"benchmarks": [{"name": "medqa"}, {"name": "pubmedqa", "maxItems": 50}]}
        return promotion.eval_settings(EvalSpec.model_validate({**spec, "generation": generation}))

    gate = PromotionSpec.model_validate(
        {"thresholds": [{"metric": "mean", "min": 0.0}], "mustBeatPromoted": True}
    )
    promoted = promotion.Evaluated(
        {"medqa": 0.5, "pubmedqa": 0.7, "mean": 0.6}, "s3://m/g1", settings()
    )

    def verdict(scores, model="s3://m/g2", keys=None):
        current = promotion.Evaluated(scores, model, settings() if keys is None else keys)
        return promotion.evaluate(gate, scores, current=current, promoted=promoted)

    assert verdict({"medqa": 0.6, "pubmedqa": 0.7, "mean": 0.65}).promoted
    assert verdict({"medqa": 0.5, "pubmedqa": 0.6, "mean": 0.55}).failures == [
        "mean over the 2 benchmark(s) shared with the promoted generation 0.5500 does not "
        "beat its 0.6000"
    ]
    # A benchmark added (a hard one): compared on the two shared ones, where it is ahead.
    added = {**settings(), "medxpertqa": "k"}
    assert verdict({"medqa": 0.6, "pubmedqa": 0.8, "medxpertqa": 0.1, "mean": 0.5}, keys=added)
    # Other decoding: nothing was evaluated the same way, so the gate refuses to compare.
    greedy = settings(temperature=0.0)
    refused = verdict({"medqa": 0.9, "pubmedqa": 0.9, "mean": 0.9}, keys=greedy)
    assert not refused.promoted and "cannot compare" in refused.message()
    # A re-capped benchmark drops out of the comparison; the other still counts.
    recapped = {**settings(), "pubmedqa": "other-cap"}
    assert verdict({"medqa": 0.6, "pubmedqa": 0.1, "mean": 0.35}, keys=recapped).promoted
    # An eval-only edit re-evaluates the promoted model itself: nothing to beat.
    assert verdict({"medqa": 0.5, "pubmedqa": 0.7, "mean": 0.6}, model="s3://m/g1").promoted


def test_eval_settings_key_what_changes_a_score():
    from medsft_pipelines.specs.eval import EvalSpec

    base = {"benchmarks": [{"name": "medqa"}, {"name": "pubmedqa", "maxItems": 50}]}
    keys = promotion.eval_settings(EvalSpec.model_validate(base))
    seeds = promotion.eval_settings(EvalSpec.model_validate({**base, "generation": {"seeds": 1}}))
    assert all(keys[n] != seeds[n] for n in keys)
    capped = {"benchmarks": [{"name": "medqa"}, {"name": "pubmedqa", "maxItems": 10}]}
    recapped = promotion.eval_settings(EvalSpec.model_validate(capped))
    assert recapped["medqa"] == keys["medqa"] and recapped["pubmedqa"] != keys["pubmedqa"]
    with_baseline = {**base, "baseline": {"name": "b", "uri": "s3://b/m"}}
    assert promotion.eval_settings(EvalSpec.model_validate(with_baseline)) == keys
