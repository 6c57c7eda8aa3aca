"""Pure-data spec models shared by the control plane (CRDs) and the data plane (job configs).

One file per stage (``curation``, ``sft``, ``eval``), shared building blocks in ``common``,
and what each stage's pod receives in ``jobconfig``. Every model derives from
:class:`medsft_pipelines.contract.Spec`.
"""

from medsft_pipelines.specs.common import ObjectRef, SecretKeyRef, StorageSpec, join_uri
from medsft_pipelines.specs.curation import CurationSpec
from medsft_pipelines.specs.eval import BenchmarkSpec, EvalSpec
from medsft_pipelines.specs.jobconfig import (
    CurationJobConfig,
    EvalJobConfig,
    RunInfo,
    SFTJobConfig,
    dump_job_config,
    load_job_config,
)
from medsft_pipelines.specs.sft import SFTSpec

__all__ = [
    "BenchmarkSpec",
    "CurationJobConfig",
    "CurationSpec",
    "EvalJobConfig",
    "EvalSpec",
    "ObjectRef",
    "RunInfo",
    "SFTJobConfig",
    "SFTSpec",
    "SecretKeyRef",
    "StorageSpec",
    "dump_job_config",
    "join_uri",
    "load_job_config",
]
