"""`sgdm reconstruct` on saved (random-init) tiny models: seeding, EEG checks, VAE lookup, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sgdm_dist.cli import app
from sgdm_dist.config import load_config
from sgdm_dist.data.manifest import manifest_json, read_manifest
from sgdm_dist.models import build_model
from sgdm_dist.reconstruct.model import ReconstructError, model_subjects
from sgdm_dist.reconstruct.run import reconstruct_to_dir
from sgdm_dist.reconstruct.sampling import SamplingOptions

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def save_model(root: Path, overrides: list[str], n_channels_delta: int = 0) -> Path:
    """A saved random-init SGDM for the tiny shards (+ the data manifest train exports with it)."""
    cfg = load_config(TINY, overrides)
    m = read_manifest(cfg.data.shard_dir)
    torch.manual_seed(0)
    model = build_model(
        cfg.model, n_channels=m.n_channels + n_channels_delta, n_times=m.n_times, n_subjects=2
    )
    folder = model.save_pretrained(root)
    (folder / "data_manifest.json").write_text(manifest_json(m))
    return folder


@pytest.fixture(scope="module")
def setup(tiny_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("recon")
    shard_dir = next(o.split("=", 1)[1] for o in tiny_shards if o.startswith("data.shard_dir="))
    m = read_manifest(shard_dir)
    eeg = np.random.default_rng(0).standard_normal((5, m.n_channels, m.n_times)).astype("float32")
    np.save(root / "eeg.npy", eeg)
    return {
        "root": root,
        "shards": shard_dir,
        "manifest": m,
        "model": save_model(root / "model", tiny_shards),
        "npy": root / "eeg.npy",
    }


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def test_npy_rows_are_seeded(setup: dict, tmp_path: Path) -> None:
    def run(name: str, seed: int, batch_size: int) -> Path:
        options = SamplingOptions(steps=2, seed=seed, batch_size=batch_size)
        reconstruct_to_dir(
            str(setup["model"]),
            str(setup["npy"]),
            tmp_path / name,
            options,
            limit=3,
            vae=setup["shards"],
            progress=False,
        )
        return tmp_path / name

    first, again, other_batch, other_seed = (
        run("a", 7, 2),
        run("b", 7, 2),
        run("c", 7, 3),
        run("d", 8, 2),
    )
    names = [f"row-0000{n}.png" for n in range(3)]
    assert sorted(p.name for p in first.glob("*.png")) == ["grid.png", *names]
    for name in names:
        # Same seed and batch size → the same bytes.
        assert (first / name).read_bytes() == (again / name).read_bytes()
        # Another batch size draws the same noise; batched float maths may move a pixel by 1 level.
        assert np.abs(pixels(first / name) - pixels(other_batch / name)).max() <= 2
        # Another seed → another image.
        assert np.abs(pixels(first / name) - pixels(other_seed / name)).mean() > 1.0
    with Image.open(first / "row-00000.png") as im:
        assert im.size == (64, 64)
    with Image.open(first / "grid.png") as im:  # 3 reconstructions in one row of 128 px cells
        assert im.size == (2 + 3 * 130, 2 + 128 + 14 + 2)
    index = json.loads((first / "reconstructions.json").read_text())
    assert [i["file"] for i in index["items"]] == names
    assert {i["model_subject"] for i in index["items"]} == {0}  # no --subject → agnostic
    assert index["sampling"]["seed"] == 7 and index["split"] is None


def test_untrained_subject_falls_back_to_agnostic(setup: dict, tmp_path: Path) -> None:
    assert model_subjects(torch.tensor([0, 1, 2, 3, 9]), 2).tolist() == [0, 1, 2, 0, 0]
    assert model_subjects(torch.tensor([1, 2]), 2, agnostic=True).tolist() == [0, 0]
    result = reconstruct_to_dir(
        str(setup["model"]),
        str(setup["npy"]),
        tmp_path,
        SamplingOptions(steps=1),
        subject=9,
        limit=1,
        vae=setup["shards"],
        progress=False,
    )
    items = json.loads(result.index.read_text())["items"]
    assert items == [{"file": "row-00000.png", "row": 0, "subject": 9, "model_subject": 0}]


def test_shard_subject_filter(setup: dict, tmp_path: Path) -> None:
    result = reconstruct_to_dir(
        str(setup["model"]),
        setup["shards"],
        tmp_path,
        SamplingOptions(steps=1),
        subject=2,
        limit=2,
        progress=False,
    )
    assert [p.relative_to(tmp_path).as_posix() for p in result.files] == [
        "sub-02/00000.png",
        "sub-02/00001.png",
    ]
    with Image.open(result.grid) as im:  # stimulus | sub-02, two groups side by side
        assert im.size == (2 + 4 * 130, 2 + 128 + 14 + 2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: np.zeros((2, m.n_channels + 3, m.n_times), "float32"), "20 channels per trial"),
        (lambda m: np.zeros((2, m.n_channels, 250), "float32"), "250 time samples per trial"),
        (lambda m: np.zeros((1, 2, m.n_channels, m.n_times), "float32"), "expected [N, C, T]"),
        (lambda m: np.zeros((0, m.n_channels, m.n_times), "float32"), "holds no trials"),
        (lambda m: np.full((3, m.n_channels, m.n_times), np.nan, "float32"), "non-finite"),
        (lambda m: np.array([["a"] * m.n_times] * m.n_channels), "is not numeric"),
    ],
)
def test_bad_eeg_files_exit_2_with_a_clear_error(
    setup: dict, tmp_path: Path, make, message: str
) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, make(setup["manifest"]))
    result = CliRunner().invoke(
        app,
        [
            *("reconstruct", "--model", str(setup["model"]), "--eeg", str(path)),
            *("--out", str(tmp_path / "out"), "--vae", setup["shards"], "--steps", "1"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert f"EEG file {path}" in result.output and message in result.output
    assert not (tmp_path / "out").exists()  # nothing is written before the input is checked


def test_wrong_channel_count_names_the_channels(setup: dict, tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    m = setup["manifest"]
    np.save(path, np.zeros((1, m.n_channels - 1, m.n_times), "float32"))
    with pytest.raises(ReconstructError) as err:
        reconstruct_to_dir(str(setup["model"]), str(path), tmp_path / "o", SamplingOptions())
    assert f"the model takes {m.n_channels} ({', '.join(m.ch_names)})" in str(err.value)
    assert f"{m.n_channels - 1} channels per trial" in str(err.value)


def test_missing_or_unreadable_inputs(setup: dict, tmp_path: Path) -> None:
    run = CliRunner().invoke
    out = ["--out", str(tmp_path / "o")]
    result = run(app, ["reconstruct", "--model", str(tmp_path / "nope"), "--eeg", "x.npy", *out])
    assert result.exit_code == 2 and "nope: no such folder" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(app, ["reconstruct", "--model", str(empty), "--eeg", "x.npy", *out])
    assert result.exit_code == 2 and "not a saved SGDM model folder" in result.output
    model = str(setup["model"])
    result = run(app, ["reconstruct", "--model", model, "--eeg", str(tmp_path / "x.npy"), *out])
    assert result.exit_code == 2 and "x.npy: no such file" in result.output
    result = run(app, ["reconstruct", "--model", model, "--eeg", str(tmp_path / "none"), *out])
    assert result.exit_code == 2 and "no manifest.json" in result.output
    result = run(
        app, ["reconstruct", "--model", model, "--eeg", setup["shards"], "--split", "x", *out]
    )
    assert result.exit_code == 2 and "split 'x' not in" in result.output


def test_no_vae_anywhere_is_an_error_that_says_where_it_looked(setup: dict, tmp_path: Path) -> None:
    # The model folder has no vae/ and no experiment.yaml; an .npy input has no manifest.
    with pytest.raises(ReconstructError) as err:
        reconstruct_to_dir(
            str(setup["model"]), str(setup["npy"]), tmp_path, SamplingOptions(), progress=False
        )
    assert "no VAE to decode latents" in str(err.value)
    assert str(setup["model"] / "vae") in str(err.value) and "--vae" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_vae_found_through_the_training_config(setup: dict, tmp_path: Path) -> None:
    """A folder exported by `sgdm train` names its shards in experiment.yaml: .npy input needs no --vae."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(setup["model"], model)
    (model / "experiment.yaml").write_text(f"data:\n  shard_dir: {setup['shards']}\n")
    result = reconstruct_to_dir(
        str(model),
        str(setup["npy"]),
        tmp_path / "o",
        SamplingOptions(steps=1),
        limit=1,
        progress=False,
    )
    assert json.loads(result.index.read_text())["vae"] == f"{setup['shards']} (training shards)"


