"""Decoding baselines and scoring (#13): the published encoders train, ridge decodes, retrieval is
scored in the space the model was trained in, and collapse is visible."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from sgdm_dist.baselines.ridge import RidgeDecoder
from sgdm_dist.baselines.scoring import mean_pairwise_cosine, retrieval, score_decoder
from sgdm_dist.config import ConfigError, load_config
from sgdm_dist.config.model import EncoderConfig
from sgdm_dist.models import build_model
from sgdm_dist.models.encoders.augment import augment
from sgdm_dist.training.selection import resolve_epochs

KINDS = ["nice", "atms", "eegnet", "linear"]
BENCH = Path(__file__).resolve().parents[1] / "bench" / "decoding.py"


@pytest.mark.parametrize("shape", [(17, 100), (63, 250)])
@pytest.mark.parametrize("kind", KINDS)
def test_published_encoder_trains_one_step(kind: str, shape: tuple[int, int]) -> None:
    """Each encoder kind, inside the SGDM and its alignment loss, takes one optimiser step."""
    cfg = load_config("configs/tiny.yaml", [f"model.encoder.kind={kind}"])
    torch.manual_seed(0)
    c, t = shape
    model = build_model(cfg.model, n_channels=c, n_times=t, n_subjects=2)
    batch = {
        "eeg": torch.randn(6, c, t),
        "subject": torch.tensor([1, 2, 1, 2, 0, 1]),
        "clip": torch.nn.functional.normalize(torch.randn(6, cfg.model.clip_dim), dim=1),
        "image_index": torch.arange(6),
        "latent": torch.randn(
            6, cfg.model.unet.latent_channels, *(2 * [cfg.model.unet.latent_size])
        ),
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    out = model(batch, stage="align")
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    opt.step()
    changed = [n for n, p in model.encoder.named_parameters() if not torch.equal(p, before[n])]
    assert changed, f"{kind}: no encoder parameter moved"
    model.eval()
    z = model.predict_clip(batch["eeg"], batch["subject"])
    assert z.shape == (6, cfg.model.clip_dim)


@pytest.mark.parametrize("kind", ["atms", "linear"])
def test_subject_conditioning_none_removes_the_subject_input(kind: str) -> None:
    """`subject_conditioning: none` is honoured by every encoder with a subject input (ATM-S's
    subject token, the linear bias): no subject weights, the same output for any subject id."""
    cfg = load_config("configs/tiny.yaml", [f"model.encoder.kind={kind}"])
    none = cfg.model.model_copy(
        update={"encoder": cfg.model.encoder.model_copy(update={"subject_conditioning": "none"})}
    )
    torch.manual_seed(0)
    with_subject = build_model(cfg.model, n_channels=17, n_times=100, n_subjects=2).eval()
    without = build_model(none, n_channels=17, n_times=100, n_subjects=2).eval()
    subject_weights = {n for n, _ in with_subject.encoder.named_parameters()} - {
        n for n, _ in without.encoder.named_parameters()
    }
    assert subject_weights and all("subject" in n for n in subject_weights)
    with torch.no_grad():  # the linear bias starts at zero: give every subject its own
        for name, p in with_subject.encoder.named_parameters():
            if name in subject_weights:
                p.normal_()
    eeg = torch.randn(3, 17, 100)
    one, two = torch.ones(3, dtype=torch.long), torch.full((3,), 2)
    assert torch.equal(without.predict_clip(eeg, one), without.predict_clip(eeg, two))
    assert not torch.allclose(
        with_subject.predict_clip(eeg, one), with_subject.predict_clip(eeg, two)
    )


@pytest.mark.parametrize("kind", ["nice", "atms", "eegnet", "linear"])
def test_a_subject_layer_is_refused_where_the_encoder_has_none(kind: str) -> None:
    overrides = [f"model.encoder.kind={kind}", "model.encoder.subject_conditioning=layer"]
    with pytest.raises(ConfigError, match=rf"subject_conditioning.*axial.*'{kind}'"):
        load_config("configs/tiny.yaml", overrides)


@pytest.mark.parametrize("n_times", [20, 100, 250])
def test_fused_temporal_conv_is_conv_then_average_pool(n_times: int) -> None:
    """NICE/ATM-S's temporal convolution + average pooling run as one strided convolution: same
    output and same parameter gradients as the two layers of the papers, at each scaled size."""
    from sgdm_dist.models.encoders.shallow import ConvPool, temporal_spatial_conv

    fused = temporal_spatial_conv(5, n_times, 0.5)[0]
    assert isinstance(fused, ConvPool)
    torch.manual_seed(0)
    fused.reset_parameters()
    conv = torch.nn.Conv2d(1, fused.out_channels, fused.kernel_size)
    conv.load_state_dict(fused.state_dict())
    pool = torch.nn.AvgPool2d((1, fused.pool), (1, fused.pool_stride))
    x = torch.randn(3, 1, 5, n_times)
    target = torch.randn_like(pool(conv(x)))
    out_fused, out_ref = fused(x), pool(conv(x))
    torch.testing.assert_close(out_fused, out_ref, rtol=1e-5, atol=1e-6)
    (out_fused * target).sum().backward()
    (out_ref * target).sum().backward()
    torch.testing.assert_close(fused.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-5)


def _decodable(n_img: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EEG [N, 8, 20] = a fixed linear map of the image's CLIP vector + noise; index [N]; clip [M, D]."""
    rng = np.random.default_rng(seed)
    clip = rng.standard_normal((n_img, 16)) + 3.0  # a shared mean, like CLIP
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)
    index = np.repeat(np.arange(n_img), reps)
    mixing = np.random.default_rng(0).standard_normal((16, 8 * 20))
    eeg = (clip - clip.mean(0))[index] @ mixing * 5 + rng.standard_normal((len(index), 160))
    return eeg.reshape(-1, 8, 20).astype(np.float32), index, clip.astype(np.float32)


