"""The medsft custom resources (group ``medsft.io``, version ``v1alpha1``).

Models: :mod:`.kinds` (the four kinds), :mod:`.status`, :mod:`.k8s` (Kubernetes parts);
CRD generation: :mod:`.crdgen`; reference docs: :mod:`.docs`; helpers for the operator:
:mod:`.hashing` (``spec_hash``) and :mod:`.conditions`.
"""

from medsft_operator.api.kinds import (
    KINDS,
    CurationJob,
    CurationJobSpec,
    EvalJob,
    EvalJobSpec,
    MedSFTRun,
    MedSFTRunSpec,
    SFTJob,
    SFTJobSpec,
)

__all__ = [
    "KINDS",
    "CurationJob",
    "CurationJobSpec",
    "EvalJob",
    "EvalJobSpec",
    "MedSFTRun",
    "MedSFTRunSpec",
    "SFTJob",
    "SFTJobSpec",
]
