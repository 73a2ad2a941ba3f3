"""Arguments and helpers shared by every ``sgdm`` subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdm_dist.config import Config, load_config

ConfigArg = Annotated[
    Path,
    typer.Argument(help="Experiment YAML, e.g. configs/tiny.yaml.", show_default=False),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides applied after the file, e.g. train.lr=3e-4 data.loader.batch_size=8.",
        show_default=False,
    ),
]

# Exit codes: 1 = the job failed, 2 = bad input/usage.
EXIT_BAD_INPUT = 2


def resolve(
    config: Path | None, overrides: list[str] | None, *, keep_relative: bool = False
) -> Config:
    """Load + validate (None: the built-in defaults); local paths become absolute against the
    current folder unless ``keep_relative`` (a config rendered for another machine, e.g. a pod).
    A ConfigError propagates to :func:`sgdm_dist.cli.main`, which prints it and exits 2."""
    return load_config(config, overrides or [], keep_relative=keep_relative)