def test_shards_that_do_not_fit_the_model_are_refused(
    setup: dict, tiny_shards: list[str], tmp_path: Path
) -> None:
    other = save_model(tmp_path / "wide", tiny_shards, n_channels_delta=2)
    n = setup["manifest"].n_channels
    with pytest.raises(ReconstructError) as err:
        reconstruct_to_dir(str(other), setup["shards"], tmp_path / "o", SamplingOptions())
    assert f"shards {setup['shards']}: {n} channels per trial, the model takes {n + 2}" in str(
        err.value
    )
    # evaluate goes through the same check and exits 2 with the same message.
    result = CliRunner().invoke(
        app, ["evaluate", str(TINY), *tiny_shards, "--model", str(other), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and f"the model takes {n + 2}" in result.output
    # Same count, other channel order: refused too (the model's data manifest lists its channels).
    data = json.loads((setup["model"] / "data_manifest.json").read_text())
    shuffled = tmp_path / "shuffled"
    import shutil

    shutil.copytree(setup["model"], shuffled)
    data["ch_names"] = data["ch_names"][::-1]
    (shuffled / "data_manifest.json").write_text(json.dumps(data))
    with pytest.raises(ReconstructError, match="differ from the model's training channels"):
        reconstruct_to_dir(str(shuffled), setup["shards"], tmp_path / "o2", SamplingOptions())
