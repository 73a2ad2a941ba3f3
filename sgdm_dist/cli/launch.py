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


def launch(
    target: Annotated[
        str, typer.Argument(help="k8s | status | logs | delete.", show_default=False)
    ],
    job: Annotated[
        str | None, typer.Argument(help="Job name (status, logs, delete).", show_default=False)
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Experiment YAML for the job.")] = None,
    nodes: Annotated[int | None, typer.Option(help="Pods (= nodes); launch.nodes.")] = None,
    gpus_per_node: Annotated[
        int | None, typer.Option(help="GPUs (= processes) per pod; launch.gpus_per_node.")
    ] = None,
    image: Annotated[str | None, typer.Option(help="Container image; launch.image.")] = None,
    name: Annotated[str | None, typer.Option(help="Job name; launch.job_name.")] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Namespace; launch.namespace (default sgdm).")
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            help="Training job kind: trainjob (Kubeflow Trainer v2) | pytorchjob (Training "
            "Operator) | auto (what the cluster serves; --dry-run: trainjob). Default launch.api."
        ),
    ] = None,
    tune: Annotated[
        bool, typer.Option("--tune", help="Launch `sgdm tune` as a RayJob instead of training.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config override, repeatable: --set train.lr=3e-4."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the manifests instead of submitting them.")
    ] = False,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="kubeconfig file (default: the client's usual lookup).")
    ] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    role: Annotated[
        str | None,
        typer.Option(help="logs: master | worker | ray-head | ray-worker | submitter."),
    ] = None,
    index: Annotated[int, typer.Option(help="logs: which pod of that role (0-based).")] = 0,
    tail: Annotated[int | None, typer.Option(help="logs: last N lines only.")] = None,
) -> None:
    """Render and submit multi-node training (TrainJob / PyTorchJob) and tuning (RayJob)."""
    # Imported here: the kubernetes client is slow to import and only this command needs it.
    from sgdm_dist.launch import APIS, Cluster, LaunchError, render, to_yaml

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
            overrides = list(set_ or [])
            for key, value in (
                ("nodes", nodes),
                ("gpus_per_node", gpus_per_node),
                ("image", image),
                ("job_name", name),
                ("namespace", namespace),
                ("api", api),
            ):
                if value is not None:
                    overrides.append(f"launch.{key}={value}")
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
            return

        if job is None:
            raise _fail(f"sgdm launch {target} needs a JOB name", EXIT_BAD_INPUT)
        ns = namespace or (resolve(config, []).launch.namespace if config else "sgdm")
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
    except LaunchError as exc:
        raise _fail(str(exc)) from None
