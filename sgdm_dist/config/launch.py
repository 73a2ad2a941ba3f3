"""Launch section: where and how jobs run on Kubernetes."""

from __future__ import annotations

from pydantic import Field

from sgdm_dist.config.base import Section


class LaunchConfig(Section):
    namespace: str = Field("sgdm", min_length=1)
    image: str = Field(
        "ghcr.io/sgdm-dist/sgdm:0.1.0", description="Container image for training/tuning pods."
    )
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(1, ge=0)
