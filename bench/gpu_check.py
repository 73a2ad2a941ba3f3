"""The one-shot GPU check behind bench/gpu_check.sh (see there): orchestrator and per-run worker.

    python bench/gpu_check.py [--dry-run] [--out DIR]          # orchestrate (what the .sh runs)
    python bench/gpu_check.py worker --job JSON --result FILE  # one run (under accelerate launch)

Jobs: ``strategy`` (a config under an accelerate strategy, bf16, a few dozen optimiser steps through
sgdm's own engine: stages.build_engine, EMA on the device), ``unet`` (the SD-scale model,
forward+backward at the largest batch that fits; samples/s, peak memory, MFU), ``width`` (the widest
UNet, as multiples of Stable Diffusion's channel widths, one step fits under a strategy).
``--dry-run`` runs every kind of job once on the CPU at toy sizes, without a launcher, and lists the
GPU commands it would run: what CI checks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from step_inputs import eeg_shape, make_batches  # noqa: E402

STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
WIDTHS = (1.0, 1.5, 2.0, 2.5, 3.0)  # x Stable Diffusion's [320, 640, 1280, 1280]
SD_CHANNELS = (320, 640, 1280, 1280)
# Dense bf16 tensor-core peaks (vendor datasheets, no sparsity), FLOP/s; else measured.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def plan(dry: bool, steps: int) -> list[dict[str, Any]]:
    if dry:
        return [
            {"kind": "strategy", "config": "tiny", "strategy": "ddp", "steps": 2},
            {"kind": "unet", "config": "tiny", "batches": [1, 2], "steps": 1},
            {"kind": "width", "config": "tiny", "strategy": "ddp", "widths": [0.1, 0.2]},
        ]
    jobs: list[dict[str, Any]] = [
        {"kind": "strategy", "config": c, "strategy": s, "steps": steps}
        for c in ("tiny", "small")
        for s in STRATEGIES
    ]
    jobs.append({"kind": "unet", "config": "default", "batches": [8, 16, 32, 64, 128], "steps": 5})
    jobs += [
        {"kind": "width", "config": "default", "strategy": s, "widths": list(WIDTHS)}
        for s in ("ddp", "zero3")
    ]
    return jobs


# ---------------------------------------------------------------------------------------------
# worker: runs inside one process (under accelerate launch on the GPU)


def _config(name: str, extra: list[str], out: Path) -> Any:
    from sgdm_dist.config import load_config

    precision = "bf16" if torch.cuda.is_available() else "no"
    overrides = [f"train.mixed_precision={precision}", f"experiment.output_dir={out}", *extra]
    return load_config(REPO / "configs" / f"{name}.yaml", ["experiment.tracking=false", *overrides])


def _engine(cfg: Any) -> tuple[Any, Any, Any]:
    from sgdm_dist.models import build_model
    from sgdm_dist.training.distributed import LaunchRequest, make_accelerator
    from sgdm_dist.training.stages import build_engine

    accelerator = make_accelerator(cfg, LaunchRequest.from_env())
    c, t = eeg_shape(cfg)
    with torch.device(accelerator.device):  # initialising billions of weights on the host is slow
        sgdm = build_model(cfg.model, n_channels=c, n_times=t, n_subjects=2)
    return accelerator, build_engine(accelerator, cfg, sgdm, "full", 0), (c, t)


def _step(accelerator: Any, engine: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimiser step as the trainer takes it (inputs cast like sgdm_dist.training.loop does)."""
    from sgdm_dist.training.distributed import input_dtype, to_device

    batch = to_device(batch, accelerator.device, input_dtype(accelerator))
    loss = engine.model(batch, stage="diffusion")["loss"]
    accelerator.backward(loss)
    engine.optimizer.step()
    engine.scheduler.step()
    engine.optimizer.zero_grad(set_to_none=True)
    return loss


