"""Named errors of the data layer that need no prepared dataset: URLs, manifest format, cache."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from data_support import REPO, shard_config, write_shard_set
from typer.testing import CliRunner

from sgdm_dist.cli import app
from sgdm_dist.data import DataError
from sgdm_dist.data.feature_cache import FeatureCache
from sgdm_dist.data.io import join_url, open_url
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.data.shard_dir import SETTINGS, check_settings, read_settings


def test_unknown_protocol_is_a_named_error_and_exit_2() -> None:
    with pytest.raises(DataError, match=r"unknown protocol 'nosuch'"):
        open_url("nosuch://bucket/shards/manifest.json")
    ov = ["data.shard_dir=nosuch://bucket/shards"]
    result = CliRunner().invoke(app, ["verify", str(REPO / "configs/tiny.yaml"), *ov])
    assert result.exit_code == 2 and "unknown protocol 'nosuch'" in result.output
    assert "Traceback" not in result.output


def test_pipe_url_needs_a_placeholder() -> None:
    assert join_url("pipe:cat /d/{}", "train/a.tar") == "pipe:cat /d/train/a.tar"
    with pytest.raises(DataError, match="needs a '{}'"):
        join_url("pipe:aws s3 cp s3://b/shards/ -", "manifest.json")


def test_pipe_shards_load_and_a_failing_pipe_is_named(tmp_path: Path) -> None:
    write_shard_set(tmp_path, [3, 2])
    cfg = shard_config(f"pipe:cat {tmp_path}/{{}}", batch_size=2)
    keys = [k for b in make_loader(cfg, "train", shuffle=False) for k in b["key"]]
    assert sorted(keys) == ["s00_000", "s00_001", "s00_002", "s01_000", "s01_001"]
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(f"pipe:cat {tmp_path}/missing/{{}}")


def test_newer_manifest_format_is_refused(tmp_path: Path) -> None:
    m = write_shard_set(tmp_path, [2])
    text = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(
        text.replace('"format_version": 1', '"format_version": 9')
    )
    with pytest.raises(DataError, match="format_version 9, this sgdm-dist reads \\[1\\]"):
        read_manifest(str(tmp_path))
    assert m.format_version == 1


def test_corrupt_feature_cache_file_is_named_and_recomputed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FeatureCache(tmp_path)
    cache.put("clip", "k" * 16, "abc", np.ones(3, dtype=np.float32))
    path = cache.path("clip", "k" * 16, "abc")
    path.write_bytes(path.read_bytes()[:20])  # truncated by a crash or a full disk
    with caplog.at_level(logging.WARNING):
        assert cache.get("clip", "k" * 16, "abc") is None
    assert str(path) in caplog.text and "corrupt" in caplog.text
    assert not path.exists() and cache.misses == 1


def test_shard_settings_are_read_once_and_a_corrupt_record_is_named(tmp_path: Path) -> None:
    assert read_settings(tmp_path) is None  # nothing recorded: nothing to compare
    check_settings(tmp_path, {"seed": 3}, overwrite=False)
    assert read_settings(tmp_path) == {"seed": 3}
    with pytest.raises(DataError, match="seed: folder 3, config 4"):
        check_settings(tmp_path, {"seed": 4}, overwrite=False)
    (tmp_path / SETTINGS).write_text('{"seed": 3')  # cut short
    with pytest.raises(DataError, match=rf"{SETTINGS}: not valid JSON"):
        read_settings(tmp_path)
