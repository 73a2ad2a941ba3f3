"""End to end on the tiny config: synthetic raw → `sgdm prepare` → shards + manifest → loader."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from support import tiny_data_overrides
from typer.testing import CliRunner

from sgdm_dist.cli import app
from sgdm_dist.config import Config, load_config
from sgdm_dist.data import DataError
from sgdm_dist.data.features import load_vae
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.manifest import manifest_hash, read_manifest, verify_shards
from sgdm_dist.data.shards import Trial, decode, iter_shard, write_unit
from sgdm_dist.data.splits import split_image_embeddings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[str]]:
    """`sgdm prepare configs/tiny.yaml --synthetic` into a temporary folder, through the CLI."""
    root = tmp_path_factory.mktemp("tiny")
    ov = tiny_data_overrides(root)
    result = CliRunner().invoke(
        app, ["prepare", str(REPO / "configs/tiny.yaml"), *ov, "--synthetic"]
    )
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "sub-02" in result.output  # the summary table
    return load_config(REPO / "configs/tiny.yaml", ov), ov


def _with(cfg: Config, **loader: object) -> Config:
    data = cfg.data.model_copy(update={"loader": cfg.data.loader.model_copy(update=loader)})
    return cfg.model_copy(update={"data": data})


def test_manifest_describes_the_shards(prepared: tuple[Config, list[str]]) -> None:
    cfg, _ = prepared
    m = read_manifest(cfg.data.shard_dir)
    syn = cfg.data.synthetic
    assert (m.n_channels, m.n_times, m.sfreq) == (17, 100, 100.0)
    assert m.times[20] == pytest.approx(0.0)
    assert (m.clip_dim, tuple(m.latent_shape)) == (32, (4, 8, 8))
    assert m.subjects == [1, 2]
    n_train_images = syn.n_train_concepts * syn.images_per_concept
    trials = {s: m.splits[s].n_samples for s in m.splits}
    assert trials["train"] + trials["val"] == 2 * n_train_images * syn.train_reps
    assert trials["test"] == 2 * syn.n_test_concepts * syn.test_reps
    assert m.splits["val"].n_samples > 0 and m.splits["train"].per_subject == {
        1: trials["train"] // 2,
        2: trials["train"] // 2,
    }
    assert m.n_concepts == len(m.splits["train"].concepts)
    assert not set(m.splits["val"].concepts) & set(
        m.splits["train"].concepts
    )  # val = held-out concepts
    assert verify_shards(cfg.data.shard_dir) == []
    m.check_compatible(cfg)
    assert len(manifest_hash(cfg.data.shard_dir)) == 64


def test_manifest_mismatch_names_what_differs(prepared: tuple[Config, list[str]]) -> None:
    _cfg, ov = prepared
    bad = load_config(
        REPO / "configs/tiny.yaml", [*ov, "model.clip_dim=16", "model.unet.latent_size=16"]
    )
    with pytest.raises(DataError) as err:
        make_loader(bad, "train")
    msg = str(err.value)
    assert "clip_dim: model.clip_dim=16, shards 32" in msg
    assert "latent shape" in msg and "[4, 16, 16]" in msg


def test_batches_have_the_contracted_fields(prepared: tuple[Config, list[str]]) -> None:
    cfg, _ = prepared
    batch = next(iter(make_loader(cfg, "test", batch_size=5)))
    assert batch["eeg"].shape == (5, 17, 100) and batch["eeg"].dtype == torch.float32
    assert batch["clip"].shape == (5, 32)
    torch.testing.assert_close(batch["clip"].norm(dim=1), torch.ones(5), atol=2e-3, rtol=0)
    assert batch["latent"].shape == (5, 4, 8, 8)
    for k in ("subject", "image_index", "concept"):
        assert batch[k].dtype == torch.int64 and batch[k].shape == (5,)
    assert set(batch["subject"].tolist()) <= {1, 2}
    assert batch["image"].shape == (5, 3, 64, 64)
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert len(batch["key"]) == 5
    train = next(iter(make_loader(cfg, "train", batch_size=4)))
    assert "image" not in train  # train omits stimuli by default


def test_retrieval_table_matches_batches(prepared: tuple[Config, list[str]]) -> None:
    cfg, _ = prepared
    idx, emb = split_image_embeddings(cfg.data.shard_dir, "test")
    assert idx.tolist() == list(range(cfg.data.synthetic.n_test_concepts))
    for batch in make_loader(cfg, "test", shuffle=False, drop_last=False):
        torch.testing.assert_close(batch["clip"], emb[batch["image_index"]], atol=0, rtol=0)


def test_exactly_once_across_two_ranks_and_two_workers(prepared: tuple[Config, list[str]]) -> None:
    cfg, _ = prepared
    cfg2 = _with(cfg, num_workers=2)
    m = read_manifest(cfg.data.shard_dir)
    assert len(m.splits["train"].shards) >= 4  # every (rank, worker) gets shards
    keys: list[str] = []
    per_rank = []
    for rank in (0, 1):
        loader = make_loader(cfg2, "train", rank=rank, world_size=2, epoch=3, drop_last=False)
        got = [k for b in loader for k in b["key"]]
        per_rank.append(got)
        keys += got
    counts = Counter(keys)
    assert max(counts.values()) == 1
    assert len(keys) == m.splits["train"].n_samples
    assert set(per_rank[0]).isdisjoint(per_rank[1]) and per_rank[0] and per_rank[1]


def test_order_is_deterministic_per_epoch_and_len_is_exact(
    prepared: tuple[Config, list[str]],
) -> None:
    cfg, _ = prepared

    def order(epoch: int) -> list[str]:
        return [
            k
            for b in make_loader(cfg, "train", epoch=epoch, rank=1, world_size=2)
            for k in b["key"]
        ]

    first, again, other = order(0), order(0), order(1)
    assert first == again
    assert first != other  # a new epoch reshuffles shards and samples
    loader = make_loader(cfg, "train", epoch=0, rank=1, world_size=2)
    assert len(list(loader)) == len(loader)


def test_subject_filter_and_resampled_epoch(prepared: tuple[Config, list[str]]) -> None:
    cfg, _ = prepared
    subs = {s for b in make_loader(cfg, "train", subjects=[2]) for s in b["subject"].tolist()}
    assert subs == {2}
    with pytest.raises(DataError, match=r"subjects \[7\] not in"):
        make_loader(cfg, "train", subjects=[7])
    res = make_loader(_with(cfg, resampled=True), "train")
    n = sum(1 for _ in res)
    assert n == len(res) > 0


def test_shard_round_trip_is_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    trials = [
        Trial(
            key=f"01_01_img{i}_00",
            eeg=rng.standard_normal((17, 100)).astype(np.float16),
            clip=rng.standard_normal(32).astype(np.float16),
            latent=rng.standard_normal((4, 8, 8)).astype(np.float16),
            meta={"subject": 1, "image_index": i, "concept": 0},
            image_png=None,
        )
        for i in range(5)
    ]
    rec = write_unit(tmp_path, "train", "u", trials, 2, "fp", {})
    assert [s["n_samples"] for s in rec["shards"]] == [2, 2, 1]
    got = [
        decode(s)
        for sh in rec["shards"]
        for s in iter_shard(str(tmp_path / sh["name"]), sh["n_samples"])
    ]
    for t, g in zip(trials, got, strict=True):
        assert g["key"] == t.key and g["meta"] == t.meta
        for name in ("eeg", "clip", "latent"):
            assert g[name].dtype == np.float16 and np.array_equal(g[name], getattr(t, name))
    rec2 = write_unit(tmp_path / "again", "train", "u", trials, 2, "fp", {})
    assert [s["sha256"] for s in rec2["shards"]] == [s["sha256"] for s in rec["shards"]]


def test_truncated_shard_is_named_or_skipped_and_counted(
    prepared: tuple[Config, list[str]], tmp_path: Path
) -> None:
    import shutil

    cfg, ov = prepared
    copy = tmp_path / "shards"
    shutil.copytree(cfg.data.shard_dir, copy)
    m = read_manifest(str(copy))
    victim = m.splits["test"].shards[0]
    path = copy / victim.name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    c2 = load_config(REPO / "configs/tiny.yaml", [*ov, f"data.shard_dir={copy}"])
    with pytest.raises(DataError, match=victim.name.replace("/", ".")):
        list(make_loader(c2, "test", shuffle=False))
    skip = _with(c2, skip_corrupt=True)
    loader = make_loader(skip, "test", shuffle=False, drop_last=False)
    batches = list(loader)
    assert loader.stream.skipped == [victim.name] and len(batches) == len(loader)
    # The skipped shard's slots are filled with pad-flagged repeats, so len() stays exact.
    real = [k for b in batches for k, p in zip(b["key"], b["pad"].tolist(), strict=True) if not p]
    n_pad = sum(int(b["pad"].sum()) for b in batches)
    assert len(real) == len(set(real)) == m.splits["test"].n_samples - victim.n_samples
    assert n_pad == victim.n_samples
    assert verify_shards(str(copy)) == [victim.name]


def test_random_vae_is_saved_and_reloads_identically(prepared: tuple[Config, list[str]]) -> None:
    from PIL import Image

    from sgdm_dist.data.features import to_tensor

    cfg, _ = prepared
    m = read_manifest(cfg.data.shard_dir)
    assert m.features["random_init"] == {"clip": True, "vae": True}
    vae = load_vae(m)
    img_path = sorted((Path(cfg.data.image_dir) / "test_images").glob("*/*.png"))[0]
    x = to_tensor(Image.open(img_path), 64)[None]
    with torch.no_grad():
        lat = vae.encode(x * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    batch = next(
        b
        for b in make_loader(cfg, "test", shuffle=False, drop_last=False)
        if 0 in b["image_index"].tolist()
    )
    i = batch["image_index"].tolist().index(0)
    np.testing.assert_allclose(
        batch["latent"][i].numpy(), lat[0].numpy().astype(np.float16), rtol=0, atol=1e-3
    )


def test_rerun_is_idempotent_and_interrupted_run_resumes(
    prepared: tuple[Config, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    from sgdm_dist.data import prepare as prep

    cfg, ov = prepared
    reference = (Path(cfg.data.shard_dir) / "manifest.json").read_bytes()
    # A re-run over finished shards changes nothing and recomputes no features.
    shard = (
        Path(cfg.data.shard_dir) / read_manifest(cfg.data.shard_dir).splits["train"].shards[0].name
    )
    before = shard.stat().st_mtime_ns
    m = prep.prepare(cfg, progress=False)
    assert m.features and (Path(cfg.data.shard_dir) / "manifest.json").read_bytes() == reference
    assert shard.stat().st_mtime_ns == before
    # Interrupted run into a fresh folder (same raw data and feature cache): crash after 2 units.
    out = tmp_path / "resumed"
    c2 = load_config(REPO / "configs/tiny.yaml", [*ov, f"data.shard_dir={out}"])
    real_write = prep.write_unit
    calls = {"n": 0}

    def crashing(*args: object, **kw: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_write(*args, **kw)

    monkeypatch.setattr(prep, "write_unit", crashing)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(c2, progress=False)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(prep, "write_unit", real_write)
    # Resume with sessions in 2 worker processes: same bytes as the serial run.
    c2 = c2.model_copy(update={"data": c2.data.model_copy(update={"workers": 2})})
    prep.prepare(c2, progress=False)
    assert (out / "manifest.json").read_bytes() == reference
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert json.loads(reference)["splits"]["train"]["n_samples"] > 0
    assert os.path.exists(out / ".units")


def test_things_preprocessed_files_are_sharded_directly(
    prepared: tuple[Config, list[str]], tmp_path: Path
) -> None:
    from sgdm_dist.data.prepare import prepare

    cfg, ov = prepared
    syn = cfg.data.synthetic
    rng = np.random.default_rng(5)
    ch = ["O1", "Oz", "O2"]
    times = np.round(np.arange(-20, 80) / 100, 2)
    sub = tmp_path / "pre" / "sub-03"
    sub.mkdir(parents=True)
    tr = rng.standard_normal((syn.n_train_concepts * syn.images_per_concept, 4, 3, 100))
    te = rng.standard_normal((syn.n_test_concepts, 80, 3, 100))
    for part, x in (("training", tr), ("test", te)):
        d = {"preprocessed_eeg_data": x, "ch_names": ch, "times": times}
        np.save(sub / f"preprocessed_eeg_{part}.npy", d, allow_pickle=True)
    c2 = load_config(
        REPO / "configs/tiny.yaml",
        [
            *ov,
            "data.source=things_preprocessed",
            f"data.raw_dir={tmp_path / 'pre'}",
            f"data.shard_dir={tmp_path / 'out'}",
            "data.preprocess.channels=[O1, Oz, O2]",
            "data.preprocess.average_test_reps=true",
        ],
    )
    m = prepare(c2, progress=False)
    assert (
        m.ch_names == ch and m.n_times == 100 and m.subjects == [3] and m.eeg_unit == "as-provided"
    )
    assert m.splits["test"].n_samples == syn.n_test_concepts  # 80 repetitions averaged
    assert m.splits["train"].n_samples + m.splits["val"].n_samples == tr.shape[0] * 4
    batch = next(iter(make_loader(c2, "test", shuffle=False, batch_size=2)))
    expected = te[batch["image_index"].numpy()].mean(axis=1).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(batch["eeg"].numpy(), expected)


def test_nan_recording_stops_prepare_with_the_file_named(
    prepared: tuple[Config, list[str]], tmp_path: Path
) -> None:
    import shutil

    from sgdm_dist.data.prepare import prepare

    cfg, ov = prepared
    raw = tmp_path / "raw"
    shutil.copytree(Path(cfg.data.raw_dir) / "sub-01", raw / "sub-01")
    f = raw / "sub-01" / "ses-01" / "raw_eeg_test.npy"
    d = np.load(f, allow_pickle=True).item()
    d["raw_eeg_data"][d["ch_names"].index("O2"), 100] = np.inf
    np.save(f, d, allow_pickle=True)
    c2 = load_config(
        REPO / "configs/tiny.yaml",
        [*ov, f"data.raw_dir={raw}", f"data.shard_dir={tmp_path / 'out'}"],
    )
    c2 = c2.model_copy(update={"data": c2.data.model_copy(update={"source": "things_raw"})})
    with pytest.raises(DataError, match=r"raw_eeg_test.npy: non-finite values .* \['O2'\]"):
        prepare(c2, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_fsspec_url_output_and_streaming(prepared: tuple[Config, list[str]]) -> None:
    import fsspec

    from sgdm_dist.data.prepare import prepare

    _, ov = prepared
    url = "memory://sgdm-test/shards"
    c2 = load_config(
        REPO / "configs/tiny.yaml", [*ov, f"data.shard_dir={url}", "data.loader.num_workers=0"]
    )
    m = prepare(c2, progress=False)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/sgdm-test/shards/manifest.json")
    assert read_manifest(url).splits["test"].n_samples == m.splits["test"].n_samples
    assert verify_shards(url) == []
    keys = [k for b in make_loader(c2, "test", drop_last=False) for k in b["key"]]
    assert len(keys) == len(set(keys)) == m.splits["test"].n_samples