def test_ridge_beats_chance_on_a_decodable_set() -> None:
    eeg, index, clip = _decodable(120, 2, seed=1)
    ridge = RidgeDecoder().fit(eeg, clip[index])
    test_eeg, test_index, test_clip = _decodable(40, 3, seed=2)
    scores = score_decoder(
        ridge.predict(test_eeg), test_index, np.arange(40), ridge.center(test_clip)
    )
    assert scores["single"]["top1"] > 5 * scores["single"]["chance_top1"]
    assert scores["averaged"]["top1"] >= scores["single"]["top1"]


def test_ridge_on_noise_stays_near_chance() -> None:
    eeg, index, clip = _decodable(120, 2, seed=1)
    rng = np.random.default_rng(3)
    ridge = RidgeDecoder().fit(rng.standard_normal(eeg.shape).astype(np.float32), clip[index])
    test_eeg, test_index, test_clip = _decodable(40, 3, seed=2)
    noise = rng.standard_normal(test_eeg.shape).astype(np.float32)
    single = score_decoder(ridge.predict(noise), test_index, np.arange(40), test_clip)["single"]
    assert single["top1"] < 4 * single["chance_top1"]


def test_scoring_reports_collapse_and_hubs() -> None:
    rng = np.random.default_rng(0)
    targets = rng.standard_normal((10, 8))
    perfect = retrieval(targets, np.arange(10), targets)
    assert perfect["top1"] == 1.0 and perfect["distinct_top1"] == 10
    assert abs(perfect["pairwise_cos"]) < 0.5
    collapsed = np.tile(targets[3], (10, 1)) + 1e-6 * rng.standard_normal((10, 8))
    hub = retrieval(collapsed, np.arange(10), targets)
    assert hub["distinct_top1"] == 1 and hub["top1"] == pytest.approx(0.1)
    assert mean_pairwise_cosine(collapsed) == pytest.approx(1.0, abs=1e-6)
    assert hub["top1_se"] == pytest.approx((0.1 * 0.9 / 10) ** 0.5)


def test_retrieval_query_ranks_raw_targets_as_the_centred_space_does() -> None:
    """to_clip's query z ranks raw CLIP t by z·t = z·(t − mean) + const: the head's own space."""
    cfg = load_config("configs/tiny.yaml", [])
    model = build_model(cfg.model, n_channels=17, n_times=100, n_subjects=2)
    head = model.semantic
    clip = torch.nn.functional.normalize(torch.randn(64, cfg.model.clip_dim) + 2.0, dim=1)
    head.observe(clip)
    z = torch.nn.functional.normalize(torch.randn(5, cfg.model.clip_dim), dim=1)
    raw = head.to_clip(z) @ clip.T
    centred = z @ (clip - head.target_mean).T
    assert torch.equal(raw.argsort(dim=1), centred.argsort(dim=1))


def test_augment_changes_training_input_only() -> None:
    cfg = EncoderConfig(augment_shift=3, augment_channel_drop=0.2, augment_noise=0.1)
    x = torch.randn(4, 17, 100)
    torch.manual_seed(0)
    y = augment(x, cfg)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(augment(x, EncoderConfig()), x)
    model_cfg = load_config("configs/tiny.yaml", ["model.encoder.kind=nice"]).model
    model_cfg = model_cfg.model_copy(update={"encoder": cfg.model_copy(update={"kind": "nice"})})
    model = build_model(model_cfg, n_channels=17, n_times=100, n_subjects=2).eval()
    s = torch.ones(4, dtype=torch.long)
    assert torch.equal(model.encoder(x, s).z, model.encoder(x, s).z)  # eval: deterministic


