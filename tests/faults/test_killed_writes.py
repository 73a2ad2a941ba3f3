"""SIGKILL in the middle of a write: the previous checkpoint / model export survives untouched, the
half-written temp is never taken for a complete one, and the next write of the same target removes
it. The child process writes for real and stops at a chosen point (it blocks there, reporting
that it got there), so the kill lands exactly mid-write, without timing guesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sgdm_dist.training.checkpoint import complete_checkpoints, resume_checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# The child: does the writes up to `point`, prints READY there, then waits for the kill.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    root, point = Path(sys.argv[1]), sys.argv[2]

    def stop_here(*args, **kwargs):
        print("READY", flush=True)
        sys.stdin.read()  # never returns: the parent SIGKILLs us here
        raise SystemExit("parent did not kill")

    if point.startswith("checkpoint"):
        import accelerate.checkpointing as ac
        import sgdm_dist.training.checkpoint as ck
        from faults.ckpt_support import Trainer

        trainer = Trainer(root)
        trainer.train()
        trainer.save()
        trainer.train()
        if point == "checkpoint-optimizer":  # model.safetensors written, optimizer.bin half-way
            def half_written(obj, path, **kwargs):
                Path(path).write_bytes(b"PK" * 1000)
                stop_here()
            ac.save = half_written
        else:  # every rank's files written, checksums.json / trainer_state.json not yet
            ck._write_synced = stop_here
        trainer.save()
    else:  # a model export: SGDM.save_pretrained is write_dir_atomically + this fill
        import json
        import pathlib
        import torch
        from safetensors.torch import save_file
        from sgdm_dist.utils.atomic import write_dir_atomically

        def export(version, before_config=lambda: None):
            def fill(tmp):
                save_file({{"w": torch.full((256, 256), float(version))}}, str(tmp / "model.safetensors"))
                before_config()
                (tmp / "config.json").write_text(json.dumps({{"version": version}}))
            write_dir_atomically(root / "model", fill)

        export(1)
        if point == "export-fill":  # model.safetensors written, config.json not yet
            export(2, before_config=stop_here)
        else:  # the old folder renamed aside, the new one not yet in place
            real_rename = pathlib.Path.rename
            def rename(self, target):
                if self.name.startswith(".model.tmp-"):
                    stop_here()
                return real_rename(self, target)
            pathlib.Path.rename = rename
            export(2)
    """
).format(tests=str(HERE.parent))


def kill_at(point: str, root: Path) -> None:
    """Run the child until it reports READY at ``point``, then SIGKILL it."""
    root.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), point],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "READY", child.stderr.read()[-3000:]
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["checkpoint-optimizer", "checkpoint-commit"])
def test_sigkill_mid_checkpoint_keeps_previous_and_next_save_cleans_up(
    tmp_path: Path, point: str
) -> None:
    from faults.ckpt_support import Trainer

    root = tmp_path / "ckpt"
    kill_at(point, root)
    assert sorted(p.name for p in root.iterdir()) == [
        ".tmp-checkpoint-00000002",  # the half-written one, under its temp name
        "checkpoint-00000001",
    ]
    assert (root / ".tmp-checkpoint-00000002" / "model.safetensors").is_file()

    trainer = Trainer(root)  # the restarted run
    state, folder = resume_checkpoint(trainer.acc, root, "auto", trainer.ema)
    assert state.step == 1 and folder == root / "checkpoint-00000001"
    trainer.step = state.step
    trainer.train()
    trainer.save()
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-00000001", "checkpoint-00000002"]
    assert [p.name for p in complete_checkpoints(root)][-1] == "checkpoint-00000002"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["export-fill", "export-swap"])
def test_sigkill_mid_export_keeps_the_previous_model_and_next_export_cleans_up(
    tmp_path: Path, point: str
) -> None:
    from safetensors.torch import load_file

    from sgdm_dist.utils.atomic import recover_dir

    kill_at(point, tmp_path)
    first = '{"version": 1}'
    leftovers = sorted(p.name.split("-")[0] for p in tmp_path.glob(".model.*"))
    if point == "export-fill":
        assert leftovers == [".model.tmp"]
        assert (tmp_path / "model" / "config.json").read_text() == first  # untouched
    else:  # killed between the two renames: no model/ at all, the old one renamed aside
        assert leftovers == [".model.old", ".model.tmp"]
        assert not (tmp_path / "model").exists()

    recover_dir(tmp_path / "model")  # what the next export (or any reader) does first
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (tmp_path / "model" / "config.json").read_text() == first
    assert torch.equal(
        load_file(tmp_path / "model" / "model.safetensors")["w"], torch.ones(256, 256)
    )
