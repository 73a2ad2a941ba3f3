"""A registered SGDM whose artifact store was tampered with is refused before it is used.

One tiny model is registered once into a SQLite registry (artifacts on disk beside it, as in the
embedded default); each test damages the artifact store the way an attacker without access to the
registry database would, and the store is restored afterwards.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sgdm_dist.registry.verify import TAG_CODE, VerificationError, load_verified
from sgdm_dist.utils.checksums import CHECKSUMS, ChecksumError

REPO = Path(__file__).resolve().parents[2]
NAME = "sgdm-tamper"
URI = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from diffusers import AutoencoderKL

    from sgdm_dist.config import load_config
    from sgdm_dist.data.features import TINY_VAE_CONFIG
    from sgdm_dist.models import build_model
    from sgdm_dist.registry import register_model

    root = tmp_path_factory.mktemp("tamper")
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), [f"experiment.output_dir={root}"])
    torch.manual_seed(0)
    folder = build_model(cfg.model, n_channels=7, n_times=40, n_subjects=2).save_pretrained(
        root / "model"
    )
    AutoencoderKL(sample_size=64, **TINY_VAE_CONFIG).save_pretrained(folder / "vae")
    (folder / "experiment.yaml").write_text(cfg.to_yaml())
    (folder / "data_manifest.json").write_text(json.dumps({"subjects": [1, 2]}))
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    version = register_model(folder, tracking_uri=tracking, name=NAME, aliases=["champion"])
    code = next(root.rglob("mlartifacts/**/pyfunc_model.py"))
    yield {"tracking": tracking, "store": code.parent, "version": version}


@pytest.fixture
def store(registry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The version's folder in the artifact store, put back as registered after the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["tracking"])
    backup = tmp_path / "backup"
    shutil.copytree(registry["store"], backup)
    yield registry["store"]
    shutil.rmtree(registry["store"])
    shutil.copytree(backup, registry["store"])


def predict(model) -> np.ndarray:
    eeg = np.random.default_rng(0).standard_normal((2, 7, 40)).astype(np.float32)
    return model.predict({"eeg": eeg, "subject": np.array([1, 2])}, params={"steps": 2})


def rewrite_like_an_attacker(artifact: Path) -> None:
    """Change a weight byte and rewrite checksums.json so the folder agrees with itself."""
    from sgdm_dist.utils.checksums import write_checksums

    weights = artifact / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # the last float becomes NaN
    weights.write_bytes(bytes(data))
    write_checksums(artifact)


def test_untampered_model_loads_verified_both_ways(registry: dict, store: Path) -> None:
    import mlflow

    assert registry["version"].tags[TAG_CODE]  # the code's sha256 is in the registry database
    verified = load_verified(URI, tracking_uri=registry["tracking"], model_config={"device": "cpu"})
    plain = mlflow.pyfunc.load_model(URI, model_config={"device": "cpu"})
    a, b = predict(verified), predict(plain)
    assert a.shape == (2, 3, 64, 64) and np.array_equal(a, b)
    with pytest.raises(VerificationError, match="models:/sgdm-tamper@nobody"):
        load_verified(f"models:/{NAME}@nobody", tracking_uri=registry["tracking"])


def test_rewritten_checksums_json_is_refused_by_both_loaders(registry: dict, store: Path) -> None:
    import mlflow

    rewrite_like_an_attacker(store / "artifacts" / "sgdm")
    with pytest.raises(ChecksumError, match="differs from the sha256 recorded at registration"):
        load_verified(URI, tracking_uri=registry["tracking"])
    # The pyfunc's own load_context asks the registry for the version's recorded sha256.
    with pytest.raises(ChecksumError, match="differs from the sha256 recorded at registration"):
        mlflow.pyfunc.load_model(URI, model_config={"device": "cpu"})


def test_edited_code_file_is_refused_before_it_runs(
    registry: dict, store: Path, tmp_path: Path
) -> None:
    import mlflow

    marker = tmp_path / "code-ran"
    code = store / "pyfunc_model.py"
    code.write_text(code.read_text() + f"\nimport pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(VerificationError, match="the code MLflow would execute was modified"):
        load_verified(URI, tracking_uri=registry["tracking"])
    assert not marker.exists()
    # The documented limit: a bare mlflow.pyfunc.load_model runs the store's code before anything
    # of ours can check it (docs/registry.md says so and points to load_verified).
    mlflow.pyfunc.load_model(URI, model_config={"device": "cpu"})
    assert marker.exists()


def test_mlmodel_with_extra_code_paths_or_files_is_refused(registry: dict, store: Path) -> None:
    mlmodel = store / "MLmodel"
    original = mlmodel.read_text()
    assert "    code: null\n" in original
    mlmodel.write_text(original.replace("    code: null\n", "    code: code\n"))
    with pytest.raises(VerificationError, match="python_function flavor was altered"):
        load_verified(URI, tracking_uri=registry["tracking"])
    mlmodel.write_text(original)
    (store / "sitecustomize.py").write_text("print('hello')\n")
    with pytest.raises(
        VerificationError, match="files that no registration writes: sitecustomize.py"
    ):
        load_verified(URI, tracking_uri=registry["tracking"])
    (store / "sitecustomize.py").unlink()
    (store / "artifacts" / "sgdm" / CHECKSUMS).write_text("{}")
    with pytest.raises(ChecksumError):
        load_verified(URI, tracking_uri=registry["tracking"])


def test_next_pull_cleans_what_a_killed_pull_left(registry: dict, tmp_path: Path) -> None:
    import subprocess

    from sgdm_dist.registry import PULLED, pull_model

    dst = tmp_path / "pulled"
    pull_model(URI, dst, tracking_uri=registry["tracking"])
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs: the "killed" puller
    stale = tmp_path / f".pulled.download-{gone.pid}-0123abcd"
    (stale / "artifacts").mkdir(parents=True)
    (stale / "artifacts" / "model.safetensors").write_bytes(b"half a download")
    dst.rename(tmp_path / f".pulled.old-{gone.pid}-0123abcd")  # killed between the two renames

    pull_model(URI, dst, tracking_uri=registry["tracking"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pulled"]
    assert (dst / PULLED).is_file() and (dst / "model.safetensors").is_file()
