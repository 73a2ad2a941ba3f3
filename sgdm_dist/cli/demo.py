"""``sgdm demo``: the whole product on the embedded default, one real command after another.

synthetic THINGS-like raw EEG → `sgdm prepare` → `launch/train.sh` (accelerate launch, 2 processes)
→ `sgdm evaluate` → `sgdm register --alias champion` → `sgdm pull models:/…@champion` →
`sgdm reconstruct --model models:/…@champion`. Each step is the same command a user would type, run
as a subprocess with its own progress output; the summary at the end says where everything is.

Evaluation and serving (register → pull → reconstruct) both start from the trained model and not from
each other, so they run side by side, one thread each: each step of the demo spends 10-15 s of its
time importing torch and diffusers on one core, and the two lanes together finish in about the time
of the longer one (docs/benchmarks.md, "Demo"). The serving lane's output goes to
``{output_dir}/logs/<step>.log`` and is shown, in step order, when evaluation is done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sgdm_dist.cli.common import OverridesArg, resolve
from sgdm_dist.config import Config

REPO = Path(__file__).resolve().parents[2]
# Every step runs the CLI with this interpreter, so the demo uses the environment it was started in.
SGDM = [sys.executable, "-m", "sgdm_dist.cli"]
# --quick: the same pipeline in a fraction of the time (CI, smoke tests); retrieval stays above chance
# only loosely at this length.
QUICK = [
    "train.align_steps=20",
    "train.diffusion_steps=6",
    "train.checkpoint_every=10",
    "train.eval_every=13",
    "train.recon_images=2",
    "train.recon_steps=2",
    "evaluate.steps=2",
    "evaluate.backbones=[alexnet]",
    "data.features.autoencoder_steps=20",
    "train.structure_refit.steps=10",
    "train.structure_refit.eval_every=5",
]


@dataclass
class Step:
    name: str
    what: str
    argv: list[str]
    env: dict[str, str] | None = None


def demo(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")] = Path("configs/demo.yaml"),
    overrides: OverridesArg = None,
    quick: Annotated[bool, typer.Option(help="Much shorter training and sampling (CI).")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="Training processes (accelerate launch).")] = 2,
    dry_run: Annotated[
        bool, typer.Option(help="Only validate the config and print the plan.")
    ] = False,
) -> None:
    """Run the whole pipeline on synthetic data with local MLflow — no GPU, network or cluster needed."""
    console = Console()
    all_overrides = [*(QUICK if quick else []), *(overrides or [])]
    cfg = resolve(config, all_overrides)
    steps = plan(cfg, config, all_overrides, nproc)
    table = Table(title="sgdm demo: the pipeline")
    for column in ("#", "step", "what it does"):
        table.add_column(column)
    for i, step in enumerate(steps, 1):
        table.add_row(str(i), step.name, step.what)
    console.print(table)
    before, evaluate, serving = lanes(steps)
    at = len(before)
    console.print(
        f"Steps {at + 2}-{len(steps)} run beside step {at + 1}, one thread each; their output is "
        f"shown when step {at + 1} is done."
    )
    if dry_run:
        console.print("dry run: nothing executed.")
        return

    out = cfg.experiment.output_dir
    for stale in ("checkpoints", "model", "evaluation", "pulled", "reconstructions", "logs"):
        shutil.rmtree(out / stale, ignore_errors=True)  # a demo always shows a fresh run
    started = time.perf_counter()
    for i, step in enumerate(before, 1):
        run_step(console, step, i, len(steps))
    lane = Lane(serving, out / "logs")
    lane.start()
    try:
        run_step(console, evaluate, at + 1, len(steps))
    except BaseException:  # a failed evaluate or Ctrl-C stops the lane, never leaves it running
        lane.stop()
        raise
    finally:
        lane.join()
    show_lane(console, lane, at + 2, len(steps))
    summarise(console, cfg, time.perf_counter() - started)


def lanes(steps: list[Step]) -> tuple[list[Step], Step, list[Step]]:
    """(the steps before evaluate, evaluate, the serving steps after it): the last two run side by
    side, so each gets one thread (2 cores, 2 lanes)."""
    at = [step.name for step in steps].index("evaluate")

    def one_thread(step: Step) -> Step:
        return replace(step, env={**(step.env or os.environ), "OMP_NUM_THREADS": "1"})

    return steps[:at], one_thread(steps[at]), [one_thread(step) for step in steps[at + 1 :]]


def run_step(console: Console, step: Step, i: int, n: int) -> None:
    """Run one step in the foreground with its own output; exit the demo when it fails."""
    console.rule(f"[bold]{i}/{n} {step.name}[/]: {step.what}")
    t0 = time.perf_counter()
    # In the caller's folder, as a user typing each command would: the config path and the
    # relative paths inside it mean there what they meant to `resolve` above.
    result = subprocess.run(step.argv, env=step.env, check=False)
    if result.returncode != 0:
        console.print(f"[red]step '{step.name}' failed with exit code {result.returncode}[/]")
        console.print("command: " + " ".join(step.argv))
        raise typer.Exit(1)
    console.print(f"[green]✓ {step.name}[/] in {time.perf_counter() - t0:.0f} s")


class Lane(threading.Thread):
    """Steps run one after another in a thread, each one's output to ``logs/<name>.log``; the
    first failure stops the lane. ``runs``: (step name, exit code, seconds) per step it ran."""

    def __init__(self, steps: list[Step], logs: Path) -> None:
        super().__init__(daemon=True)
        self.steps, self.logs = steps, logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs: list[tuple[str, int, float]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._lock = threading.Lock()  # no step starts after stop()

    def run(self) -> None:
        for step in self.steps:
            t0 = time.perf_counter()
            with open(self.logs / f"{step.name}.log", "w") as log:
                with self._lock:
                    if self._stopped:
                        return
                    self._proc = subprocess.Popen(step.argv, env=step.env, stdout=log, stderr=log)
                code = self._proc.wait()
            self.runs.append((step.name, code, time.perf_counter() - t0))
            if code != 0:
                return

    def stop(self) -> None:
        """Start no further step and terminate the running one."""
        with self._lock:
            self._stopped = True
            if self._proc is not None:
                self._proc.terminate()  # harmless on a step that has exited


def show_lane(console: Console, lane: Lane, first: int, n: int) -> None:
    """Print each finished lane step's log under its heading; exit the demo at a failed step."""
    ran = zip(lane.steps, lane.runs, strict=False)  # a failed step ends the lane early
    for i, (step, (name, code, seconds)) in enumerate(ran, first):
        log = lane.logs / f"{name}.log"
        console.rule(f"[bold]{i}/{n} {name}[/]: {step.what} (ran beside evaluate; log: {log})")
        sys.stdout.write(log.read_text(errors="replace"))
        sys.stdout.flush()
        if code != 0:
            console.print(f"[red]step '{name}' failed with exit code {code}[/]")
            console.print("command: " + " ".join(step.argv))
            raise typer.Exit(1)
        console.print(f"[green]✓ {name}[/] in {seconds:.0f} s")


