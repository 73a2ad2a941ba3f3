"""``sgdm config show|check``: print or validate the resolved configuration."""

from __future__ import annotations

import typer

from sgdm_dist.cli.common import ConfigArg, OverridesArg, resolve

app = typer.Typer(help="Inspect and validate experiment configurations.", no_args_is_help=True)


@app.command("show")
def show(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Print the fully resolved configuration (file + extends + overrides) as YAML."""
    typer.echo(resolve(config, overrides).to_yaml(), nl=False)


@app.command("check")
def check(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Validate a configuration; exit 0 and say so when it is usable."""
    cfg = resolve(config, overrides)
    typer.echo(f"{config}: valid ({len(cfg.flat())} settings)")
