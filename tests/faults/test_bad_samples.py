"""Bad samples and swapped shards are refused with the shard and key named, never a traceback (#16).

The sweep damages one sample of a real shard per case, re-hashes it into the manifest (as if
`prepare` had written the bad value) and runs the real `sgdm verify` command: exit 2, the shard's
path and the key in the message. Swapped shards fail the streamed sha256 or, if the manifest was
edited to match, the subject check.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from data_support import REPO, shard_config, write_shard_set
from typer.testing import CliRunner

from sgdm_dist.cli import app
from sgdm_dist.data import DataError
from sgdm_dist.data.io import sha256_file
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.manifest import read_manifest, write_manifest
from sgdm_dist.data.shards import iter_shard

ARRAYS = ("eeg", "clip", "latent")
FAULTS = ("nan", "inf", "shape", "dtype", "missing")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("good")
    write_shard_set(root, [4, 3])
    return root


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _damage(sample: dict, key: str, fault: str) -> None:
    ext = f"{key}.npy"
    x = np.load(io.BytesIO(sample[ext]), allow_pickle=False)
    if fault == "missing":
        del sample[ext]
    elif fault in ("nan", "inf"):
        x = x.copy()
        x.flat[1] = np.nan if fault == "nan" else np.inf
        sample[ext] = _npy(x)
    elif fault == "shape":
        sample[ext] = _npy(x.reshape(-1)[:-1])
    else:
        sample[ext] = _npy(x.astype(np.float32))


def rewrite(root: Path, shard: int, change: Callable[[dict], None], rehash: bool = True) -> str:
    """Rewrite sample 1 of ``shard`` with ``change(sample)``; put its new sha256 in the manifest."""
    m = read_manifest(str(root))
    entry = m.splits["train"].shards[shard]
    path = root / entry.name
    samples = list(iter_shard(str(path)))
    change(samples[1])
    with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:
        for s in samples:
            sink.write({k: v for k, v in s.items() if k != "__url__"})
    if rehash:
        entry.sha256 = sha256_file(path)
        write_manifest(m, root)
    return entry.name


def verify(root: Path) -> tuple[int, str]:
    ov = [f"data.shard_dir={root}", "data.preprocess.channels=all", "data.preprocess.tmin=-0.2"]
    result = CliRunner().invoke(app, ["verify", str(REPO / "configs/tiny.yaml"), *ov])
    return result.exit_code, result.output


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("key", ARRAYS)
def test_bad_array_exits_2_naming_shard_and_key(
    good: Path, tmp_path: Path, key: str, fault: str
) -> None:
    root = tmp_path / "shards"
    shutil.copytree(good, root)
    name = rewrite(root, 1, lambda s: _damage(s, key, fault))
    code, out = verify(root)
    assert code == 2, out
    assert "Traceback" not in out
    assert f"{root}/{name}" in out and f"'{key}" in out
    expected = {
        "nan": "NaN/Inf",
        "inf": "NaN/Inf",
        "shape": "expected shape",
        "dtype": "expected dtype float16, found float32",
        "missing": "missing",
    }[fault]
    assert expected in out
    assert "1 of 2 shards" in out


def test_bad_metadata_is_named(good: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    shutil.copytree(good, root)

    def drop_concept(s: dict) -> None:
        meta = json.loads(s["json"])
        del meta["concept"]
        s["json"] = json.dumps(meta).encode()

    rewrite(root, 0, drop_concept)
    code, out = verify(root)
    assert code == 2 and "key 'json.concept' expected an integer, found None" in out


def test_good_shards_verify(good: Path) -> None:
    code, out = verify(good)
    assert code == 0 and "ok: 2 shards, 7 samples" in out


def test_swapped_shard_is_refused_before_use(good: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    other = tmp_path / "other-subject"
    shutil.copytree(good, root)
    write_shard_set(other, [4, 3], subject=2)
    m = read_manifest(str(root))
    victim = m.splits["train"].shards[0]
    shutil.copy(
        other / read_manifest(str(other)).splits["train"].shards[0].name, root / victim.name
    )
    code, out = verify(root)
    assert code == 2 and f"shard {root}/{victim.name}: sha256 expected {victim.sha256}" in out
    # Training refuses it too, before any of its samples reaches a batch, also from a worker.
    cfg = shard_config(root, num_workers=2, batch_size=2)
    with pytest.raises(DataError, match="sha256 expected") as err:
        list(make_loader(cfg, "train", shuffle=False))
    assert "Traceback" not in str(err.value)
    # Someone "fixes" the manifest hash: the shard's samples still name another subject.
    m.splits["train"].shards[0].sha256 = sha256_file(root / victim.name)
    write_manifest(m, root)
    code, out = verify(root)
    assert code == 2 and "key 'json.subject' expected 1" in out and "found 2" in out