def _peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def run_strategy(job: dict[str, Any], out: Path) -> dict[str, Any]:
    from sgdm_dist.training.ema import EMA

    cfg = _config(job["config"], ["train.ema_decay=0.999"], out)
    accelerator, engine, _ = _engine(cfg)
    batch = cfg.data.loader.batch_size
    batches = make_batches(cfg, 4, batch, accelerator.device)
    ema = EMA(accelerator.unwrap_model(engine.model), 0.999, keep=accelerator.is_main_process)
    warm = min(3, job["steps"] - 1)
    for i in range(job["steps"]):
        if i == warm:
            _sync()
            start = time.perf_counter()
        loss = _step(accelerator, engine, batches[i % 4])
        ema.update(accelerator.unwrap_model(engine.model))
    _sync()
    seconds = time.perf_counter() - start
    gathered = ema.gather_state_dict()
    devices = sorted({str(t.device) for t in ema.shadow.values()})
    return {
        "distributed_type": str(accelerator.distributed_type),
        "samples_per_s": (job["steps"] - warm) * batch * accelerator.num_processes / seconds,
        "loss": float(loss.detach()),
        "loss_finite": math.isfinite(float(loss.detach())),
        "peak_gb": _peak_gb(),
        "ema_devices": devices,
        "ema_sharded": ema.sharded,
        "ema_gathered_tensors": len(gathered) - 1 if gathered else 0,
    }


