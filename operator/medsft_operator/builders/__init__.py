"""Pure functions turning specs into what the operator creates: job configs and manifests.

Nothing here talks to the cluster or to storage; the reconcilers call these with
everything already resolved (names, storage, image, upstream URIs), so each builder
is tested on its own and ``medsft render`` / ``medsft run --local`` reuse them.
"""

from medsft_operator.builders.jobconfig import (
    build_curation_config,
    build_eval_config,
    build_job_config,
    build_sft_config,
    local_job_configs,
)

__all__ = [
    "build_curation_config",
    "build_eval_config",
    "build_job_config",
    "build_sft_config",
    "local_job_configs",
]
