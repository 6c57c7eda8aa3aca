"""Experiment tracking: where a run's numbers are also sent (an MLflow tracking server).

Tracking is a copy for people comparing generations; the numbers of record stay in object
storage (``metrics.jsonl``, reports, plots). So nothing here changes a stage's result:
the fields are not hashed, and editing them never starts a new generation.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import K8sName

SecretKey = Annotated[str, Field(min_length=1, max_length=253)]


class MLflowCredentialsRef(Spec):
    """The Secret with the tracking server's credentials; pods receive its keys as the
    environment variables the MLflow client reads, each optional (a Secret may hold a token
    only, or a username and password only). Never copied into specs, status or logs."""

    name: K8sName
    """Name of the Secret (in the resource's namespace; the operator's for the run itself)."""
    username_key: SecretKey = "username"
    """Key of the basic-auth user name (``MLFLOW_TRACKING_USERNAME``)."""
    password_key: SecretKey = "password"
    """Key of the basic-auth password (``MLFLOW_TRACKING_PASSWORD``)."""
    token_key: SecretKey = "token"
    """Key of a bearer token (``MLFLOW_TRACKING_TOKEN``)."""


class MLflowSpec(Spec):
    """An MLflow tracking server and the experiment a run's generations are logged to."""

    tracking_uri: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://\S+$")]
    """Base URL of the tracking server, e.g. ``http://mlflow.mlflow.svc:5000``."""
    experiment_name: Annotated[str, Field(min_length=1, max_length=500)]
    """Experiment the runs go to (created when missing)."""
    credentials_secret: MLflowCredentialsRef | None = None
    """Secret with the server's credentials, when it needs any."""
    run_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    """Log into this existing MLflow run (a MedSFTRun sets it on the stages it creates: its
    generation's run); unset: the stage opens a run of its own."""


class TrackingSpec(Spec):
    """Experiment tracking; unset: none (the numbers are in object storage either way)."""

    mlflow: MLflowSpec | None = None
    """Send metrics, parameters and tags to this MLflow tracking server."""
