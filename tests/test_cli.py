"""The ``sgdm`` console script, run as a real subprocess the way users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

SUBCOMMANDS = [
    "prepare",
    "train",
    "tune",
    "evaluate",
    "reconstruct",
    "register",
    "pull",
    "launch",
    "demo",
    "config",
]


def sgdm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("sgdm")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_subcommand() -> None:
    result = sgdm("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout, f"{name} missing from sgdm --help"


def test_every_subcommand_has_help() -> None:
    for name in SUBCOMMANDS:
        result = sgdm(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "Usage" in result.stdout


def test_config_show_prints_resolved_yaml(tiny_config_path: Path) -> None:
    result = sgdm("config", "show", str(tiny_config_path), "train.lr=3e-4", "experiment.name=cli")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["lr"] == 3e-4
    assert shown["experiment"]["name"] == "cli"
    assert shown["data"]["preprocess"]["resample_hz"] == 100.0


def test_config_errors_exit_2_with_message(tiny_config_path: Path) -> None:
    result = sgdm("config", "check", str(tiny_config_path), "train.bogus=1")
    assert result.returncode == 2
    assert "unknown key 'train.bogus'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exit_2() -> None:
    result = sgdm("config", "check", "does/not/exist.yaml")
    assert result.returncode == 2
    assert "config file not found: does/not/exist.yaml" in result.stderr


def test_demo_dry_run(repo: Path) -> None:
    result = sgdm("demo", "--dry-run", cwd=repo)
    assert result.returncode == 0, result.stderr
    for step in ("prepare", "train", "evaluate", "register", "pull", "reconstruct"):
        assert step in result.stdout
    assert "Steps 4-6 run beside step 3" in " ".join(result.stdout.split())
    assert "dry run: nothing executed" in result.stdout


def test_version() -> None:
    result = sgdm("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("sgdm-dist ")


def test_whole_stack_imports() -> None:
    code = "import sgdm_dist, deepspeed, accelerate, diffusers, open_clip, webdataset, mne, ray, mlflow"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_config_show_without_config_prints_defaults_with_absolute_paths(tmp_path: Path) -> None:
    result = sgdm("config", "show", "train.lr=0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["lr"] == 0.5 and shown["experiment"]["name"] == "sgdm"
    assert shown["data"]["shard_dir"] == str(tmp_path / "data/shards")