def run_unet(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Largest batch that fits (ascending until OOM), then samples/s and MFU at it."""
    from sgdm_dist.models.profile import profile_model

    cfg = _config(job["config"], ["train.ema_decay=null"], out)
    accelerator, engine, (c, t) = _engine(cfg)
    prof = profile_model(cfg.model, n_channels=c, n_times=t, n_subjects=2)
    best: dict[str, Any] = {}
    for batch in job["batches"]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            batches = make_batches(cfg, 2, batch, accelerator.device)
            _step(accelerator, engine, batches[0])  # warm-up at this size
            _sync()
            start = time.perf_counter()
            for i in range(job["steps"]):
                _step(accelerator, engine, batches[i % 2])
            _sync()
            rate = job["steps"] * batch / (time.perf_counter() - start)
            best = {"batch": batch, "samples_per_s": rate, "peak_gb": _peak_gb()}
        except torch.cuda.OutOfMemoryError:
            engine.optimizer.zero_grad(set_to_none=True)
            break
        finally:
            batches = []
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    peak, source = bf16_peak()
    achieved = prof.total_flops * best.get("samples_per_s", 0.0)
    params = prof.params["total"]
    return {
        **best,
        "params_M": params / 1e6,
        "gflop_per_sample": prof.total_flops / 1e9,
        "mfu": achieved / peak,
        "peak_flops": peak,
        "peak_source": source,
    }


def run_width(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Ascending UNet widths at batch 1; the last that completes one step is the answer."""
    fits: list[float] = []
    for width in job["widths"]:
        channels = [max(32, round(c * width / 32) * 32) for c in SD_CHANNELS]
        extra = [
            f"model.unet.block_out_channels={json.dumps(channels)}",
            "train.ema_decay=null",
            "data.loader.batch_size=1",
        ]
        try:
            cfg = _config(job["config"], extra, out)
            accelerator, engine, _ = _engine(cfg)
            _step(accelerator, engine, make_batches(cfg, 1, 1, accelerator.device)[0])
            _sync()
            fits.append(width)
            accelerator.free_memory(engine.model, engine.optimizer)
            if job.get("progress"):  # what fitted so far survives a timeout on the next width
                Path(job["progress"]).write_text(json.dumps({"widths_fit": fits}))
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            engine = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return {"widths_fit": fits, "max_width": max(fits, default=0.0), "peak_gb": _peak_gb()}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bf16_peak() -> tuple[float, str]:
    """The GPU's dense bf16 peak from its datasheet when known, else a measured bf16 matmul."""
    if not torch.cuda.is_available():
        return _measured_matmul(torch.device("cpu"), torch.float32), "measured fp32 matmul (CPU)"
    name = torch.cuda.get_device_name()
    for key, flops in BF16_PEAK.items():
        if key in name:
            return flops, f"datasheet ({key})"
    return _measured_matmul(torch.device("cuda"), torch.bfloat16), "measured bf16 matmul"


def _measured_matmul(device: torch.device, dtype: torch.dtype, n: int = 4096) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    _sync()
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    _sync()
    return 2 * n**3 * 5 / (time.perf_counter() - start)


WORKERS = {"strategy": run_strategy, "unet": run_unet, "width": run_width}


def worker(job: dict[str, Any], result: Path) -> None:
    out = Path(tempfile.mkdtemp(prefix="sgdm-gpu-check-"))
    record = WORKERS[job["kind"]](job, out)
    if int(os.environ.get("RANK", "0")) == 0:
        result.write_text(json.dumps(record))


# ---------------------------------------------------------------------------------------------
# orchestrator


def command(job: dict[str, Any], result: Path, port: int) -> list[str]:
    """The GPU command line of one job: accelerate launch (1 process) for strategy and width jobs."""
    run = ["bench/gpu_check.py", "worker", "--job", json.dumps(job), "--result", str(result)]
    if job["kind"] == "unet":
        return [sys.executable, *run]
    config = REPO / "configs" / "accelerate" / f"{job['strategy']}.yaml"
    launch = ["-m", "accelerate.commands.launch", "--config_file", str(config)]
    single = ["--num_processes", "1", "--num_machines", "1", "--machine_rank", "0"]
    return [sys.executable, *launch, *single, "--main_process_port", str(port), *run]


def run_job(job: dict[str, Any], work: Path, index: int, dry: bool, timeout: float) -> dict:
    result = work / f"job-{index}.json"
    if job["kind"] == "width":
        job = {**job, "progress": str(work / f"job-{index}.progress.json")}
    cmd = command(job, result, 29600 + index)
    entry: dict[str, Any] = {"job": job, "command": " ".join(cmd[1:])}
    start = time.perf_counter()
    if dry:  # in this process, on the CPU, no launcher: the worker code paths at toy sizes
        worker(job, result)
        entry["status"] = "ok (dry run, CPU)"
    else:
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            entry["status"] = "ok" if proc.returncode == 0 and result.is_file() else "failed"
            if entry["status"] == "failed":
                entry["error"] = (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            entry["status"] = f"timeout ({timeout:.0f} s)"
    entry["seconds"] = round(time.perf_counter() - start, 1)
    progress = Path(job.get("progress", work / "none"))
    if result.is_file():
        entry["result"] = json.loads(result.read_text())
    elif progress.is_file():  # a width search cut short: what fitted before it
        entry["result"] = json.loads(progress.read_text())
    return entry


def summary(entry: dict[str, Any]) -> str:
    r = entry.get("result", {})
    if entry["job"]["kind"] == "strategy":
        return (
            f"{r.get('distributed_type', '?')}: {r.get('samples_per_s', 0):.1f} samples/s, "
            f"loss {r.get('loss', float('nan')):.4f}, peak {r.get('peak_gb', 0):.1f} GiB, "
            f"EMA on {','.join(r.get('ema_devices', []))}{' (sharded)' if r.get('ema_sharded') else ''}"
        )
    if entry["job"]["kind"] == "unet":
        return (
            f"{r.get('params_M', 0):.0f} M params, batch {r.get('batch', 0)}: "
            f"{r.get('samples_per_s', 0):.2f} samples/s, peak {r.get('peak_gb', 0):.1f} GiB, "
            f"MFU {r.get('mfu', 0):.1%} of {r.get('peak_flops', 0) / 1e12:.0f} TFLOP/s "
            f"({r.get('peak_source', '?')})"
        )
    return f"widths that fit (x SD): {r.get('widths_fit', [])}; widest {r.get('max_width', 0)}"


def markdown(entries: list[dict[str, Any]], device: str) -> str:
    rows = [f"GPU check on {device}\n", "| job | status | result | s |", "|---|---|---|---|"]
    for e in entries:
        j = e["job"]
        name = " ".join(str(j[k]) for k in ("kind", "config", "strategy") if k in j)
        rows.append(
            f"| {name} | {e['status']} | {summary(e) if 'result' in e else ''} | {e['seconds']} |"
        )
    return "\n".join(rows) + "\n"


def orchestrate(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    deadline = time.perf_counter() + args.budget
    entries = []
    for index, job in enumerate(plan(args.dry_run, args.steps)):
        left = deadline - time.perf_counter()
        if left < 20:
            entries.append({"job": job, "status": "skipped (time budget)", "seconds": 0})
            continue
        entries.append(run_job(job, args.out, index, args.dry_run, timeout=min(left, 180)))
        print(f"{entries[-1]['status']:<10} {json.dumps(job)}", flush=True)
    gpu_plan = [
        " ".join(command(j, args.out / "job.json", 29600)[1:]) for j in plan(False, args.steps)
    ]
    report = {"device": device, "dry_run": args.dry_run, "entries": entries, "gpu_plan": gpu_plan}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    table = markdown(entries, device)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    ok = all(e["status"].startswith("ok") for e in entries)
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="check", choices=["check", "worker"])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, no launcher")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per strategy run")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all jobs")
    parser.add_argument("--job", default=None, help="worker: the job as JSON")
    parser.add_argument("--result", type=Path, default=None, help="worker: result file")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(json.loads(args.job), args.result)
        return
    sys.exit(orchestrate(args))


if __name__ == "__main__":
    main()
