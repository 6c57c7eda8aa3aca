"""A generation's MLflow run (``spec.tracking.mlflow``), opened by the control plane.

The operator (and ``medsft run --local``) opens one run per generation, tagged so that it
is found again (an operator restarted before it recorded the run opens no second one), with
the run's identity, spec hash and each stage's input hash as tags and the recipe as params;
the stages it creates log into it (``MLflowSpec.runId``). Calls are synchronous with the
MLflow client's short timeouts (``medsft_pipelines.tracking.client_env``): callers run them
off the event loop and treat any failure as "tracking degraded", never as the run's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medsft_pipelines.specs.tracking import MLflowSpec
from medsft_pipelines.tracking import TAG_PREFIX, client_env, flat_params, run_url

KIND_TAG = f"{TAG_PREFIX}kind"


@dataclass(frozen=True)
class OpenedRun:
    run_id: str
    url: str


def generation_tags(
    name: str, namespace: str, generation: int, spec_hash: str, stage_hashes: Mapping[str, str]
) -> dict[str, str]:
    return {
        f"{TAG_PREFIX}run": name,
        f"{TAG_PREFIX}namespace": namespace,
        f"{TAG_PREFIX}generation": str(generation),
        f"{TAG_PREFIX}specHash": spec_hash,
        KIND_TAG: "generation",
        **{f"{TAG_PREFIX}{stage}.inputHash": value for stage, value in stage_hashes.items()},
    }


def open_generation_run(
    spec: MLflowSpec,
    *,
    name: str,
    namespace: str,
    generation: int,
    spec_hash: str,
    stage_hashes: Mapping[str, str],
    recipe: Mapping[str, Any],
    client: Any = None,
) -> OpenedRun:
    """Find or create the generation's run; raises whatever the client raises."""
    client_env()
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(spec.experiment_name)
    )
    tags = generation_tags(name, namespace, generation, spec_hash, stage_hashes)
    query = " and ".join(
        f"tags.`{key}` = '{_quoted(tags[key])}'"
        for key in (f"{TAG_PREFIX}run", f"{TAG_PREFIX}namespace", f"{TAG_PREFIX}generation")
    )
    found = client.search_runs([experiment_id], f"{query} and tags.`{KIND_TAG}` = 'generation'")
    if found:
        info = found[0].info
    else:
        info = client.create_run(experiment_id, tags=tags, run_name=f"{name}-g{generation}").info
        params = flat_params(recipe)
        items = list(params.items())
        from mlflow.entities import Param

        for start in range(0, len(items), 100):  # log_batch takes 100 params a call
            chunk = [Param(k, v[:6000]) for k, v in items[start : start + 100]]
            client.log_batch(info.run_id, params=chunk)
    return OpenedRun(info.run_id, run_url(spec.tracking_uri, info.experiment_id, info.run_id))


def log_generation_outcome(
    spec: MLflowSpec, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str]
) -> None:
    """The scores and the promotion decision, on the generation's run."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client_env()
    client = MlflowClient(tracking_uri=spec.tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
