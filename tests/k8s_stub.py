"""A stub Kubernetes API server on loopback for the ``sgdm launch`` tests (none can run here).

It records every request, stores created objects, answers discovery (``/apis/GROUP/VERSION``) for
the CRDs it is told are installed, and serves pod lists and logs; :func:`running_stub` starts it
and writes a kubeconfig pointing at it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

TOKEN = "stub-token-123"
# What the stub serves when all operators are installed: (group, version) → resource plurals.
SERVED = {
    ("trainer.kubeflow.org", "v1alpha1"): [
        "trainjobs",
        "trainingruntimes",
        "clustertrainingruntimes",
    ],
    ("kubeflow.org", "v1"): ["pytorchjobs", "tfjobs"],
    ("ray.io", "v1"): ["rayjobs", "rayclusters"],
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    auth: str | None


@dataclass
class StubState:
    requests: list[Request] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # path → stored object
    missing_crds: set[str] = field(default_factory=set)  # plurals not served (discovery, create)
    pods: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)


def _handler(state: StubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._send(
                code,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": reason,
                    "message": message,
                    "code": code,
                },
            )

        def _record(self) -> Request:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            req = Request(
                self.command, url.path, parse_qs(url.query), body, self.headers.get("Authorization")
            )
            state.requests.append(req)
            return req

        def do_POST(self) -> None:
            req = self._record()
            plural = req.path.rsplit("/", 1)[-1]
            if plural in state.missing_crds:
                self._status(404, "NotFound", "the server could not find the requested resource")
                return
            key = f"{req.path}/{req.body['metadata']['name']}"
            if key in state.objects:
                self._status(
                    409,
                    "AlreadyExists",
                    f"{plural} {req.body['metadata']['name']!r} already exists",
                )
                return
            created = json.loads(json.dumps(req.body))
            created["metadata"]["uid"] = f"uid-{len(state.objects)}"
            state.objects[key] = created
            self._send(201, created)

        def do_GET(self) -> None:
            req = self._record()
            parts = req.path.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "apis":  # discovery: /apis/GROUP/VERSION
                served = [
                    p for p in SERVED.get(tuple(parts[1:]), []) if p not in state.missing_crds
                ]
                if not served:
                    self._status(
                        404, "NotFound", "the server could not find the requested resource"
                    )
                    return
                resources = [
                    {"name": p, "singularName": "", "namespaced": True, "kind": p, "verbs": []}
                    for p in served
                ]
                self._send(
                    200,
                    {
                        "kind": "APIResourceList",
                        "apiVersion": "v1",
                        "groupVersion": "/".join(parts[1:]),
                        "resources": resources,
                    },
                )
            elif req.path.endswith("/log"):
                pod = req.path.split("/")[-2]
                self._send(200, state.logs.get(pod, ""), "text/plain")
            elif req.path.endswith("/pods"):
                selector = req.query.get("labelSelector", [""])[0]
                key, _, value = selector.partition("=")
                items = [p for p in state.pods if p["metadata"]["labels"].get(key) == value]
                self._send(
                    200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
                )
            elif req.path in state.objects:
                self._send(200, state.objects[req.path])
            else:
                self._status(404, "NotFound", f"{req.path} not found")

        def do_DELETE(self) -> None:
            req = self._record()
            if state.objects.pop(req.path, None) is None:
                self._status(404, "NotFound", f"{req.path} not found")
                return
            self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    return Handler


@contextlib.contextmanager
def running_stub(tmp_path: Path) -> Iterator[tuple[StubState, Path]]:
    """Start the server; yields its state and a kubeconfig (in ``tmp_path``) that points at it."""
    state = StubState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "stub",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                    }
                ],
                "users": [{"name": "me", "user": {"token": TOKEN}}],
                "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me"}}],
                "current-context": "stub",
            }
        )
    )
    try:
        yield state, kubeconfig
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
