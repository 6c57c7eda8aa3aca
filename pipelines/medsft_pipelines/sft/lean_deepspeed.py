"""DeepSpeed, imported without MLflow: ``from medsft_pipelines.sft.lean_deepspeed import deepspeed``.

``import deepspeed`` imports its autotuner, which imports MLflow if it is installed, only to
log autotuning experiments; medsft never runs DeepSpeed's autotuner. MLflow is installed
(the tracking client, :mod:`medsft_pipelines.tracking`), and importing it took 1.4 s of each
rank's start on an idle CPU. So the first import of DeepSpeed sees no MLflow (the autotuner
records ``has_mlflow = False``), and MLflow is importable again right after, for the tracker,
which imports it when a run is tracked.
"""

from __future__ import annotations

import sys

_hide_mlflow = "mlflow" not in sys.modules and "deepspeed" not in sys.modules
if _hide_mlflow:
    sys.modules["mlflow"] = None  # type: ignore[assignment]  # `import mlflow` raises ImportError
try:
    import deepspeed
finally:
    if _hide_mlflow:
        del sys.modules["mlflow"]

__all__ = ["deepspeed"]
