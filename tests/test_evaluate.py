"""`sgdm evaluate` and `sgdm reconstruct` end to end on a tiny model trained by the real `sgdm train`.

One short training run and one evaluation (real processes) are shared by the module; every test
checks a different part of what they wrote.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from sgdm_dist.cli import app
from sgdm_dist.config import load_config
from sgdm_dist.data.splits import split_image_embeddings
from sgdm_dist.metrics import retrieval_accuracy
from sgdm_dist.models import SGDM
from sgdm_dist.training.validation import predict_split

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
# Small enough for 2 CPU cores: 4 of the 10 test images reconstructed per subject, 3 DDIM steps.
EVAL = ["evaluate.steps=3", "evaluate.recon_max_images=4", "evaluate.report_max_images=4"]


def sgdm(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [str(Path(sys.executable).with_name("sgdm")), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def trained(tiny_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-step `sgdm train` run: the model folder train exports (no registry involved)."""
    out = tmp_path_factory.mktemp("eval-run")
    overrides = [*tiny_shards, f"experiment.output_dir={out}"]
    result = sgdm(
        "train",
        str(TINY),
        *overrides,
        "train.align_steps=1",
        "train.diffusion_steps=1",
        "train.warmup_steps=0",
        "train.eval_every=100",
        "train.checkpoint_every=100",
        "train.recon_images=0",
        "experiment.tracking=false",
        cwd=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "overrides": overrides, "model": out / "model"}


