"""The finite-loss guard end to end: a diverging run stops with a named error, keeps its good checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_diverging_run_stops_before_checkpointing_nan(
    tiny_shards: list[str], tmp_path: Path
) -> None:
    sgdm = Path(sys.executable).with_name("sgdm")
    result = subprocess.run(
        [
            str(sgdm),
            "train",
            str(REPO / "configs" / "tiny.yaml"),
            *tiny_shards,
            "train.align_steps=4",
            "train.diffusion_steps=0",
            "train.lr=1e30",  # step 1's update overflows the weights: step 2's loss is not finite
            "train.warmup_steps=0",
            "train.checkpoint_every=1",
            "train.log_every=100",
            "train.eval_every=100",
            "train.recon_images=0",
            "experiment.tracking=false",
            f"experiment.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: non-finite loss in step 2 (terms: loss, loss/align" in result.stderr
    assert "Traceback" not in result.stderr
    # The step-1 checkpoint (finite weights) is kept; nothing was written after the bad step.
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-00000001"]
    assert not (tmp_path / "model").exists()
