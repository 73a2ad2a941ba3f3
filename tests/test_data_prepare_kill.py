"""`sgdm prepare` under a real SIGKILL, a second concurrent prepare, and changed settings (#16).

The killed run is the real CLI in a subprocess, paused inside a shard write (its TarWriter prints
one line and waits on stdin: the test reads that line, so no sleeps), then SIGKILLed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sgdm_dist.cli import app

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs/tiny.yaml")

PAUSE_IN_WRITE = """
import sys
import webdataset as wds
from sgdm_dist.cli import main
real = wds.TarWriter.write
written = [0]
def write(self, obj):
    out = real(self, obj)
    written[0] += 1
    if written[0] == 3:  # mid-shard: the temp tar has 3 samples, the final name does not exist
        self.stream.flush()
        print("PAUSED", self.stream.name, flush=True)
        sys.stdin.read()
    return out
wds.TarWriter.write = write
main(sys.argv[1:])
"""


def _overrides(tiny_shards: list[str], out: Path) -> list[str]:
    """Raw data and feature cache of the shared tiny set, shards into ``out``."""
    return [o for o in tiny_shards if not o.startswith("data.shard_dir=")] + [
        f"data.shard_dir={out}"
    ]


def _shared_manifest(tiny_shards: list[str]) -> bytes:
    shard_dir = next(o.split("=", 1)[1] for o in tiny_shards if o.startswith("data.shard_dir="))
    return (Path(shard_dir) / "manifest.json").read_bytes()


@pytest.mark.slow
def test_sigkilled_prepare_leaves_nothing_complete_looking_and_rerun_completes(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    ov = _overrides(tiny_shards, out)
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSE_IN_WRITE, "prepare", TINY, *ov],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        line = proc.stdout.readline()  # blocks until the shard write is paused (EOF if it died)
        assert line.startswith("PAUSED"), line
        tmp = Path(line.split()[1])
        assert tmp.exists() and ".tar.tmp-" in tmp.name
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # Nothing looks complete: no manifest, no final-named shard of the unit being written.
    assert not (out / "manifest.json").exists()
    final = tmp.with_name(tmp.name[1:].split(".tmp-")[0])
    assert not final.exists() and tmp.exists()
    stale_vae = out / "encoders" / ".vae.tmp-999999999-deadbeef"  # a killed writer's temp folder
    stale_vae.mkdir(parents=True)
    # The next run cleans up and produces exactly what an uninterrupted run produces.
    result = CliRunner().invoke(app, ["prepare", TINY, *ov])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").read_bytes() == _shared_manifest(tiny_shards)
    assert not tmp.exists() and not stale_vae.exists()
    assert [p for p in out.rglob("*") if ".tmp-" in p.name] == []


def test_second_prepare_on_a_locked_folder_is_refused(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    with open(out / ".prepare.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        result = CliRunner().invoke(app, ["prepare", TINY, *_overrides(tiny_shards, out)])
    assert result.exit_code == 2
    assert "being written by another `sgdm prepare` (pid 4242" in result.output
    assert not (out / "manifest.json").exists()


@pytest.mark.slow
def test_other_settings_are_refused_then_overwritten(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    from sgdm_dist.data.manifest import read_manifest

    out = tmp_path / "shards"
    ov = _overrides(tiny_shards, out)
    assert CliRunner().invoke(app, ["prepare", TINY, *ov]).exit_code == 0
    before = (out / "manifest.json").read_bytes()
    changed = [*ov, "data.shard_max_samples=32"]
    result = CliRunner().invoke(app, ["prepare", TINY, *changed])
    assert result.exit_code == 2
    assert "data.shard_max_samples: folder 64, config 32" in result.output
    assert "--overwrite" in result.output and "another data.shard_dir" in result.output
    assert (out / "manifest.json").read_bytes() == before  # untouched
    result = CliRunner().invoke(app, ["prepare", TINY, *changed, "--overwrite"])
    assert result.exit_code == 0, result.output
    m = read_manifest(str(out))
    listed = {s.name for info in m.splits.values() for s in info.shards}
    assert max(s.n_samples for info in m.splits.values() for s in info.shards) == 32
    assert {str(p.relative_to(out)) for p in out.rglob("*.tar")} == listed  # no old shard left


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB tmpfs: room for the tiny set's encoders (~15 MiB), not for its shards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_during_prepare_is_named(tiny_shards: list[str], small_disk: Path) -> None:
    out = small_disk / "shards"
    result = CliRunner().invoke(app, ["prepare", TINY, *_overrides(tiny_shards, out)])
    assert result.exit_code == 1, result.output
    assert "error: disk full while writing" in result.output and str(out) in result.output
    assert "Traceback" not in result.output
    assert not (out / "manifest.json").exists()
    assert [p for p in out.rglob("*") if ".tmp-" in p.name] == []
