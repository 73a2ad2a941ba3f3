"""``sgdm config show|check``: print or validate the resolved configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdm_dist.cli.common import ConfigArg, OverridesArg, resolve

app = typer.Typer(help="Inspect and validate experiment configurations.", no_args_is_help=True)

OptionalConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="Experiment YAML, e.g. configs/tiny.yaml; omitted: the built-in defaults.",
        show_default=False,
    ),
]


@app.command("show")
def show(config: OptionalConfigArg = None, overrides: OverridesArg = None) -> None:
    """Print the fully resolved configuration (file + extends + overrides, paths made absolute)
    as YAML; without CONFIG, the built-in defaults (`sgdm config show > my.yaml` starts a config)."""
    if config is not None and "=" in config.name and not config.exists():
        overrides = [str(config), *(overrides or [])]  # `sgdm config show train.lr=3e-4`
        config = None
    typer.echo(resolve(config, overrides).to_yaml(), nl=False)


@app.command("check")
def check(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Validate a configuration; exit 0 and say so when it is usable."""
    cfg = resolve(config, overrides)
    typer.echo(f"{config}: valid ({len(cfg.flat())} settings)")
