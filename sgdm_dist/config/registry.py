"""Registry section: MLflow registered model name, aliases to set, what a registered model bundles."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from sgdm_dist.config.base import Section

# MLflow's own rule: letters, digits, '_' and '-'; "latest" and "v<digits>" are reserved.
_ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")
_RESERVED = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


def check_alias(alias: str) -> str:
    """``alias`` unchanged when MLflow accepts it as a registered-model alias; ValueError otherwise."""
    if not _ALIAS.match(alias) or _RESERVED.match(alias):
        raise ValueError(
            f"alias {alias!r} is not valid: use letters, digits, '_' or '-', and not 'latest' "
            "or 'v<number>' (MLflow reserves those)"
        )
    return alias


class RegistryConfig(Section):
    model_name: str = Field(
        "sgdm",
        min_length=1,
        pattern=r"^[^/@:]+$",
        description="Registered model name (models:/NAME@ALIAS); no '/', '@' or ':'.",
    )
    aliases: list[str] = Field(
        default_factory=list,
        description="Aliases to point at a newly registered version, e.g. [candidate].",
    )
    bundle_vae: bool = Field(
        True,
        description="Copy the VAE the shards were made with into the registered model (vae/), so "
        "a pulled model decodes images without the shards.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where models:/ references are downloaded when no folder is given; None → "
        "~/.cache/sgdm-dist/models.",
    )

    @field_validator("aliases")
    @classmethod
    def _valid_aliases(cls, value: list[str]) -> list[str]:
        return [check_alias(a) for a in value]
