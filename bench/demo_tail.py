"""The demo's last four steps one after another against `sgdm demo`'s two lanes (evaluate beside
register → pull → reconstruct): wall time of each and their ratio, in the same run.

    python bench/demo_tail.py [CONFIG] [--model DIR] [--repeats N]

Needs a trained model (default: the one `make demo` leaves in {output_dir}/model) and its shards.
Works in a scratch folder with its own MLflow store, so the demo's store and outputs stay as they
were. "one after another" gives each step the machine's default threads, as the demo did before;
"side by side" is the demo's own code (sgdm_dist/cli/demo.py: one thread per lane).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sgdm_dist.cli.common import resolve
from sgdm_dist.cli.demo import Lane, Step, lanes, plan

REPO = Path(__file__).resolve().parents[1]


def tail_steps(config: Path, scratch: Path) -> tuple[list[Step], Step, list[Step]]:
    """The demo's last steps writing under ``scratch``: (evaluate, register, pull, reconstruct) as
    they ran one after another, and the demo's own lanes (evaluate, the serving steps)."""
    overrides = [f"experiment.output_dir={scratch}"]
    steps = plan(resolve(config, overrides), config, overrides, nproc=2)
    before, evaluate, serving = lanes(steps)
    return steps[len(before) :], evaluate, serving


def fresh(scratch: Path, model: Path) -> None:
    """An output folder holding only the trained model: no store, no results."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(model, scratch / "model")


def one_after_another(steps: list[Step], logs: Path) -> float:
    started = time.perf_counter()
    for step in steps:
        with open(logs / f"{step.name}.log", "w") as log:
            subprocess.run(step.argv, env=step.env, stdout=log, stderr=log, check=True)
    return time.perf_counter() - started


def side_by_side(evaluate: Step, serving: list[Step], logs: Path) -> float:
    started = time.perf_counter()
    lane = Lane(serving, logs / "lane")
    lane.start()
    with open(logs / "evaluate.log", "w") as log:
        subprocess.run(evaluate.argv, env=evaluate.env, stdout=log, stderr=log, check=True)
    lane.join()
    if len(lane.runs) != len(serving) or any(code for _, code, _ in lane.runs):
        raise SystemExit(f"a serving step failed: {lane.runs}; logs in {logs / 'lane'}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--model", type=Path, default=None, help="default: {output_dir}/model")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    model = args.model or resolve(args.config, []).experiment.output_dir / "model"
    if not (model / "model.safetensors").is_file():
        raise SystemExit(f"{model}: no trained model; run `make demo` first or pass --model")
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="sgdm-demo-tail-") as tmp:
        scratch, logs = Path(tmp) / "out", Path(tmp) / "logs"
        tail, evaluate, serving = tail_steps(args.config, scratch)
        runs = {
            "one after another": lambda: one_after_another(tail, logs),
            "side by side": lambda: side_by_side(evaluate, serving, logs),
        }
        for _ in range(args.repeats):
            for name, run in runs.items():
                fresh(scratch, model)
                shutil.rmtree(logs, ignore_errors=True)
                logs.mkdir()
                rows.append((name, run()))
                print(f"{name:>18}: {rows[-1][1]:6.1f} s", flush=True)
    mean = {n: sum(s for m, s in rows if m == n) / args.repeats for n, _ in rows}
    ratio = mean["side by side"] / mean["one after another"]
    print(f"demo tail: side by side / one after another = {ratio:.2f}")


if __name__ == "__main__":
    main()
