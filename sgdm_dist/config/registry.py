"""Registry section: MLflow model registry name and aliases."""

from __future__ import annotations

from pydantic import Field

from sgdm_dist.config.base import Section


class RegistryConfig(Section):
    model_name: str = Field("sgdm", min_length=1)
    alias: str | None = Field(
        None, description="Alias to set on registration, e.g. candidate, champion."
    )
