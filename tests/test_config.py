from __future__ import annotations

from pathlib import Path

import pytest

from sgdm_dist.config import Config, ConfigError, load_config, parse_override


def test_tiny_config_loads_and_extends_default(tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path)
    assert isinstance(cfg, Config)
    assert cfg.experiment.name == "sgdm-tiny"  # from tiny.yaml
    assert cfg.train.mixed_precision == "no"  # tiny overrides default's bf16
    assert cfg.data.features.clip_model == "sgdm-tiny-clip"
    # Inherited from default.yaml, untouched by tiny.yaml.
    assert cfg.data.preprocess.resample_hz == 100.0


def test_every_yaml_in_configs_is_valid(repo: Path) -> None:
    experiments = [p for p in (repo / "configs").glob("*.yaml")]
    assert experiments, "no experiment configs found"
    for path in experiments:
        load_config(path)


def test_defaults_without_file() -> None:
    cfg = load_config(None)
    assert cfg.train.lr == 1e-4


def test_dotted_overrides_are_typed(tiny_config_path: Path) -> None:
    cfg = load_config(
        tiny_config_path,
        ["train.lr=3e-4", "model.unet.block_out_channels=[32, 96]", "train.max_grad_norm=null"],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.unet.block_out_channels == [32, 96]
    assert cfg.train.max_grad_norm is None


def test_override_parse() -> None:
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("train..lr=1")


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "unknown key 'train.lrr'" in message
    assert str(path) in message
    assert "lr" in message.split("allowed:")[1]


def test_unknown_section_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(path)


def test_wrong_type_names_key_value_and_override(tiny_config_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tiny_config_path, ["data.loader.batch_size=abc"])
    message = str(err.value)
    assert "data.loader.batch_size" in message
    assert "'abc'" in message
    assert "override 'data.loader.batch_size=abc'" in message


def test_constraint_violation_in_base_file_names_base(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("train:\n  lr: -1.0\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\nexperiment:\n  name: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "top.yaml")
    assert "base.yaml" in str(err.value)
    assert "'train.lr'" in str(err.value)
    assert "greater than 0" in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config("nope.yaml")


def test_missing_base_file_names_extender(tmp_path: Path) -> None:
    (tmp_path / "top.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml \(extended from .*top.yaml\)"):
        load_config(tmp_path / "top.yaml")


def test_extends_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_malformed_yaml_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: malformed YAML at line \d+"):
        load_config(path)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_override_into_a_value_is_an_error(tiny_config_path: Path) -> None:
    with pytest.raises(ConfigError, match="'train.lr' is a value, not a section"):
        load_config(tiny_config_path, ["train.lr.x=1"])


def test_cross_field_validation(tiny_config_path: Path) -> None:
    with pytest.raises(ConfigError, match="align_steps \\+ diffusion_steps must be > 0"):
        load_config(tiny_config_path, ["train.align_steps=0", "train.diffusion_steps=0"])


def test_round_trip_through_yaml(tmp_path: Path, tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path, ["train.lr=5e-4"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_flat_keys_are_dotted(tiny_config_path: Path) -> None:
    flat = load_config(tiny_config_path).flat()
    assert flat["train.lr"] == pytest.approx(1e-3)
    assert flat["model.unet.block_out_channels"] == [32, 64]


def test_config_is_immutable(tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path)
    with pytest.raises(Exception, match="frozen"):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_yaml_12_booleans_keep_no_as_text(tmp_path: Path, tiny_config_path: Path) -> None:
    cfg = load_config(tiny_config_path, ["train.mixed_precision=no", "train.joint=true"])
    assert cfg.train.mixed_precision == "no"
    assert cfg.train.joint is True
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(path).train.mixed_precision == "no"


def test_hash_in_override_value_is_text(tiny_config_path: Path) -> None:
    assert load_config(tiny_config_path, ["experiment.name=run #3"]).experiment.name == "run #3"


def test_key_given_twice_names_key_file_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  warmup_steps: 5\n  lr: 3.0e-4\n")
    with pytest.raises(
        ConfigError, match=r"dup\.yaml.*line 4.*'lr' is given twice \(first at line 2\)"
    ):
        load_config(path)


def test_non_utf8_config_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("experiment:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(
        ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset 23\)"
    ):
        load_config(path)


def test_relative_paths_resolve_once_against_the_current_folder(
    tmp_path: Path, tiny_config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        tiny_config_path,
        [
            "experiment.tracking_uri=sqlite:///db/mlflow.db",
            "data.features.vae=stabilityai/sd-vae-ft-mse",  # a hub id: no such local folder
            "evaluate.weights_dir=~/weights",
        ],
    )
    assert cfg.data.shard_dir == str(tmp_path / "outputs/tiny/shards")
    assert cfg.experiment.output_dir == tmp_path / "outputs/tiny"
    assert cfg.data.cache_dir == tmp_path / "outputs/tiny/cache"
    assert cfg.experiment.tracking_uri == f"sqlite:///{tmp_path}/db/mlflow.db"
    assert cfg.data.features.vae == "stabilityai/sd-vae-ft-mse"
    assert cfg.evaluate.weights_dir == str(Path.home() / "weights")
    # URLs stay URLs; resolving again (a trial re-validating the dumped config) changes nothing.
    remote = load_config(tiny_config_path, ["data.shard_dir=s3://bucket/shards"])
    assert remote.data.shard_dir == "s3://bucket/shards"
    elsewhere = tmp_path / "trial"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = load_config(None, [f"experiment.output_dir={cfg.experiment.output_dir}"])
    assert again.experiment.output_dir == cfg.experiment.output_dir
    kept = load_config(tiny_config_path, keep_relative=True)  # a pod's ConfigMap
    assert kept.data.shard_dir == "outputs/tiny/shards"