def test_align_epochs_become_steps() -> None:
    cfg = load_config("configs/tiny.yaml", ["train.align_epochs=2.5", "data.loader.batch_size=8"])
    split = SimpleNamespace(per_subject={1: 40, 2: 40})
    manifest = SimpleNamespace(splits={"train": split})
    assert resolve_epochs(cfg, manifest, world_size=2).train.align_steps == 13  # 2.5·80/16
    one = cfg.model_copy(update={"train": cfg.train.model_copy(update={"subjects": [1]})})
    assert resolve_epochs(one, manifest, world_size=1).train.align_steps == 13  # 2.5·40/8
    plain = load_config("configs/tiny.yaml", [])
    assert resolve_epochs(plain, manifest, 1) is plain
    # The validation cadence too, so patience (in validations) is a number of epochs at any size.
    cadence = load_config(
        "configs/tiny.yaml", ["train.eval_every_epochs=2", "data.loader.batch_size=8"]
    )
    resolved = resolve_epochs(cadence, manifest, world_size=1).train
    assert resolved.eval_every == 20 and resolved.align_steps == cadence.train.align_steps  # 2·80/8
    big = SimpleNamespace(splits={"train": SimpleNamespace(per_subject={1: 400, 2: 400})})
    assert resolve_epochs(cadence, big, world_size=1).train.eval_every == 200


