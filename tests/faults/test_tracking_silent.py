"""Tracking never blocks training, even when the server accepts connections and never answers.

A real TCP listener on 127.0.0.1 completes every handshake and then stays silent (the worst case:
no "connection refused" to fail fast on). `sgdm train` pointed at it must finish every step and
export the model; the time it may spend on tracking is bounded by the config
(``experiment.tracking_timeout_s`` per request, ``experiment.tracking_close_timeout_s`` at the end),
so the test needs no clock: a tracker that ignores the bound runs into pytest's timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """``http://127.0.0.1:PORT`` of a server that accepts and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", held
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.slow
@pytest.mark.timeout(300)  # generous: the bound under test is the config's, far below this
def test_training_finishes_against_a_silent_tracking_server(
    tiny_shards: list[str], silent_server: tuple[str, list[socket.socket]], tmp_path: Path
) -> None:
    uri, held = silent_server
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("sgdm")),
            "train",
            str(REPO / "configs" / "tiny.yaml"),
            *tiny_shards,
            "train.align_steps=2",
            "train.diffusion_steps=0",
            "train.log_every=1",
            "train.eval_every=100",
            "train.checkpoint_every=100",
            "train.recon_images=0",
            f"experiment.output_dir={out}",
            f"experiment.tracking_uri={uri}",
            "experiment.tracking_timeout_s=1",
            "experiment.tracking_close_timeout_s=5",
        ],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert held, "training never even connected to the tracking server"
    assert f"MLflow at {uri} unreachable" in result.stderr
    assert "tracking calls were not delivered" in result.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2  # every step ran and was recorded locally
    assert (out / "model" / "model.safetensors").is_file()
