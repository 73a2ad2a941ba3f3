"""Shards in object storage (#17.5), against a real S3-compatible server (moto) on 127.0.0.1.

Written through fsspec/s3fs (`prepare`'s upload: manifest last), read back by the loader and
`sgdm verify` as `s3://…` and as a `pipe:` command (the aws CLI when present, else a boto3
one-liner), the URL forms deploy.md shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_support import REPO, shard_config, write_shard_set
from support import free_port, kill_group
from typer.testing import CliRunner

from sgdm_dist.cli import app
from sgdm_dist.data.loader import make_loader
from sgdm_dist.data.manifest import read_manifest

BUCKET = "sgdm-test"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # bounded readiness poll: the server answers once it listens
        assert proc.poll() is None, "moto_server exited"
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline, "moto_server did not answer in 60 s"
            time.sleep(0.2)  # polling interval while the server starts
    yield url
    kill_group(proc)


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Credentials and endpoint the standard AWS way (env), read by s3fs, boto3 and the aws CLI."""
    import fsspec

    for k, v in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    yield s3_server
    fsspec.filesystem("s3").clear_instance_cache()


def _upload(local: Path, url: str) -> None:
    """The upload `sgdm prepare` does for an object-store shard_dir (manifest last)."""
    from sgdm_dist.data.prepare import _upload as upload

    cfg = shard_config(url)
    upload(cfg, local)


def _pipe(prefix: str) -> str:
    if shutil.which("aws"):
        return f"pipe:aws s3 cp s3://{BUCKET}/{prefix}/{{}} -"
    code = "import sys,boto3; boto3.client('s3').download_fileobj(sys.argv[1], sys.argv[2], sys.stdout.buffer)"
    return f'pipe:{sys.executable} -c "{code}" {BUCKET} {prefix}/{{}}'


@pytest.mark.slow
def test_s3_and_pipe_shards_round_trip(s3_env: str, tmp_path: Path) -> None:
    import fsspec

    local = tmp_path / "local"
    m = write_shard_set(local, [5, 5, 6])  # shards 0 and 1: same count, so a swap shows in the hash
    url = f"s3://{BUCKET}/shards"
    _upload(local, url)
    fs = fsspec.filesystem("s3")
    assert fs.exists(f"{BUCKET}/shards/manifest.json")
    want = sorted(f"s{i:02d}_{j:03d}" for i, n in enumerate([5, 5, 6]) for j in range(n))
    for shard_dir in (url, _pipe("shards")):
        assert read_manifest(shard_dir).splits["train"].n_samples == m.splits["train"].n_samples
        for workers in (0, 2) if shard_dir == url else (0,):  # each pipe read starts a process
            cfg = shard_config(shard_dir, num_workers=workers, batch_size=4)
            keys = [
                k
                for r in (0, 1)
                for b in make_loader(cfg, "train", rank=r, world_size=2)
                for k, p in zip(b["key"], b["pad"].tolist(), strict=True)
                if not p
            ]
            assert sorted(keys) == want, shard_dir
        ov = [
            f"data.shard_dir={shard_dir}",
            "data.preprocess.channels=all",
            "data.preprocess.tmin=-0.2",
        ]
        result = CliRunner().invoke(app, ["verify", str(REPO / "configs/tiny.yaml"), *ov])
        assert result.exit_code == 0 and "ok: 3 shards, 16 samples" in result.output, result.output
    # A shard replaced in the bucket is caught by the streamed checksum, over s3:// and pipe:.
    victim = m.splits["train"].shards[1].name
    fs.pipe_file(
        f"{BUCKET}/shards/{victim}", (local / m.splits["train"].shards[0].name).read_bytes()
    )
    for shard_dir in (url, _pipe("shards")):
        ov = [
            f"data.shard_dir={shard_dir}",
            "data.preprocess.channels=all",
            "data.preprocess.tmin=-0.2",
        ]
        result = CliRunner().invoke(app, ["verify", str(REPO / "configs/tiny.yaml"), *ov])
        assert (
            result.exit_code == 2 and victim in result.output and "sha256 expected" in result.output
        )
    missing = CliRunner().invoke(
        app,
        ["verify", str(REPO / "configs/tiny.yaml"), f"data.shard_dir=s3://{BUCKET}/nothing-here"],
    )
    assert missing.exit_code == 2 and "no manifest.json" in missing.output
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
