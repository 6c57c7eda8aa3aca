"""The upstream APIs medsft uses, the releases it is tested with, and whether a cluster
serves them.

Kueue and Kubeflow Trainer are optional: the operator asks the apiserver's discovery at
start-up, says clearly in its log what is missing and what for, and watches TrainJobs
only where they are served. ``tests/compat`` pins the same releases against the test
binaries (``hack/testbin.env``) and their CRDs.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsft_operator.kube import PYTORCHJOBS, TRAINJOBS, WORKLOADS, Kube, ResourceType


@dataclass(frozen=True)
class Upstream:
    """An upstream project whose API medsft uses."""

    name: str
    rt: ResourceType
    tested: str
    """The release the tests run (its controller and its CRDs)."""
    supported: str
    """The releases that serve ``rt`` as medsft uses it."""
    needed_for: str

    @property
    def api(self) -> str:
        return f"{self.rt.plural}.{self.rt.group}/{self.rt.version}"

    def missing(self) -> str:
        """What to tell an operator whose cluster does not serve :attr:`rt`."""
        return (
            f"{self.api} is not served: {self.name} ({self.supported}; tested with "
            f"{self.tested}) is not installed, or its version does not serve "
            f"{self.rt.group}/{self.rt.version}; needed for {self.needed_for}"
        )


TRAINING_OPERATOR = Upstream(
    "Kubeflow training-operator",
    PYTORCHJOBS,
    tested="v1.9 CRDs",
    supported="v1.7 to v1.9",
    needed_for="SFT backend PyTorchJob (the default)",
)
TRAINER = Upstream(
    "Kubeflow Trainer",
    TRAINJOBS,
    tested="v2.3.0",
    supported="v2.2 or newer (runtimePatches)",
    needed_for="SFT backend TrainJob",
)
KUEUE = Upstream(
    "Kueue",
    WORKLOADS,
    tested="v0.17.1",
    supported="v0.15 or newer (kueue.x-k8s.io/v1beta2)",
    needed_for="the Queued / Admitted / Evicted status of stages with scheduling.queueName",
)
JOBSET_TESTED = "v0.12.0"  # the JobSet controller Trainer v2.3.0 is built against
UPSTREAMS: tuple[Upstream, ...] = (TRAINING_OPERATOR, TRAINER, KUEUE)


async def served(kube: Kube) -> dict[Upstream, bool]:
    """Which of :data:`UPSTREAMS` the cluster serves (by API discovery)."""
    return {upstream: await kube.served(upstream.rt) for upstream in UPSTREAMS}
