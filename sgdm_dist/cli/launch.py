"""``sgdm launch``: Kubernetes jobs for training (TrainJob or PyTorchJob) and tuning (RayJob).

sgdm launch k8s --config C --nodes N --gpus-per-node G --image IMG [--api trainjob|pytorchjob]
                [--tune] [--dry-run]
sgdm launch status JOB | logs JOB [--role worker --index 1] | delete JOB
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sgdm_dist.cli.common import EXIT_BAD_INPUT, resolve

ACTIONS = ("k8s", "status", "logs", "delete")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


# launch's longer argument and option declarations, named here so its signature stays a list.
TargetArg = Annotated[str, typer.Argument(help="k8s | status | logs | delete.", show_default=False)]
JobArg = Annotated[
    str | None, typer.Argument(help="Job name (status, logs, delete).", show_default=False)
]
GpusPerNodeOpt = Annotated[
    int | None, typer.Option(help="GPUs (= processes) per pod; launch.gpus_per_node.")
]
NamespaceOpt = Annotated[
    str | None, typer.Option(help="Namespace; launch.namespace (default sgdm).")
]
ApiOpt = Annotated[
    str | None,
    typer.Option(
        help="Training job kind: trainjob (Kubeflow Trainer v2) | pytorchjob (Training "
        "Operator) | auto (what the cluster serves; --dry-run: trainjob). Default launch.api."
    ),
]
TuneOpt = Annotated[
    bool, typer.Option("--tune", help="Launch `sgdm tune` as a RayJob instead of training.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Config override, repeatable: --set train.lr=3e-4."),
]
DryRunOpt = Annotated[bool, typer.Option(help="Print the manifests instead of submitting them.")]
KubeconfigOpt = Annotated[
    Path | None, typer.Option(help="kubeconfig file (default: the client's usual lookup).")
]
RoleOpt = Annotated[
    str | None,
    typer.Option(help="logs: master | worker | ray-head | ray-worker | submitter."),
]


def launch(
    target: TargetArg,
    job: JobArg = None,
    config: Annotated[Path | None, typer.Option(help="Experiment YAML for the job.")] = None,
    nodes: Annotated[int | None, typer.Option(help="Pods (= nodes); launch.nodes.")] = None,
    gpus_per_node: GpusPerNodeOpt = None,
    image: Annotated[str | None, typer.Option(help="Container image; launch.image.")] = None,
    name: Annotated[str | None, typer.Option(help="Job name; launch.job_name.")] = None,
    namespace: NamespaceOpt = None,
    api: ApiOpt = None,
    tune: TuneOpt = False,
    set_: SetOpt = None,
    dry_run: DryRunOpt = False,
    kubeconfig: KubeconfigOpt = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    role: RoleOpt = None,
    index: Annotated[int, typer.Option(help="logs: which pod of that role (0-based).")] = 0,
    tail: Annotated[int | None, typer.Option(help="logs: last N lines only.")] = None,
) -> None:
    """Render and submit multi-node training (TrainJob / PyTorchJob) and tuning (RayJob)."""
    # Imported here: the kubernetes client is slow to import and only this command needs it.
    from sgdm_dist.launch import APIS, LaunchError

    if target not in ACTIONS:
        raise _fail(
            f"unknown target {target!r}; expected one of {', '.join(ACTIONS)}", EXIT_BAD_INPUT
        )
    try:
        if target == "k8s":
            if config is None:
                raise _fail("sgdm launch k8s needs --config CONFIG", EXIT_BAD_INPUT)
            if api is not None and api not in ("auto", *APIS):
                raise _fail(
                    f"--api {api!r}: expected one of auto, {', '.join(APIS)}", EXIT_BAD_INPUT
                )
            launch_values = {
                "nodes": nodes,
                "gpus_per_node": gpus_per_node,
                "image": image,
                "job_name": name,
                "namespace": namespace,
                "api": api,
            }
            overrides = _overrides(set_, launch_values)
            _k8s(config, overrides, tune, dry_run, kubeconfig, context)
            return
        if job is None:
            raise _fail(f"sgdm launch {target} needs a JOB name", EXIT_BAD_INPUT)
        ns = namespace or (resolve(config, []).launch.namespace if config else "sgdm")
        _manage(target, job, ns, kubeconfig, context, role, index, tail)
    except LaunchError as exc:
        raise _fail(str(exc)) from None


def _overrides(set_: list[str] | None, launch_values: dict[str, object]) -> list[str]:
    """--set overrides, then the launch.* options that were given (so they win)."""
    overrides = list(set_ or [])
    for key, value in launch_values.items():
        if value is not None:
            overrides.append(f"launch.{key}={value}")
    return overrides


def _k8s(
    config: Path,
    overrides: list[str],
    tune: bool,
    dry_run: bool,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Render the training or tuning job; print it (--dry-run) or submit it to the cluster."""
    from sgdm_dist.launch import Cluster, render, to_yaml

    cfg = resolve(config, overrides, keep_relative=True)  # paths resolve in the pod
    if dry_run:
        typer.echo(to_yaml(render(cfg, "tune" if tune else "train")), nl=False)
        return
    cluster = Cluster.connect(kubeconfig, context)
    chosen = cfg.launch.api
    if not tune and chosen == "auto":
        chosen = cluster.training_api()  # discovery: whichever CRD is installed
    created = cluster.submit(render(cfg, "tune" if tune else "train", chosen))
    for obj in created:
        meta = obj["metadata"]
        typer.echo(f"created {obj['kind']} {meta['namespace']}/{meta['name']}")
    typer.echo(f"follow it: sgdm launch status {created[-1]['metadata']['name']}")


def _manage(
    target: str,
    job: str,
    ns: str,
    kubeconfig: Path | None,
    context: str | None,
    role: str | None,
    index: int,
    tail: int | None,
) -> None:
    """Show the status of, print the logs of, or delete a job already on the cluster."""
    from sgdm_dist.launch import Cluster

    cluster = Cluster.connect(kubeconfig, context)
    if target == "status":
        st = cluster.status(ns, job)
        typer.echo(f"{st.kind} {st.namespace}/{st.name}: {st.state}")
        for key, value in st.detail.items():
            typer.echo(f"  {key}: {value}")
        for pod, phase in st.pods.items():
            typer.echo(f"  pod {pod}: {phase}")
    elif target == "logs":
        pod, text = cluster.logs(ns, job, role, index, tail)
        typer.secho(f"== {pod} ==", err=True)
        typer.echo(text, nl=False)
    else:
        for what in cluster.delete(ns, job):
            typer.echo(f"deleted {what}")