def plan(cfg: Config, config: Path, overrides: list[str], nproc: int) -> list[Step]:
    """Every demo step in order, each the command a user would type."""
    common = [str(config), *overrides]
    return [*_training_steps(cfg, common, nproc), *_serving_steps(cfg, config)]


def _training_steps(cfg: Config, common: list[str], nproc: int) -> list[Step]:
    """Prepare, train, evaluate and register the model: the config's own pipeline."""
    out = cfg.experiment.output_dir
    return [
        Step(
            "prepare",
            "synthetic EEG → MNE preprocessing → CLIP/VAE features → shards",
            [*SGDM, "prepare", *common, "--synthetic"],
        ),
        Step(
            "train",
            f"accelerate launch, {nproc} processes: alignment, then diffusion; MLflow",
            [str(REPO / "launch" / "train.sh"), *common],
            _train_env(nproc),
        ),
        Step(
            "evaluate",
            "test retrieval + reconstruction metrics, HTML report",
            [
                *SGDM,
                "evaluate",
                *common,
                "--model",
                str(out / "model"),
                "--out",
                str(out / "evaluation"),
            ],
        ),
        Step(
            "register",
            "MLflow model registry, alias champion",
            [*SGDM, "register", *common, "--alias", "champion"],
        ),
    ]


