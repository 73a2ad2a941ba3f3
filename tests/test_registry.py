"""The model registry: `sgdm register` / `sgdm pull` against a real `mlflow server` and a bare SQLite file.

One tiny model is trained (real `sgdm train`, tracked on a loopback server) and shared by the
module; each registry test registers its own version so the tests do not depend on each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from support import kill_group, start_mlflow_server

from sgdm_dist.config import ConfigError, load_config
from sgdm_dist.registry import (
    CHECKSUMS,
    TAG_FILES,
    TAG_MANIFEST,
    TAG_VERSION,
    RegistryError,
    check_reachable,
    link_evaluation,
    load_vae_for_model,
    parse_model_uri,
    pull_model,
    redact,
    register_model,
    resolve_model,
    verify_folder,
    write_checksums,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
SGDM = str(Path(sys.executable).with_name("sgdm"))
TRAIN = [
    "train.align_steps=4",
    "train.diffusion_steps=4",
    "train.eval_every=4",
    "train.recon_images=0",
    "train.checkpoint_every=100",
]


def sgdm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SGDM, *[str(a) for a in args]], capture_output=True, text=True, timeout=600, cwd=cwd
    )


# ---------------------------------------------------------------------------------------------
# units: no model, no server


def test_model_uris_parse_and_bad_ones_are_named() -> None:
    assert parse_model_uri("models:/sgdm-tiny@champion").alias == "champion"
    ref = parse_model_uri("models:/sgdm-tiny/12")
    assert (ref.name, ref.version, ref.alias) == ("sgdm-tiny", "12", None)
    for bad in ("runs:/abc/model", "models:/", "models:/a/b/c", "models:/a@"):
        with pytest.raises(RegistryError, match="models:/NAME@ALIAS"):
            parse_model_uri(bad)
    with pytest.raises(RegistryError, match="version must be a number"):
        parse_model_uri("models:/sgdm/latest")


def test_credentials_never_appear_in_printed_uris() -> None:
    assert (
        redact("https://alice:s3cret@mlflow.example:5000/x") == "https://***@mlflow.example:5000/x"
    )
    assert redact("postgresql://u:p@db/mlflow") == "postgresql://***@db/mlflow"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_aliases_are_validated_in_the_config() -> None:
    cfg = load_config(TINY, ["registry.aliases=[candidate, champion]"])
    assert cfg.registry.aliases == ["candidate", "champion"]
    for bad in ("latest", "v3", "has space"):
        with pytest.raises(ConfigError, match="registry.aliases"):
            load_config(TINY, [f"registry.aliases=[{bad}]"])


def test_checksums_catch_changed_missing_and_added_files(tmp_path: Path) -> None:
    root = tmp_path / "m"
    (root / "vae").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "vae" / "config.json").write_text("{}")
    digest = write_checksums(root)
    assert set(verify_folder(root, digest)) == {"model.safetensors", "vae/config.json"}

    (root / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(RegistryError, match=r"changed model\.safetensors"):
        verify_folder(root, digest)
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "vae" / "config.json").unlink()
    (root / "extra.pkl").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"missing vae/config\.json; unexpected extra\.pkl"):
        verify_folder(root, digest)
    # A list rewritten to match tampered files no longer matches the recorded digest.
    write_checksums(root)
    assert verify_folder(root)  # self-consistent again...
    with pytest.raises(RegistryError, match="recorded at registration"):
        verify_folder(root, digest)  # ...but not what the registry recorded


def test_unreachable_server_fails_fast_with_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RegistryError, match=rf"http://\*\*\*@127\.0\.0\.1:{port} is unreachable"):
        check_reachable(f"http://bob:pw@127.0.0.1:{port}")


def test_register_refuses_bad_names_and_an_unreachable_server(tmp_path: Path) -> None:
    import socket

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(RegistryError, match="model name 'a/b' is not valid"):
        register_model(folder, tracking_uri="sqlite:///unused.db", name="a/b")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = sgdm(
        "register", TINY, f"experiment.tracking_uri=http://127.0.0.1:{port}",
        "--model-dir", folder,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"error: MLflow tracking server http://127.0.0.1:{port} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_local_folders_resolve_as_is_and_non_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match=r"missing model\.safetensors"):
        resolve_model(str(tmp_path))


def test_pull_without_any_tracking_uri_says_what_to_pass(tmp_path: Path) -> None:
    result = subprocess.run(
        [SGDM, "pull", "models:/sgdm@champion", "--to", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert result.returncode == 2
    assert "pass --tracking-uri or --config, or set MLFLOW_TRACKING_URI" in result.stderr


# ---------------------------------------------------------------------------------------------
# end to end: a trained tiny model, a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("mlflow-server")
    proc, uri = start_mlflow_server(root)
    try:
        yield uri, root
    finally:
        kill_group(proc)


@pytest.fixture(scope="module")
def trained(
    tiny_shards: list[str], tmp_path_factory: pytest.TempPathFactory, server: tuple[str, Path]
) -> dict:
    """A tiny model trained by `sgdm train`, tracked on the server; the run id comes from it."""
    uri, _ = server
    out = tmp_path_factory.mktemp("registry-run")
    overrides = [*tiny_shards, f"experiment.output_dir={out}", f"experiment.tracking_uri={uri}"]
    result = sgdm("train", TINY, *overrides, *TRAIN, cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sgdm-tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    return {
        "overrides": overrides,
        "out": out,
        "model_dir": out / "model",
        "run": run,
        "shard_dir": Path(tiny_shards[2].split("=", 1)[1]),
    }


def reconstruct(model_dir: Path, vae: torch.nn.Module, eeg: torch.Tensor) -> torch.Tensor:
    from sgdm_dist.models import SGDM as Model

    model = Model.from_pretrained(model_dir)
    return model.reconstruct(eeg, torch.tensor([1, 2, 0]), vae=vae, steps=3, seed=11)


@pytest.mark.slow
def test_register_promote_pull_in_fresh_process_reconstructs_identically(
    trained: dict, server: tuple[str, Path], tmp_path: Path
) -> None:
    uri, _ = server
    name = "sgdm-e2e"
    # Register from the config, the way a user does after `sgdm train`.
    result = sgdm(
        "register",
        TINY,
        *trained["overrides"],
        "--name",
        name,
        "--alias",
        "candidate",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"registered models:/{name}/1" in result.stdout
    assert "aliases:   candidate" in result.stdout

    client = MlflowClient(uri)
    mv = client.get_model_version(name, "1")
    run = trained["run"]
    assert mv.run_id == run.info.run_id  # lineage: logged into the training run it came from
    manifest_sha = hashlib.sha256((trained["shard_dir"] / "manifest.json").read_bytes()).hexdigest()
    assert mv.tags[TAG_MANIFEST] == manifest_sha == run.data.tags[TAG_MANIFEST]
    assert float(mv.tags["metric.val/top1"]) == run.data.metrics["val/top1"]
    assert mv.tags[TAG_VERSION] == run.data.tags["sgdm_dist.version"]
    assert len(mv.tags[TAG_FILES]) == 64
    assert client.get_run(run.info.run_id).info.status == "FINISHED"  # left as training left it

    # Promote: champion onto version 1 without registering anything new.
    result = sgdm(
        "register", TINY, *trained["overrides"], "--name", name, "--version", "1",
        "--alias", "champion",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert client.get_registered_model(name).aliases == {"candidate": "1", "champion": "1"}

    # Pull in a fresh process with only the server URI: no config, no shards needed.
    dst = tmp_path / "pulled"
    result = sgdm("pull", f"models:/{name}@champion", "--to", dst, "--tracking-uri", uri)
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = json.loads((dst / CHECKSUMS).read_text())["files"]
    assert {"model.safetensors", "config.json", "experiment.yaml", "data_manifest.json"} <= set(
        checksums
    )
    assert any(f.startswith("vae/") and f.endswith(".safetensors") for f in checksums)
    for line in ("version:   1", "aliases:   candidate, champion", run.info.run_id):
        assert line in result.stdout
    for file, digest in checksums.items():
        assert f"{digest}  {file}" in result.stdout
    assert json.loads((dst / "pulled.json").read_text())["version"] == "1"

    # Same seed → the same images from the pulled model (with its bundled VAE) as from the
    # original folder decoded by the VAE of the shards.
    from sgdm_dist.data.features import load_vae

    eeg = torch.randn(
        3, *json_shape(trained["model_dir"]), generator=torch.Generator().manual_seed(0)
    )
    original = reconstruct(trained["model_dir"], load_vae(str(trained["shard_dir"])), eeg)
    pulled = reconstruct(resolve_model(str(dst)), load_vae_for_model(dst), eeg)
    assert original.shape == (3, 3, 64, 64)
    assert torch.equal(original, pulled)

    # The evaluate helper's entry point: models:/ → a verified local folder (cached pull).
    cache = tmp_path / "cache"
    folder = resolve_model(f"models:/{name}@candidate", tracking_uri=uri, dst=cache)
    assert folder == cache and (cache / "model.safetensors").is_file()


def json_shape(model_dir: Path) -> tuple[int, int]:
    config = json.loads((model_dir / "config.json").read_text())
    return config["n_channels"], config["n_times"]


@pytest.mark.slow
def test_pyfunc_loads_with_mlflow_and_predicts_the_same_images(
    trained: dict, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    uri, _ = server
    name = "sgdm-pyfunc"
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    registered = register_model(
        trained["model_dir"], tracking_uri=uri, name=name, aliases=["candidate"]
    )
    assert registered.version == "1" and registered.aliases == ["candidate"]

    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # registering left no global
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate", model_config={"device": "cpu"})
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == ["eeg", "subject"]
    eeg = np.random.default_rng(1).standard_normal((3, *json_shape(trained["model_dir"])))
    # Subject 7 was never trained: the pyfunc maps it to the agnostic fallback 0.
    images = model.predict(
        {"eeg": eeg.astype(np.float32), "subject": np.array([1, 2, 7])},
        params={"steps": 3, "seed": 11},
    )
    assert images.shape == (3, 3, 64, 64) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    from sgdm_dist.data.features import load_vae

    direct = reconstruct(
        trained["model_dir"], load_vae(str(trained["shard_dir"])), torch.from_numpy(eeg).float()
    )
    np.testing.assert_array_equal(images, direct.numpy())


@pytest.mark.slow
def test_sqlite_only_registry_refuses_a_tampered_artifact(
    trained: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No server: the embedded default (a SQLite file, artifacts beside it)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "sgdm-local"
    registered = register_model(
        trained["model_dir"], tracking_uri=uri, name=name, aliases=["champion"]
    )
    client = MlflowClient(uri)
    run = client.get_run(registered.run_id)
    assert run.info.run_name.startswith("register-")  # the training run lives on the server
    assert run.data.params["train.lr"] == "0.001"  # the model's own config as lineage params
    artifacts = tmp_path / "mlartifacts"
    assert artifacts.is_dir()  # beside the database, not in the working directory

    good = pull_model(f"models:/{name}@champion", tmp_path / "good", tracking_uri=uri)
    assert good.files == verify_folder(tmp_path / "good")

    # resolve_model's cache: a verified copy is reused, a damaged one is pulled again.
    cached = resolve_model(f"models:/{name}@champion", tracking_uri=uri, cache_dir=tmp_path / "c")
    inode = (cached / "model.safetensors").stat().st_ino
    again = resolve_model(f"models:/{name}@champion", tracking_uri=uri, cache_dir=tmp_path / "c")
    assert again == cached and (again / "model.safetensors").stat().st_ino == inode
    (cached / "config.json").write_text("{}")
    with caplog.at_level(logging.INFO, logger="sgdm_dist.registry.pull"):
        repaired = resolve_model(f"models:/{name}/1", tracking_uri=uri, cache_dir=tmp_path / "c")
    assert repaired == cached and verify_folder(repaired, registered.tags[TAG_FILES])
    assert "cached copy is damaged" in caplog.text and "config.json" in caplog.text
    # A copy of another model under the same version number (what a store recreated at the same
    # address leaves in the cache) is replaced, and not reported as damage.
    pulled = json.loads((cached / "pulled.json").read_text())
    (cached / "pulled.json").write_text(json.dumps({**pulled, "files_sha256": "0" * 64}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sgdm_dist.registry.pull"):
        fresh = resolve_model(f"models:/{name}/1", tracking_uri=uri, cache_dir=tmp_path / "c")
    assert "of another model than version 1 holds now" in caplog.text
    assert "damaged" not in caplog.text
    recorded = json.loads((fresh / "pulled.json").read_text())["files_sha256"]
    assert recorded == registered.tags[TAG_FILES]

    (stored,) = artifacts.rglob("sgdm/model.safetensors")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=r"checksum mismatch.*changed model\.safetensors"):
        pull_model(f"models:/{name}/1", tmp_path / "bad", tracking_uri=uri)
    assert not (tmp_path / "bad").exists()  # nothing that looks like a model is left behind

    # Rewriting checksums.json to match does not help: its digest is in the registry database.
    write_checksums(stored.parent)
    with pytest.raises(RegistryError, match="recorded at registration"):
        pull_model(f"models:/{name}/1", tmp_path / "bad", tracking_uri=uri)
    # An earlier good pull is not replaced by a refused one.
    with pytest.raises(RegistryError):
        pull_model(f"models:/{name}/1", tmp_path / "good", tracking_uri=uri)
    assert verify_folder(tmp_path / "good", registered.tags[TAG_FILES])


@pytest.mark.slow
def test_unknown_model_alias_version_and_occupied_folder_are_clear_errors(
    trained: dict, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_model(
        trained["model_dir"],
        tracking_uri=uri,
        name="known",
        aliases=["candidate"],
        bundle_vae=False,
    )
    cases = {
        "models:/unknown@champion": f"unknown registered model 'unknown' in {uri}; "
        "registered models: ['known']",
        "models:/known@champion": "no alias 'champion'; aliases: candidate→v1",
        "models:/known/4": "no version 4; versions: [1]",
    }
    for ref, message in cases.items():
        with pytest.raises(RegistryError, match=message.replace("[", r"\[").replace("]", r"\]")):
            pull_model(ref, tmp_path / "x", tracking_uri=uri)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(RegistryError, match="refusing to replace it"):
        pull_model("models:/known@candidate", occupied, tracking_uri=uri)
    assert (occupied / "notes.txt").read_text() == "mine"
    # A model registered without its VAE still decodes through the shards of experiment.yaml.
    pulled = pull_model("models:/known/1", tmp_path / "novae", tracking_uri=uri).path
    assert not (pulled / "vae").exists()
    shards = yaml.safe_load((pulled / "experiment.yaml").read_text())["data"]["shard_dir"]
    assert Path(shards) == trained["shard_dir"]
    assert load_vae_for_model(pulled).config.latent_channels == 4


def test_models_uri_without_a_store_is_named_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError, match="set MLFLOW_TRACKING_URI or pass --tracking-uri"):
        resolve_model("models:/sgdm@champion", tracking_uri=None)
    missing = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(RegistryError, match=f"no MLflow store at sqlite:///{missing}"):
        resolve_model("models:/sgdm@champion", tracking_uri=f"sqlite:///{missing}")
    assert list(tmp_path.iterdir()) == []  # no ./mlflow.db, no folders


@pytest.mark.slow
def test_register_by_run_needs_no_config_and_keeps_lineage(
    trained: dict, server: tuple[str, Path], tmp_path: Path
) -> None:
    """`sgdm register --run`: the model training uploaded; the training run (even one a kill left
    RUNNING) is the lineage, never a newer evaluation run of the same folder, which is linked."""
    uri, _ = server
    client = MlflowClient(uri)
    run_id = trained["run"].info.run_id
    model_dir = trained["model_dir"]
    # The run's weights tag covers every weights file of the diffusers layout, by relative path.
    files = ("model.safetensors", "unet/diffusion_pytorch_model.safetensors")
    shas = {f: hashlib.sha256((model_dir / f).read_bytes()).hexdigest() for f in files}
    weights = hashlib.sha256("".join(f"{f} {shas[f]}\n" for f in files).encode()).hexdigest()
    tags = client.get_run(run_id).data.tags
    assert tags["sgdm.model_sha256"] == weights and len(tags["sgdm.files_sha256"]) == 64
    # What `sgdm evaluate` leaves: a newer finished run with the same output_dir and data hash.
    experiment_id = trained["run"].info.experiment_id
    evaluation = client.create_run(experiment_id, run_name="evaluate-x").info.run_id
    client.log_param(evaluation, "experiment.output_dir", str(trained["out"]))
    for key, value in {
        TAG_MANIFEST: tags[TAG_MANIFEST],
        "sgdm.stage": "evaluate",
        "evaluation.model_dir": str(model_dir),
    }.items():
        client.set_tag(evaluation, key, value)
    client.set_terminated(evaluation, "FINISHED")
    client.update_run(run_id, status="RUNNING")  # the state a killed process leaves on the server
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    try:
        by_run = subprocess.run(
            [SGDM, "register", "--run", run_id, "--alias", "cluster", "--tracking-uri", uri],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert by_run.returncode == 0, by_run.stderr[-3000:]
        assert "registered models:/sgdm-tiny/" in by_run.stdout  # name from the run's params
        assert f"evaluated: {evaluation}" in by_run.stdout
        (mv,) = client.search_model_versions("name = 'sgdm-tiny'")
        assert mv.run_id == run_id and mv.tags["sgdm.training_run"] == run_id
        assert mv.tags["sgdm.evaluation_runs"] == evaluation
        assert client.get_run(run_id).info.status == "RUNNING"  # registering never reopens runs
        pulled = pull_model("models:/sgdm-tiny@cluster", tmp_path / "p", tracking_uri=uri)
        assert {f: pulled.files[f] for f in files} == shas

        # From the local folder: found by its weights although RUNNING, not the evaluation run.
        registered = register_model(
            model_dir, tracking_uri=uri, name="sgdm-tiny", experiment="sgdm-tiny", bundle_vae=False
        )
        assert registered.run_id == run_id and registered.version == "2"
        refused = subprocess.run(
            [SGDM, "register", "--run", evaluation, "--tracking-uri", uri],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert refused.returncode == 2 and "holds no uploaded model" in refused.stderr
    finally:
        client.set_terminated(run_id, "FINISHED")


@pytest.mark.slow
def test_an_evaluation_after_registration_links_itself_to_the_versions_of_its_weights(
    trained: dict, server: tuple[str, Path], tmp_path: Path
) -> None:
    """`sgdm demo` registers while it evaluates: whichever finishes last makes the link, and an
    evaluation of a folder retrained since its registration links to nothing."""
    uri, _ = server
    client = MlflowClient(uri)
    model_dir = trained["model_dir"]
    registered = register_model(
        model_dir, tracking_uri=uri, name="sgdm-linked", experiment="sgdm-tiny", bundle_vae=False
    )
    version = registered.version
    evaluation = client.create_run(trained["run"].info.experiment_id).info.run_id
    linked = link_evaluation(client, evaluation, str(model_dir))
    assert f"sgdm-linked/{version}" in linked

    def linked_runs() -> list[str]:  # newest first; earlier tests' evaluation runs may follow
        return (
            client.get_model_version("sgdm-linked", version).tags["sgdm.evaluation_runs"].split(",")
        )

    assert linked_runs()[0] == evaluation
    before = linked_runs()
    assert link_evaluation(client, evaluation, str(model_dir)) == linked
    assert linked_runs() == before  # linking twice adds no second entry

    retrained = tmp_path / "retrained"
    shutil.copytree(model_dir, retrained)
    (retrained / "model.safetensors").write_bytes(b"other weights")
    later = client.create_run(trained["run"].info.experiment_id).info.run_id
    assert link_evaluation(client, later, str(retrained)) == []
    assert later not in linked_runs()
