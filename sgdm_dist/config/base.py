"""The base class every config section derives from: typed, strict, immutable after validation."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)
