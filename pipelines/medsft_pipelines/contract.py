"""The job-config contract shared by the control plane and the data plane.

Every spec model in medsft (the CRD specs in ``medsft_operator.api`` and the job
configs each stage reads in its pod) derives from :class:`Spec`: camelCase on the
wire (Kubernetes convention), snake_case in Python, unknown fields rejected.
The operator may import this module and the ``config`` modules of each stage;
nothing here imports torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Spec(BaseModel):
    """Base of every spec/config model: camelCase aliases, no unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_wire(self) -> dict:
        """The dict as it appears in YAML/JSON (camelCase, defaults included)."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)
