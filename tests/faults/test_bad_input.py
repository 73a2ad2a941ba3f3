"""Bad input, as users meet it: corrupted shards, raw recordings, configs and weight paths. Each case
must end with a one-line error that names the culprit and nothing half-written that looks complete.

Most cases call the function `sgdm` calls (``load_config``, ``prepare``, ``train``) in this process
and check the error's type (one the CLI reports as bad input) and message. A few run the real
`sgdm` console script end to end: exit code 2, no traceback, the same message printed last."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sgdm_dist.config import ConfigError, load_config
from sgdm_dist.data import DataError
from sgdm_dist.data.loader import shard_order
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.data.shards import load_npy, npy_bytes

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
SGDM = Path(sys.executable).with_name("sgdm")
SHORT_RUN = [
    "train.align_steps=2",
    "train.diffusion_steps=0",
    "train.eval_every=100",
    "train.recon_images=0",
    "experiment.tracking=false",
]
BAD_INPUT = 2  # sgdm's exit code for bad input/usage (sgdm_dist.cli.common.EXIT_BAD_INPUT)
CLI, CALL = "cli", "call"  # how a case runs: a real `sgdm` process, or the function it calls


def sgdm(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SGDM), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def assert_names(message: str, *culprits: str) -> None:
    for culprit in culprits:
        assert culprit in message, f"{culprit!r} not in: {message}"


def assert_clean_failure(
    result: subprocess.CompletedProcess[str], *culprits: str, code: int = BAD_INPUT
) -> str:
    """The run failed with ``code``, printed no traceback, and its error names every culprit."""
    out = result.stdout + result.stderr
    assert result.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    # The CLI prints "error: ..." last (after a progress bar's carriage returns, when one ran).
    at = result.stderr.rfind("error: ")
    assert at >= 0, result.stderr[-3000:]
    message = result.stderr[at:]
    assert_names(message, *culprits)
    return message


def call_fails(command: str, overrides: list[str], error: type[Exception], cwd: Path) -> str:
    """``sgdm COMMAND configs/tiny.yaml OVERRIDES`` as the function the CLI calls, run from ``cwd``.

    It must raise ``error``: a DataError or ConfigError, which `sgdm` prints as the one line
    "error: MESSAGE" with exit code 2 (anything else would be a traceback). Returns that line."""
    from sgdm_dist.data.prepare import prepare
    from sgdm_dist.training.loop import train as run_training

    with contextlib.chdir(cwd):  # relative config paths resolve against the CLI's folder
        cfg = load_config(TINY, overrides)
        with pytest.raises(error) as raised:
            {"prepare": prepare, "train": run_training}[command](cfg)
    return f"error: {raised.value}"


def fails(
    via: str,
    command: str,
    overrides: list[str],
    *culprits: str,
    cwd: Path,
    error: type[Exception] = DataError,
) -> str:
    """``sgdm COMMAND configs/tiny.yaml OVERRIDES`` fails naming every culprit; the error line."""
    if via == CLI:
        return assert_clean_failure(sgdm(command, TINY, *overrides, cwd=cwd), *culprits)
    message = call_fails(command, overrides, error, cwd)
    assert_names(message, *culprits)
    return message


def paths_of(overrides: list[str]) -> dict[str, Path]:
    return {k.removeprefix("data."): Path(v) for k, v in (o.split("=", 1) for o in overrides)}


def half_written(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------------
# shards


@pytest.fixture
def shards(tiny_shards: list[str], tmp_path: Path) -> Path:
    """A private copy of the session's shards (those are shared and must stay intact)."""
    copy = tmp_path / "shards"
    shutil.copytree(paths_of(tiny_shards)["shard_dir"], copy)
    return copy


def train_fails(
    via: str,
    tiny_shards: list[str],
    shard_dir: Path,
    out: Path,
    extra: list[str],
    *culprits: str,
    error: type[Exception] = DataError,
) -> str:
    """A short `sgdm train` on ``shard_dir`` into ``out`` fails naming every culprit."""
    overrides = [
        *tiny_shards,
        f"data.shard_dir={shard_dir}",
        *SHORT_RUN,
        f"experiment.output_dir={out}",
        *extra,
    ]
    return fails(via, "train", overrides, *culprits, cwd=out.parent, error=error)


def first_train_shard(tiny_shards: list[str], shard_dir: Path) -> str:
    """The shard rank 0 reads first in epoch 0, so even a 2-step run reaches the damage."""
    cfg = load_config(TINY, [*tiny_shards, f"data.shard_dir={shard_dir}"])
    entries = read_manifest(str(shard_dir)).splits["train"].shards
    return shard_order(entries, cfg.experiment.seed, epoch=0, shuffle=True)[0].name