def _train_env(nproc: int) -> dict[str, str]:
    """The environment launch/train.sh reads: process count, accelerate config, interpreter."""
    return {
        **os.environ,
        "NPROC_PER_NODE": str(nproc),
        "ACCELERATE_CONFIG": str(REPO / "configs" / "accelerate" / "ddp.yaml"),
        "PYTHON": sys.executable,
    }


def _serving_steps(cfg: Config, config: Path) -> list[Step]:
    """Pull the registered champion and reconstruct with it, as a consumer of the registry would."""
    out = cfg.experiment.output_dir
    model_uri = f"models:/{cfg.registry.model_name}@champion"
    tracking = ["--tracking-uri", tracking_uri(cfg)]
    return [
        Step(
            "pull",
            f"{model_uri} into a fresh folder, checksums verified",
            [
                *SGDM,
                "pull",
                model_uri,
                "--to",
                str(out / "pulled"),
                "--config",
                str(config),
                *tracking,
            ],
        ),
        Step(
            "reconstruct",
            "EEG of the test split → images with the pulled champion, PNG grid",
            [
                *SGDM,
                "reconstruct",
                "--model",
                model_uri,
                "--eeg",
                str(cfg.data.shard_dir),
                "--out",
                str(out / "reconstructions"),
                "--steps",
                str(cfg.evaluate.steps),
                *tracking,
            ],
        ),
    ]


def tracking_uri(cfg: Config) -> str:
    from sgdm_dist.utils.tracking import default_tracking_uri

    return default_tracking_uri(
        cfg.experiment.tracking_uri,
        cfg.experiment.output_dir,
        os.environ.get("MLFLOW_TRACKING_URI"),
    )


def summarise(console: Console, cfg: Config, seconds: float) -> None:
    out = cfg.experiment.output_dir.resolve()
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())["summary"]
    n = metrics["n_test_images"]
    table = Table(title=f"sgdm demo finished in {seconds / 60:.1f} min")
    table.add_column("what")
    # fold: a log is 80 columns wide, and an ellipsis would cut the paths users copy from here
    table.add_column("result", overflow="fold")
    table.add_row(
        f"test retrieval top-1, {n}-way ({metrics['retrieval_mode']})",
        f"{metrics[f'top1_{n}way']:.3f}  (chance {metrics[f'chance_top1_{n}way']:.3f})",
    )
    if f"top5_{n}way" in metrics:
        table.add_row(
            f"test retrieval top-5, {n}-way",
            f"{metrics[f'top5_{n}way']:.3f}  (chance {metrics[f'chance_top5_{n}way']:.3f})",
        )
    for metric in ("PixCorr", "SSIM", "Pixel(2-way)"):
        if metric in metrics:
            table.add_row(
                f"reconstruction {metric} (floor: shuffled EEG; ceiling: autoencoder)",
                f"{metrics[metric]:.3f}  (floor {metrics.get(metric + '.floor', float('nan')):.3f}, "
                f"ceiling {metrics.get(metric + '.ceiling', float('nan')):.3f})",
            )
    if "condition_sensitivity" in metrics:
        table.add_row(
            "condition sensitivity (pixel change: EEG swapped / seed changed)",
            f"{metrics['condition_sensitivity']:.2f}  (>= 1: the EEG decides the image)",
        )
    version = champion_version(cfg)
    table.add_row("registered model", f"{cfg.registry.model_name} version {version} @champion")
    table.add_row("HTML report", str(out / "evaluation" / "report.html"))
    table.add_row("reconstruction grid", str(out / "reconstructions" / "grid.png"))
    table.add_row("pulled model", str(out / "pulled"))
    table.add_row("MLflow store", tracking_uri(cfg))
    console.print(table)
    console.print(f"Open the MLflow UI: mlflow ui --backend-store-uri {tracking_uri(cfg)}")


def champion_version(cfg: Config) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(cfg))
    return client.get_model_version_by_alias(cfg.registry.model_name, "champion").version
