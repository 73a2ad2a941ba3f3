"""The ``sgdm`` command line: one subcommand per stage of the pipeline."""

from __future__ import annotations

import sys

import typer

from sgdm_dist import __version__
from sgdm_dist.cli import (
    config_cmd,
    demo,
    evaluate,
    launch,
    prepare,
    registry,
    train,
    tune,
    verify,
)
from sgdm_dist.cli.common import EXIT_BAD_INPUT
from sgdm_dist.config import ConfigError
from sgdm_dist.utils.log import quiet_third_party, rank_from_env, setup_logging

app = typer.Typer(
    name="sgdm",
    help="Train, tune, evaluate and serve Structure-Guided Diffusion Models that reconstruct images from EEG.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(config_cmd.app, name="config")
for command in (
    prepare.prepare,
    verify.verify,
    train.train,
    tune.tune,
    evaluate.evaluate,
    evaluate.reconstruct,
    registry.register,
    registry.pull,
    launch.launch,
    demo.demo,
):
    app.command()(command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sgdm-dist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show third-party libraries' INFO lines."
    ),
) -> None:
    """Entry point options shared by all subcommands."""
    if verbose:
        quiet_third_party(verbose=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: logging first, then the command; config errors exit 2 with a message.

    Click's standalone mode handles usage errors and exit codes itself (raising SystemExit); only our
    own ConfigError needs translating into a one-line message instead of a traceback.
    """
    setup_logging(rank=rank_from_env())
    try:
        app(args=argv, prog_name="sgdm")
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(EXIT_BAD_INPUT)
