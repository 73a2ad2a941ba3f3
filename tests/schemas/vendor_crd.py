"""Vendor a CRD's openAPIV3Schema as test data: ``python tests/schemas/vendor_crd.py CRD.yaml OUT.yaml``.

What it changes, all of it: ``description`` strings dropped; ``status`` dropped (never sent by a
client); every full pod ``template`` (a PodTemplateSpec: ``metadata`` + a ``spec`` with
``containers`` and ``volumes`` and ``restartPolicy``) replaced by the marker ``x-sgdm-core-kind:
PodTemplateSpec``, which tests/test_k8s_manifests.py checks with kubernetes-validate's strict core
schema (where the CRD's copy of PodTemplateSpec comes from). Everything else is verbatim. The header
(source, tag, commit) is written by hand above the output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def _is_pod_template(node: dict[str, Any]) -> bool:
    props = node.get("properties", {})
    spec = props.get("spec", {}).get("properties", {})
    return set(props) == {"metadata", "spec"} and {"containers", "volumes", "restartPolicy"} <= set(
        spec
    )


def strip(node: Any) -> Any:
    if isinstance(node, list):
        return [strip(n) for n in node]
    if not isinstance(node, dict):
        return node
    if _is_pod_template(node):
        return {"type": "object", "x-sgdm-core-kind": "PodTemplateSpec"}
    out = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            continue
        if key == "properties":
            out[key] = {k: strip(v) for k, v in value.items() if k != "status"}
        else:
            out[key] = strip(value)
    return out


def main(src: str, dst: str) -> None:
    crd = yaml.safe_load(Path(src).read_text())
    (version,) = crd["spec"]["versions"]
    schema = strip(version["schema"]["openAPIV3Schema"])
    Path(dst).write_text(yaml.safe_dump({"openAPIV3Schema": schema}, sort_keys=True, width=100))


if __name__ == "__main__":
    main(*sys.argv[1:3])
