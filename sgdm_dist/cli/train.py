"""``sgdm train``: the Accelerate training loop."""

from __future__ import annotations

from typing import Annotated

import typer

from sgdm_dist.cli.common import ConfigArg, OverridesArg, not_implemented


def train(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        str | None, typer.Option(help="'auto' (latest complete checkpoint) or a checkpoint path.")
    ] = None,
) -> None:
    """Train the SGDM model with Accelerate (DDP, FSDP or DeepSpeed ZeRO-2/3); run under `accelerate launch`."""
    not_implemented("train", 5)