def _bench(*args: str, work: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(BENCH), "--dry-run", "--work", str(work), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_bench_runs_a_recipe_variant_as_one_more_method(tmp_path: Path) -> None:
    """`--method NAME OVERRIDE...` adds a method, `--train-seeds 2` a second training seed of each
    (not of ridge), `--align-unseen` marks the LOSO folds it aligns; the dry run lists every job and
    prepares nothing."""
    result = _bench(
        *("--quick", "--families", "latency", "--methods", "ridge", "--train-seeds", "2"),
        *("--method", "shift1", "model.encoder.augment_shift=1", "--align-unseen"),
        work=tmp_path / "work",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [r[:3] for r in rows] == [
        ["latency-small", "ridge", "intra"],
        ["latency-small", "ridge", "loso-3+al"],
        ["latency-small", "shift1", "intra"],
        ["latency-small", "shift1", "loso-3+al"],
        ["latency-small", "shift1-s1", "intra"],
        ["latency-small", "shift1-s1", "loso-3+al"],
    ]
    assert rows[2][3:] == ["model.encoder.augment_shift=1"]
    assert rows[5][3:] == ["model.encoder.augment_shift=1", "experiment.seed=1"]
    assert not (tmp_path / "work").exists()


def test_bench_training_seeds_never_repeat_the_datasets_seed(bench: Any) -> None:
    """The method itself trains at the datasets' seed (``experiment.seed`` of the dataset), so with
    ``--seed 1`` a second training seed must be 2, not 1 again (a duplicate run, a false mean)."""
    assert bench.with_seeds("default", [], 3, data_seed=1) == [
        ("default", ()),
        ("default-s1", ("experiment.seed=2",)),
        ("default-s2", ("experiment.seed=3",)),
    ]
    assert bench.with_seeds("ridge", [], 3, data_seed=1) == [("ridge", ())]


def test_bench_summary_compares_the_mean_over_training_seeds() -> None:
    """One lucky seed must not carry the headline: the summary divides seed means."""
    from sgdm_dist.baselines.table import summary

    def row(dataset: str, method: str, base: str, setting: str, top1: float) -> dict:
        return {"dataset": dataset, "method": method, "base": base, "setting": setting,
                "single_top1": top1, "single_chance_top1": 0.02}  # fmt: skip

    rows = [
        row("a", "ridge", "ridge", "intra", 0.04),
        row("a", "default", "default", "intra", 0.08),  # 2.0x alone
        row("a", "default-s1", "default", "intra", 0.04),  # mean 0.06: 1.5x
        row("b", "ridge", "ridge", "intra", 0.05),
        row("b", "default", "default", "intra", 0.06),
        row("b", "default-s1", "default", "intra", 0.07),  # mean 0.065: 1.3x, the minimum
        row("b", "default", "default", "loso-3", 0.05),
        row("b", "default-s1", "default", "loso-3", 0.03),  # mean 0.04: 2.0x chance
        row("b", "atms", "atms", "intra", 0.50),  # other methods do not enter
    ]
    assert summary(rows) == [
        "decoding: default = the mean of 2 training seeds",
        "decoding: default LOSO top-1 / chance min=2.000",
        "decoding: default/ridge top-1 ratio min=1.300",
    ]
    assert summary(rows[:3])[-1] == "decoding: default/ridge top-1 ratio min=1.500"
    assert summary([r for r in rows if r["method"] != "default-s1"]) == [
        "decoding: default LOSO top-1 / chance min=2.500",
        "decoding: default/ridge top-1 ratio min=1.200",
    ]
    aligned = [{**r, "setting": r["setting"].replace("loso-3", "loso-3+al")} for r in rows]
    assert summary(aligned)[1:3] == [
        "decoding: LOSO subjects latency-aligned to the training subjects (+al)",
        "decoding: default LOSO top-1 / chance min=2.000",
    ]


def test_bench_names_the_known_methods_for_an_unknown_one(tmp_path: Path) -> None:
    result = _bench("--methods", "ridge", "nope", work=tmp_path / "work")
    assert result.returncode != 0
    assert "unknown method(s) ['nope']" in result.stderr and "'atms'" in result.stderr


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    """bench/decoding.py imported as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location("bench_decoding", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    monkeypatch.setattr(os, "environ", dict(os.environ))  # its thread defaults stay in this test
    spec.loader.exec_module(module)
    return module


def test_bench_refuses_a_cached_model_trained_with_another_recipe(
    tmp_path: Path, bench: Any
) -> None:
    """A method name reused with other overrides, or after the recipe file changed, must not
    silently score the old model; the same recipe in a renamed folder is reused."""
    ds = bench.make_dataset("additive", "mini", tmp_path, seed=0, prepare=False)
    run = ds.root / "runs" / "shift1"
    (run / "model").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"without recipe.json"):  # an older bench's cache
        bench.train_model(ds, ["model.encoder.augment_shift=1"], "shift1", None)

    cfg = bench.run_config(ds, ["model.encoder.augment_shift=3"], "shift1", None)
    recipe = bench.recipe_record(cfg)
    (run / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(SystemExit, match=r"augment_shift 3 → 1.*asked for.*augment_shift=1"):
        bench.train_model(ds, ["model.encoder.augment_shift=1"], "shift1", None)

    # The recipe file itself changed (here: a value the recipe sets, as an edit would change it).
    (run / "recipe.json").write_text(json.dumps({**recipe, "train.align_epochs": 7}))
    with pytest.raises(SystemExit, match=r"train.align_epochs 7 → 30"):
        bench.train_model(ds, ["model.encoder.augment_shift=3"], "shift1", None)

    (run / "recipe.json").write_text(json.dumps(recipe))
    build_model(cfg.model, n_channels=4, n_times=20, n_subjects=3).save_pretrained(run / "model")
    # The right recipe under its right name, in a renamed folder: reused, not retrained.
    run.rename(run.with_name("shift3"))
    cached = bench.train_model(ds, ["model.encoder.augment_shift=3"], "shift3", None)
    assert (cached.n_channels, cached.n_times) == (4, 20)
    # A record from before a key existed: the key reads as its default, the behaviour it replaced.
    record = run.with_name("shift3") / "recipe.json"
    record.write_text(
        json.dumps({k: v for k, v in recipe.items() if k != "evaluate.align_unseen_s"})
    )
    older = bench.train_model(ds, ["model.encoder.augment_shift=3"], "shift3", None)
    assert (older.n_channels, older.n_times) == (4, 20)  # the cached model, not a retrained one
    # ... and a recipe that sets it to something else is not that model's.
    record.write_text(
        json.dumps({k: v for k, v in recipe.items() if k != "train.eval_every_epochs"})
    )
    with pytest.raises(SystemExit, match=r"train.eval_every_epochs None → 2"):
        bench.train_model(ds, ["model.encoder.augment_shift=3"], "shift3", None)


def test_evaluate_decoding_checks_report_ridge_and_collapse(tiny_shards: list[str]) -> None:
    """What `sgdm evaluate` adds under metrics['decoding']: model and ridge on the same shards, the
    ratio, and the collapse guard (an untrained model's predictions, whatever their value)."""
    from sgdm_dist.baselines.checks import decoding_checks, summary_line
    from sgdm_dist.data.manifest import read_manifest

    cfg = load_config("configs/tiny.yaml", tiny_shards)
    m = read_manifest(cfg.data.shard_dir)
    torch.manual_seed(0)
    model = build_model(
        cfg.model, n_channels=m.n_channels, n_times=m.n_times, n_subjects=max(m.subjects)
    ).eval()
    checks = decoding_checks(cfg, model)
    assert set(checks["ridge"]) == {f"sub-{s:02d}" for s in m.subjects} | {"mean"}
    ridge = checks["ridge"]["mean"]["averaged"]
    assert ridge["top5"] >= ridge["top1"] and ridge["chance_top1"] == pytest.approx(0.1)
    single = checks["model"]["mean"]["single"]
    assert -1.0 <= checks["collapse_pairwise_cos"] == single["pairwise_cos"] <= 1.0
    assert checks["ratio_top1"]["single"] == pytest.approx(
        single["top1"] / checks["ridge"]["mean"]["single"]["top1"]
    )
    assert "ratio" in summary_line(checks)
