"""Which img2img structure strength to sample with: PixCorr, SSIM, pixel two-way identification, their
shuffled-EEG floors and the condition sensitivity of one trained model at several strengths.

    python bench/structure_strength.py CONFIG --model DIR [overrides...]

Prints one row per strength (docs/model.md, "Structure guidance", records the demo's). Uses the
test split, repetition-averaged EEG, every subject, the config's sampler/steps/guidance.
"""

from __future__ import annotations

import argparse
import json

import torch

from sgdm_dist.config import load_config
from sgdm_dist.evaluation.reconstruction import FLOOR, MODEL, ReconScores, score_subject
from sgdm_dist.reconstruct.inputs import read_split
from sgdm_dist.reconstruct.model import find_vae, load_model, model_subjects, training_data
from sgdm_dist.reconstruct.sampling import SamplingOptions

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
METRICS = ("PixCorr", "SSIM", "Pixel(2-way)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--model", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    model_dir = __import__("pathlib").Path(args.model)
    model, trained = load_model(model_dir), training_data(model_dir)
    test = read_split(cfg.data.shard_dir, "test", model=model, trained=trained, progress=False)
    vae, _ = find_vae(model_dir, model.latent_shape[0], shard_dir=cfg.data.shard_dir)
    ecfg = cfg.evaluate
    rows = []
    for strength in STRENGTHS:
        options = SamplingOptions(
            steps=ecfg.steps,
            guidance_scale=ecfg.guidance_scale,
            scheduler=ecfg.scheduler,
            seed=cfg.experiment.seed,
            batch_size=ecfg.recon_batch_size,
            strength=strength,
        )
        scores = ReconScores()
        for s in test.subjects:
            index = test.image_index[s]
            ids = model_subjects(torch.full((len(index),), s), model.n_subjects)
            score_subject(
                scores,
                f"sub-{s:02d}",
                model,
                test.mean_eeg[s],
                ids,
                test.stimuli(index),
                vae,
                options,
                None,
                baselines=True,
                progress=False,
                metric_kw={},
            )
        tables = scores.tables(cfg.experiment.seed)
        row = {"strength": strength}
        for m in METRICS:
            row[m] = round(tables[MODEL]["mean"][m], 3)
            row[f"{m} floor"] = round(tables[FLOOR]["mean"][m], 3)
        sens = scores.sensitivity_table()["mean"]["condition_sensitivity"]
        row["condition sensitivity"] = round(sens, 2) if sens != float("inf") else "inf"
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
