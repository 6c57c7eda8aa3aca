"""The trainer's start-up imports: DeepSpeed comes without MLflow (its autotuner's optional
import, 1.4 s of every rank's start), and MLflow stays importable for the tracker."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import medsft_pipelines.sft.train
assert "deepspeed" in sys.modules
assert "mlflow" not in sys.modules, sorted(name for name in sys.modules if "mlflow" in name)
from deepspeed.autotuning import autotuner
assert autotuner.has_mlflow is False
from mlflow.tracking import MlflowClient  # what medsft_pipelines.tracking imports
print("ok")
"""


def test_the_trainer_imports_deepspeed_without_mlflow_and_mlflow_still_imports() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "ok"  # (DeepSpeed prints its accelerator first)