@pytest.fixture(scope="module")
def evaluated(trained: dict) -> dict:
    """`sgdm evaluate` on the test split, tracking to the default sqlite store."""
    out = trained["out"] / "evaluation"
    result = sgdm(
        "evaluate",
        str(TINY),
        *trained["overrides"],
        *EVAL,
        "--model",
        str(trained["model"]),
        "--out",
        str(out),
        cwd=trained["out"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    return {**trained, "eval_out": out, "result": result, "metrics": metrics}


def test_metrics_json_has_every_subject_mode_and_metric(evaluated: dict) -> None:
    m = evaluated["metrics"]
    assert set(m) == {
        "summary",
        "retrieval",
        "reconstruction",
        "reconstruction_baselines",
        "decoding",
        "protocol",
    }
    for mode, n_pred in (("repetitions_averaged", 10), ("single_trial", 80)):
        table = m["retrieval"][mode]
        assert list(table) == ["sub-01", "sub-02", "mean", "chance"]
        for subject in ("sub-01", "sub-02"):
            row = table[subject]
            # 10 test images × 8 repetitions per subject in the tiny set; sizes above 10 clip to 10.
            assert (row["n_predictions"], row["n_candidates"]) == (n_pred, 10)
            assert set(row) == {
                "n_predictions",
                "n_candidates",
                "top1_2way",
                "top1_4way",
                "top1_10way",
                "top5_10way",
            }
            assert all(0.0 <= row[k] <= 1.0 for k in row if k.startswith("top"))
        mean = (table["sub-01"]["top1_4way"] + table["sub-02"]["top1_4way"]) / 2
        assert table["mean"]["top1_4way"] == pytest.approx(mean)
        assert table["chance"] == {
            "top1_2way": 0.5,
            "top1_4way": 0.25,
            "top1_10way": 0.1,
            "top5_10way": 0.5,
        }
    recon = m["reconstruction"]
    assert list(recon) == ["sub-01", "sub-02", "mean"]
    baselines = m["reconstruction_baselines"]
    assert list(baselines) == ["floor", "ceiling", "condition_sensitivity"]
    for name, row in [*recon.items(), *baselines["floor"].items(), *baselines["ceiling"].items()]:
        assert row["n_images"] == (8 if name == "mean" else 4)  # "mean" pools both subjects
        for metric in ("PixCorr", "SSIM", "Pixel(2-way)", "AlexNet(2)"):
            assert row[f"{metric}.ci_low"] <= row[metric] <= row[f"{metric}.ci_high"]
    sens = baselines["condition_sensitivity"]["mean"]
    assert sens["condition_sensitivity"] == pytest.approx(
        sens["pixel_change_eeg_swapped"] / sens["pixel_change_seed_changed"]
    )
    assert m["summary"]["condition_sensitivity"] == sens["condition_sensitivity"]
    assert m["summary"]["PixCorr.ceiling"] == baselines["ceiling"]["mean"]["PixCorr"]
    for row in recon.values():
        # tiny.yaml's backbones: AlexNet and the tiny CLIP, both without weights here → flagged.
        assert {"PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "CLIP"} <= set(row)
        assert row["CLIP.random_init"] == 1.0 and row["AlexNet(2).random_init"] == 1.0
        assert -1.0 <= row["PixCorr"] <= 1.0 and 0.0 <= row["AlexNet(5)"] <= 1.0
    summary = m["summary"]
    assert summary["retrieval_mode"].startswith("repetitions averaged")
    assert summary["top1_10way"] == m["retrieval"]["repetitions_averaged"]["mean"]["top1_10way"]
    assert summary["chance_top5_10way"] == 0.5
    assert summary["SSIM"] == recon["mean"]["SSIM"]
    protocol = m["protocol"]
    assert protocol["split"] == "test" and protocol["subjects"] == [1, 2]
    assert protocol["reconstruction_images"] == 4
    assert protocol["reconstruction_all_test_images"] is False
    assert (protocol["steps"], protocol["scheduler"], protocol["seed"]) == (3, "ddim", 0)


def test_terminal_table_and_image_files(evaluated: dict) -> None:
    stdout = evaluated["result"].stdout
    assert "Retrieval on the test split (10 images" in stdout
    assert "Reconstruction per subject" in stdout and "random-init backbone" in stdout
    assert "floor" in stdout and "ceiling" in stdout and "Pixel(2-way)" in stdout
    assert "condition sensitivity" in stdout
    assert "sub-02" in stdout and "chance" in stdout
    recon_dir = evaluated["eval_out"] / "reconstructions"
    names = sorted(str(p.relative_to(recon_dir)) for p in recon_dir.rglob("*.png"))
    assert names == [f"sub-0{s}/0000{i}.png" for s in (1, 2) for i in range(4)]
    with Image.open(recon_dir / "sub-01" / "00000.png") as im:
        assert im.size == (64, 64)  # the tiny VAE decodes 8×8 latents to 64 px
    # stimulus | sub-01 | sub-02 for 4 images, 2 groups side by side, 128 px cells + label bands.
    with Image.open(evaluated["eval_out"] / "reconstructions.png") as im:
        assert im.size == (2 + 6 * 130, 2 + 2 * (128 + 14 + 2))


class _ReportParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.captions: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: dict[str, list[list[str]]] = defaultdict(list)
        self._in: str | None = None
        self._table: str | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("link", "script") or (tag == "a" and "href" in attrs):
            self.links.append(tag)
        if tag == "tr":
            self._row = []
        self._in = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None and self._table is not None:
            self.rows[self._table].append(self._row)
            self._row = None
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "caption":
            self.captions.append(data)
            self._table = data
        elif self._in in ("td", "th") and self._row is not None:
            self._row.append(data)


def test_report_has_every_table_and_image(evaluated: dict) -> None:
    page = (evaluated["eval_out"] / "report.html").read_text()
    parser = _ReportParser()
    parser.feed(page)
    assert parser.captions == [
        "Summary",
        "Retrieval, repetitions averaged, per subject",
        "Retrieval, single trials, per subject",
        "Reconstruction: model vs floor (shuffled EEG) and ceiling (autoencoder round trip); "
        "all images, mean [95% bootstrap CI]",
        "Reconstruction, per subject",
        "Floor: reconstructions from shuffled EEG, per subject",
        "Ceiling: autoencoder round trip of the stimuli, per subject",
        "Condition sensitivity (pixel change: EEG swapped / seed changed)",
        "Protocol",
    ]
    assert not parser.links  # self-contained: no external CSS, scripts or links
    for caption in parser.captions[1:3]:
        assert [r[0] for r in parser.rows[caption][1:]] == ["sub-01", "sub-02", "mean", "chance"]
    assert "Random-init backbones" in page
    assert "CLIP ↑ (random init)" in page
    # The stimulus | reconstructions grid (columns named by subject), the retrieval similarity plot
    # and the retrieval examples (8 trials: seen image + top-5), as inline PNGs.
    assert len(parser.images) == 3
    sizes = []
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as png:
            png.load()
            sizes.append(png.size)
    # Report grid: 4 stimuli, each with 2 subjects' reconstructions: 2 groups of 3 cells per row.
    assert sizes[0] == (2 + 6 * 130, 2 + 2 * (128 + 14 + 2))
    assert sizes[1] == (640, 520)
    assert sizes[2] == (2 + 6 * 98, 2 + 8 * (96 + 14 + 2))


def test_evaluation_is_tracked_in_mlflow(evaluated: dict) -> None:
    client = MlflowClient(f"sqlite:///{evaluated['out'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sgdm-tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    m = evaluated["metrics"]
    assert run.data.tags["sgdm.stage"] == "evaluate"
    assert run.data.tags["evaluation.split"] == "test"
    assert run.data.tags["data.manifest_sha256"] == m["protocol"]["data.manifest_sha256"]
    assert run.data.metrics["test/summary/top1_10way"] == pytest.approx(m["summary"]["top1_10way"])
    got = run.data.metrics["test/reconstruction/sub-02/AlexNet_2"]
    assert got == pytest.approx(m["reconstruction"]["sub-02"]["AlexNet(2)"])
    assert run.data.params["evaluate.steps"] == "3"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {
        "evaluation/metrics.json",
        "evaluation/report.html",
        "evaluation/reconstructions.png",
    }


def test_retrieval_matches_an_independent_computation(evaluated: dict) -> None:
    """Recompute both retrieval modes from the training code's own test-split predictions."""
    cfg = load_config(TINY, [*evaluated["overrides"], *EVAL])
    model = SGDM.from_pretrained(evaluated["model"])
    predicted = predict_split(cfg, model, "test", torch.device("cpu"))
    image_index, targets = split_image_embeddings(cfg.data.shard_dir, "test")
    position = {int(i): n for n, i in enumerate(image_index)}
    table = evaluated["metrics"]["retrieval"]
    for s in (1, 2):
        rows = predicted["subject"] == s
        truth = torch.tensor([position[int(i)] for i in predicted["image_index"][rows]])
        single = retrieval_accuracy(
            predicted["pred"][rows], targets, truth, n_way=cfg.evaluate.n_way, n_trials=20
        )
        for key in ("top1_2way", "top1_4way", "top1_10way", "top5_10way"):
            assert table["single_trial"][f"sub-0{s}"][key] == pytest.approx(single[key])
        # Repetition average of the EEG itself (NICE/ATM), then one prediction per image.
        eeg = predicted["eeg"][rows].double()
        index = predicted["image_index"][rows]
        images = sorted(set(index.tolist()))
        mean_eeg = torch.stack([eeg[index == i].mean(0) for i in images]).float()
        pred = model.predict_clip(mean_eeg, torch.full((len(images),), s))
        averaged = retrieval_accuracy(
            pred,
            targets,
            torch.tensor([position[i] for i in images]),
            n_way=cfg.evaluate.n_way,
            n_trials=20,
        )
        for key in ("top1_2way", "top1_4way", "top1_10way", "top5_10way"):
            assert table["repetitions_averaged"][f"sub-0{s}"][key] == pytest.approx(
                averaged[key], abs=1e-6
            )


def test_reconstruct_cli_reproduces_the_evaluation_images(evaluated: dict) -> None:
    """Same seed, steps, guidance and batch size as the evaluation → byte-identical PNGs."""
    out = evaluated["out"] / "reconstruct"
    shard_dir = next(o.split("=", 1)[1] for o in evaluated["overrides"] if "shard_dir" in o)
    result = CliRunner().invoke(
        app,
        [
            "reconstruct",
            "--model",
            str(evaluated["model"]),
            "--eeg",
            shard_dir,
            "--out",
            str(out),
            "--steps",
            "3",
            "--seed",
            "0",
            "--batch-size",
            "8",
            "--limit",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output[-3000:]
    assert "8 images" in result.output
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == ["grid.png"] + [f"sub-0{s}/0000{i}.png" for s in (1, 2) for i in range(4)]
    for name in pngs[1:]:
        ours = (out / name).read_bytes()
        assert ours == (evaluated["eval_out"] / "reconstructions" / name).read_bytes(), name
    with Image.open(out / "grid.png") as im:
        assert im.size == (2 + 6 * 130, 2 + 2 * (128 + 14 + 2))
    index = json.loads((out / "reconstructions.json").read_text())
    assert index["sampling"] == {
        "steps": 3,
        "guidance_scale": 3.0,
        "scheduler": "ddim",
        "seed": 0,
        "batch_size": 8,
        "strength": None,  # the model's own model.structure_strength
    }
    assert index["vae"].endswith("(EEG shards)")
    assert [i["file"] for i in index["items"]] == pngs[1:]
    assert {i["n_reps"] for i in index["items"]} == {8}


def test_evaluate_logs_into_the_active_run(trained: dict, tmp_path: Path) -> None:
    from sgdm_dist.evaluation.evaluate import evaluate

    overrides = [f"experiment.output_dir={tmp_path / 'exp'}", "evaluate.reconstruct=false"]
    cfg = load_config(TINY, [*trained["overrides"], *overrides])
    uri = f"sqlite:///{tmp_path / 'active.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run() as run:
            result = evaluate(cfg, trained["model"], out_dir=tmp_path / "eval", progress=False)
    finally:
        mlflow.set_tracking_uri(previous)
    assert result.run_id == run.info.run_id
    assert result.metrics["reconstruction"] == {} and result.grid_path is None
    logged = MlflowClient(uri).get_run(run.info.run_id).data
    key = "test/retrieval/single_trial/sub-01/top1_4way"
    assert logged.metrics[key] == pytest.approx(
        result.metrics["retrieval"]["single_trial"]["sub-01"]["top1_4way"]
    )
    assert logged.tags["evaluation.reconstruction"].startswith("skipped")
    assert not (tmp_path / "exp" / "mlflow.db").exists()  # no second run in the default store
    parser = _ReportParser()
    parser.feed(result.report_path.read_text())
    assert "Reconstruction, per subject" not in parser.captions
    # The similarity plot and the retrieval examples (they need no reconstructions).
    assert len(parser.images) == 2


def test_evaluate_refuses_a_missing_model(trained: dict) -> None:
    result = CliRunner().invoke(
        app,
        ["evaluate", str(TINY), *trained["overrides"], "--model", str(trained["out"] / "nope")],
    )
    assert result.exit_code == 2
    assert "nope: no such folder" in result.output
