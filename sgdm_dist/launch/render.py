"""Config → the Kubernetes objects of one job: a ConfigMap with the in-pod config, then the job.

The pods never see the user's YAML files (``extends`` chains, relative paths): they get the resolved
config with the cluster paths filled in (shards claim or URL, the shared outputs claim, tracking from
the Secret's env vars).
"""

from __future__ import annotations

from typing import Any, Literal

import yaml

from sgdm_dist.config import Config, validate
from sgdm_dist.launch import pods
from sgdm_dist.launch.training import render_pytorchjob
from sgdm_dist.launch.trainjob import render_trainjob
from sgdm_dist.launch.tuning import render_rayjob

Target = Literal["train", "tune"]
TARGETS: tuple[Target, ...] = ("train", "tune")
Api = Literal["trainjob", "pytorchjob"]
APIS: tuple[Api, ...] = ("trainjob", "pytorchjob")


def pod_config(cfg: Config, name: str) -> Config:
    """The config the pods run: cluster paths in, tracking URI left to MLFLOW_TRACKING_URI."""
    tree = cfg.to_dict()
    tree["experiment"]["output_dir"] = f"{pods.OUTPUTS_MOUNT}/{name}"
    launch = cfg.launch
    if launch.shard_url is not None:
        tree["data"]["shard_dir"] = launch.shard_url
    elif launch.shards_claim is not None:
        tree["data"]["shard_dir"] = pods.SHARDS_MOUNT
    tree["experiment"]["tracking_uri"] = None
    return validate(tree, {})


def render_config_map(cfg: Config, name: str, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": pods.config_map_name(name),
            "namespace": cfg.launch.namespace,
            "labels": pods.labels(name, component),
        },
        "data": {pods.CONFIG_FILE: pod_config(cfg, name).to_yaml()},
    }


def training_api(cfg: Config, api: str | None = None) -> Api:
    """``api``, else ``launch.api``; ``auto`` without a cluster to ask means the current one, TrainJob."""
    chosen = api or cfg.launch.api
    if chosen == "auto":
        return "trainjob"
    if chosen not in APIS:
        raise ValueError(f"unknown training API {chosen!r}; expected one of {', '.join(APIS)}")
    return chosen  # type: ignore[return-value]


def render(cfg: Config, target: Target = "train", api: str | None = None) -> list[dict[str, Any]]:
    """``[ConfigMap, TrainJob | PyTorchJob]`` for ``train``, ``[ConfigMap, RayJob]`` for ``tune``."""
    if target not in TARGETS:
        raise ValueError(f"unknown launch target {target!r}; expected one of {', '.join(TARGETS)}")
    name = pods.job_name(cfg)
    if target == "tune":
        return [render_config_map(cfg, name, "tuning"), render_rayjob(cfg, name)]
    job = (
        render_trainjob(cfg, name)
        if training_api(cfg, api) == "trainjob"
        else render_pytorchjob(cfg, name)
    )
    return [render_config_map(cfg, name, "training"), job]


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A multi-document YAML stream, ``kubectl apply -f -`` ready."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