def read_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def write_members(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("cut", ["between samples", "inside a sample", "inside a member"])
def test_truncated_shard_names_the_shard(
    tiny_shards: list[str], shards: Path, tmp_path: Path, cut: str
) -> None:
    name = first_train_shard(tiny_shards, shards)
    path = shards / name
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    per_sample = sum(m.name.startswith(members[0].name.split(".", 1)[0] + ".") for m in members)
    first = members[len(members) // 2 // per_sample * per_sample]  # first member of a sample
    # A cut at a header boundary ends the tar stream silently (tarfile treats it as the end),
    # leaving a short count or a partial last sample; a cut inside data fails the read itself.
    at = {
        "between samples": first.offset,
        "inside a sample": members[members.index(first) + 2].offset,
        "inside a member": first.offset_data + 100,
    }[cut]
    path.write_bytes(path.read_bytes()[:at])

    out = tmp_path / "run"
    message = train_fails(CALL, tiny_shards, shards, out, [], str(path))
    assert "truncated" in message.replace(str(path), "")  # tmp_path holds the test's name
    assert not (out / "model").exists()


@pytest.mark.parametrize("missing", ["latent.npy", "eeg.npy"])
def test_shard_sample_missing_a_key_names_shard_sample_and_key(
    tiny_shards: list[str], shards: Path, tmp_path: Path, missing: str
) -> None:
    name = first_train_shard(tiny_shards, shards)
    members = read_members(shards / name)
    victim = members[4 * 3][0].name.split(".", 1)[0]  # the 4th sample (4 members each)
    write_members(shards / name, [(m, d) for m, d in members if m.name != f"{victim}.{missing}"])

    out = tmp_path / "run"
    # The shard's sha256 would catch the edit first; this case is about the sample check behind it.
    extra = ["data.loader.verify_checksums=false"]
    train_fails(CALL, tiny_shards, shards, out, extra, str(shards / name), f"'{victim}'", missing)
    assert not (out / "model").exists()


def test_shard_eeg_with_a_channel_too_few_names_expected_and_found(
    tiny_shards: list[str], shards: Path, tmp_path: Path
) -> None:
    """End to end through the real `sgdm train`: exit 2, no traceback, the message printed last."""
    name = first_train_shard(tiny_shards, shards)
    members = read_members(shards / name)
    # Every sample of the shard loses a channel: the loader's shuffle buffer decides which sample
    # of it is decoded first, and whichever it is must be named.
    eeg_members = {m.name for m, _ in members if m.name.endswith(".eeg.npy")}
    c, t = load_npy(next(d for m, d in members if m.name in eeg_members)).shape
    members = [(m, npy_bytes(load_npy(d)[1:]) if m.name in eeg_members else d) for m, d in members]
    write_members(shards / name, members)

    out = tmp_path / "run"
    # The shard's sha256 would catch the edit first; this case is about the sample check behind it.
    extra = ["data.loader.verify_checksums=false"]
    culprits = [str(shards / name), "key 'eeg'", f"[{c - 1}, {t}]", f"[{c}, {t}]"]
    message = train_fails(CLI, tiny_shards, shards, out, extra, *culprits)
    keys = {n.split(".", 1)[0] for n in eeg_members}
    assert any(f"sample '{k}'" in message for k in keys), message
    assert not (out / "model").exists()


def test_config_channels_differ_from_the_shards_manifest(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    shard_dir = paths_of(tiny_shards)["shard_dir"]
    n = read_manifest(str(shard_dir)).n_channels
    out = tmp_path / "run"
    extra = ["data.preprocess.channels=[O1, Oz, O2]"]
    culprits = [str(shard_dir), "config wants 3 ['O1', 'Oz', 'O2']", f"have {n}"]
    train_fails(CALL, tiny_shards, shard_dir, out, extra, *culprits)
    assert not (out / "model").exists()


# ---------------------------------------------------------------------------------------------
# raw recordings → `sgdm prepare`


@pytest.fixture
def raw(tiny_shards: list[str], tmp_path: Path) -> tuple[Path, list[str]]:
    """A private copy of the tiny raw recordings read as THINGS-EEG2 files, with overrides that
    write shards under tmp_path (the feature cache is copied too, so no feature is recomputed)."""
    p = paths_of(tiny_shards)
    copy = tmp_path / "raw"
    for sub in sorted(p["raw_dir"].glob("sub-*")):
        shutil.copytree(sub, copy / sub.name)
    shutil.copytree(p["cache_dir"], tmp_path / "cache")
    return copy, [
        "data.source=things_raw",
        f"data.raw_dir={copy}",
        f"data.image_dir={p['image_dir']}",
        f"data.shard_dir={tmp_path / 'out'}",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]


def edit_recording(path: Path, edit) -> None:
    d = np.load(path, allow_pickle=True).item()
    edit(d)
    np.save(path, d, allow_pickle=True)


@pytest.mark.parametrize(
    ("subject", "part", "value", "via"),
    [(2, "training", np.nan, CALL), (1, "test", np.inf, CLI)],  # CLI: the real `sgdm prepare`
)
def test_non_finite_eeg_names_file_and_channel_and_leaves_no_complete_output(
    raw: tuple[Path, list[str]], tmp_path: Path, subject: int, part: str, value: float, via: str
) -> None:
    root, overrides = raw
    f = root / f"sub-{subject:02d}" / "ses-01" / f"raw_eeg_{part}.npy"

    def poison(d: dict) -> None:
        d["raw_eeg_data"][d["ch_names"].index("POz"), 1234] = value

    edit_recording(f, poison)
    fails(via, "prepare", overrides, str(f), "NaN/Inf", "['POz']", "sample 1234", cwd=tmp_path)

    out = tmp_path / "out"
    assert not (out / "manifest.json").exists()
    unit = f"sub-{subject:02d}_ses-01"
    assert not list(out.glob(f"*/{unit}-*")) and not list(out.glob(f".units/*{unit}*"))
    assert half_written(out) == []


def test_recording_with_62_of_63_channels_names_expected_and_found(
    raw: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, overrides = raw
    f = root / "sub-02" / "ses-01" / "raw_eeg_training.npy"

    def drop_fp1(d: dict) -> None:
        i = d["ch_names"].index("Fp1")  # not a channel the tiny config keeps: easy to miss
        d["raw_eeg_data"] = np.delete(d["raw_eeg_data"], i, axis=0)
        del d["ch_names"][i], d["ch_types"][i]

    edit_recording(f, drop_fp1)
    culprits = [str(f), "expected the 63", "found 62", "missing ['Fp1']"]
    fails(CALL, "prepare", overrides, *culprits, cwd=tmp_path)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert half_written(tmp_path / "out") == []


# ---------------------------------------------------------------------------------------------
# configs: what `sgdm` checks first (``load_config``), before any import that costs seconds


def config_error(config: Path, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(config, overrides)
    return f"error: {raised.value}"


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("train:\n  lr: 1.0e-3\n   align_steps: 3\n", 4),  # indentation
        ("train:\n  lr: 1.0e-3\n  subjects: [1, 2\n", 5),  # unclosed flow sequence
    ],
)
def test_malformed_yaml_names_file_and_line(tmp_path: Path, body: str, line: int) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(f"extends: {TINY}\n{body}")
    assert_names(config_error(config, []), str(config), "malformed YAML", f"line {line}")


@pytest.mark.parametrize(("where", "via"), [("file", CALL), ("override", CLI)])
def test_unknown_config_key_names_key_and_source(tmp_path: Path, where: str, via: str) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(
        f"extends: {TINY}\ntrain:\n  {'lrr: 0.1' if where == 'file' else 'lr: 0.1'}\n"
    )
    overrides = ["train.lrr=0.1"] if where == "override" else []
    source = str(config) if where == "file" else "override 'train.lrr=0.1'"
    culprits = ["unknown key 'train.lrr'", source, "allowed:"]
    if via == CLI:  # the real `sgdm train`: exit 2, one line, and nothing written
        assert_clean_failure(sgdm("train", config, *overrides, cwd=tmp_path), *culprits)
        assert not (tmp_path / "outputs").exists()
    else:
        assert_names(config_error(config, overrides), *culprits)


# ---------------------------------------------------------------------------------------------
# weights


@pytest.mark.parametrize(
    "override",
    [
        "data.features.clip_pretrained=/nonexistent/clip.safetensors",
        "data.features.vae=/nonexistent/vae",
    ],
)
def test_missing_encoder_weights_stop_prepare_naming_the_path(
    raw: tuple[Path, list[str]], tmp_path: Path, override: str
) -> None:
    _, overrides = raw
    key, path = override.split("=")
    culprits = [key.removesuffix(".clip_pretrained"), path]
    fails(CALL, "prepare", [*overrides, override], *culprits, cwd=tmp_path)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert half_written(tmp_path / "out") == []


def test_missing_unet_weights_stop_train_naming_the_path(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shard_dir = paths_of(tiny_shards)["shard_dir"]
    extra = ["model.unet.pretrained=/nonexistent/unet"]
    culprits = ["model.unet.pretrained", "/nonexistent/unet"]
    train_fails(CALL, tiny_shards, shard_dir, out, extra, *culprits, error=ConfigError)
    assert not (out / "model").exists()
