"""Decoding benchmark: does the EEG → CLIP route generalise, against ridge and the published encoders?

Synthetic THINGS-format datasets of three generative families (``data.synthetic.family``: additive,
latency, nonlinear — they differ in which image factors drive the response and how, in latencies and
waveforms, in how subjects differ and in noise, SNR and repetitions), each at two sizes, 3 subjects,
disjoint train/test concepts, are written as raw files and put through ``sgdm prepare`` (the real path).
Every method is then trained (each job in a worker process of its own: as many workers as usable
cores, one thread each) and scored on the test split by k-way
retrieval in the space it was trained in (``sgdm_dist.baselines.scoring``): top-1/top-5 ± s.e.,
single trials and repetitions averaged, intra-subject and leave-one-subject-out (held-out subject
decoded through the subject-agnostic path). Model selection uses the validation split, which is carved
from the *training* concepts: the test split is read only to score.

    python bench/decoding.py --quick          # ~9 min on 2 idle cores (2 workers)
    python bench/decoding.py                  # the full table of docs/decoding.md
    python bench/decoding.py --quick --methods default --method shift1 model.encoder.augment_shift=1
                                              # a variant of the recipe as one more method
    python bench/decoding.py --quick --train-seeds 3   # each method at 3 training seeds; the
                                              # summary compares the default's mean over them
    python bench/decoding.py --quick --methods ridge noise-free default
                                              # + the noise-free reference: how far a decoder of
                                              # the sources before noise gets (room above ridge)

The last line is ``decoding: default/ridge top-1 ratio min=<x>`` (single-trial, intra-subject, over
datasets).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch
from tqdm.auto import tqdm

from sgdm_dist.baselines.arrays import SplitArrays, align_held_out, load_split
from sgdm_dist.baselines.model_space import centred_candidates, predict_centred
from sgdm_dist.baselines.noise_free import fit_reference, source_features
from sgdm_dist.baselines.ridge import RidgeDecoder
from sgdm_dist.baselines.scoring import score_decoder
from sgdm_dist.baselines.table import HEADER, format_row, pool_subjects, summary, table_row
from sgdm_dist.config import Config, load_config
from sgdm_dist.data.io import atomic_write_json
from sgdm_dist.data.manifest import read_manifest
from sgdm_dist.utils.threads import usable_cores

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "tiny.yaml"  # data and model sizes; methods add their recipe below
RECIPE = ROOT / "configs" / "decoding.yaml"
ALIGN_MAX_LAG_S = 0.04  # --align-unseen: ±40 ms, 2.7 s.d. of the latency family's subject shifts

# Generative families: what drives the response, waveforms, subject differences, noise and SNR.
FAMILIES: dict[str, list[str]] = {
    "additive": [
        "data.synthetic.family=additive",
        "data.synthetic.snr=3.0",
        "data.synthetic.subject_variability=0.5",
    ],
    "latency": [
        "data.synthetic.family=latency",
        "data.synthetic.snr=4.0",
        "data.synthetic.latency_jitter_s=0.01",
        "data.synthetic.subject_latency_s=0.015",
        "data.synthetic.subject_gain=0.3",
        "data.synthetic.subject_variability=0.3",
        "data.synthetic.blink_rate_hz=0.5",
    ],
    "nonlinear": [
        "data.synthetic.family=nonlinear",
        "data.synthetic.snr=4.0",
        "data.synthetic.n_factors=12",
        "data.synthetic.subject_variability=0.7",
        "data.synthetic.line_hz=60.0",
        "data.synthetic.subject_gain=0.2",
    ],
}
# size name → (train concepts, images per concept, train reps, test reps); 20 % of the training
# concepts become the validation split, 50 test concepts of one image each.
SIZES = {
    "small": (60, 2, 4, 10),  # 96 train images
    "large": (320, 4, 2, 10),  # 1024 train images
    "quick-large": (120, 4, 2, 8),  # 384 train images
    "mini": (20, 2, 2, 4),  # 32 train images: a smoke test of the pipeline, not a benchmark
}


@dataclass
class Dataset:
    name: str
    family: str
    size: str
    root: Path
    overrides: list[str] = field(default_factory=list)

    def config(self, extra: list[str] | None = None) -> Config:
        return load_config(BASE, [*self.overrides, *(extra or [])])


def make_dataset(family: str, size: str, work: Path, seed: int, prepare: bool = True) -> Dataset:
    concepts, per, train_reps, test_reps = SIZES[size]
    root = work / f"{family}-{size}"
    overrides = [
        f"experiment.seed={seed}",
        f"experiment.output_dir={root}/out",
        f"data.raw_dir={root}/raw",
        f"data.image_dir={root}/raw/images",
        f"data.shard_dir={root}/shards",
        f"data.cache_dir={root}/cache",
        "data.shard_max_samples=4000",
        "data.val_by=concept",
        "data.val_fraction=0.2",
        "data.synthetic.n_subjects=3",
        f"data.synthetic.n_train_concepts={concepts}",
        f"data.synthetic.images_per_concept={per}",
        "data.synthetic.n_test_concepts=50",
        f"data.synthetic.train_reps={train_reps}",
        f"data.synthetic.test_reps={test_reps}",
        *FAMILIES[family],
    ]
    ds = Dataset(f"{family}-{size}", family, size, root, overrides)
    if prepare and not (root / "shards" / "manifest.json").exists():
        cmd = [str(Path(sys.executable).with_name("sgdm")), "prepare", str(BASE), *overrides]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return ds


# ------------------------------------------------------------------------------------- methods


def ridge_scores(train: SplitArrays, test: SplitArrays, test_ids: np.ndarray) -> dict:
    """Ridge fitted on ``train`` trials, scored on ``test`` trials whose subject is in test_ids."""
    keep = np.isin(test.subject, test_ids)
    ridge = RidgeDecoder().fit(train.eeg, train.clip[train.target_rows()])
    pred = ridge.predict(test.eeg[keep])
    return score_decoder(pred, test.image_index[keep], test.image_ids, ridge.center(test.clip))


def noise_free_scores(cfg: Config, train: SplitArrays, test: SplitArrays, kind: str) -> dict:
    """The dataset's noise-free reference (baselines/noise_free.py): a ``kind`` decoder of the
    sources each training image evokes before noise, scored on the test images' sources (one
    prediction per image, so its single and averaged scores are the same)."""
    ids, concept, x = source_features(cfg, "train")
    clip = train.clip[np.searchsorted(train.image_ids, ids)]
    model = fit_reference(x, clip, concept, kind)
    test_ids, _, x_test = source_features(cfg, "test")
    return score_decoder(model.predict(x_test), test_ids, test.image_ids, test.clip - clip.mean(0))


def run_config(ds: Dataset, method: list[str], run: str, subjects: list[int] | None) -> Config:
    """The config ``method`` (overrides of RECIPE) trains with on ``ds``, in ``runs/<run>``."""
    extra = [
        f"experiment.output_dir={ds.root / 'runs' / run}",
        "experiment.tracking=false",
        "train.diffusion_steps=0",
        "train.recon_images=0",
        "train.checkpoint_every=100000",
        *method,
    ]
    if subjects is not None:
        extra.append(f"train.subjects={subjects}")
    return load_config(RECIPE, [*ds.overrides, *extra])


def recipe_record(cfg: Config) -> dict:
    """What a cached model is checked against: the whole resolved config, flat, so an edit of the
    recipe file (configs/decoding.yaml) invalidates the cache as surely as other overrides do."""
    recipe = cfg.flat()  # {"train.lr": 0.001, ...}, JSON values (Config.to_dict)
    del recipe["experiment.output_dir"]  # the run's own folder: renaming it changes no model
    return recipe


def train_model(
    ds: Dataset, method: list[str], run: str, subjects: list[int] | None
) -> torch.nn.Module:
    """Train ``method`` (config overrides) with ``sgdm_dist.training.loop.train`` in this process,
    or load the model cached in ``runs/<run>`` when it was trained with the same recipe."""
    from sgdm_dist.models import SGDM
    from sgdm_dist.training.loop import train

    cfg = run_config(ds, method, run, subjects)
    recipe, out = recipe_record(cfg), cfg.experiment.output_dir
    record = out / "recipe.json"
    if record.exists() or (out / "model").exists():  # a finished or an interrupted run
        _check_cached(record, recipe, method)
    if (out / "model").exists():
        return SGDM.from_pretrained(out / "model")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, recipe)  # first: a model folder never lacks its recipe
    # An interrupted run of this same recipe (checked above) continues from its last checkpoint.
    result = train(cfg, resume="auto")
    return SGDM.from_pretrained(result.model_dir)


def _check_cached(record: Path, recipe: dict, method: list[str]) -> None:
    """Refuse a cached model unless ``record`` (its resolved config) equals ``recipe``, keys the
    record predates counting as their defaults."""
    if not record.exists():
        raise SystemExit(
            f"{record.parent}: a cached model without {record.name} (what it was trained with "
            "is unknown); delete the folder or use another --work"
        )
    cached = json.loads(record.read_text())
    # A key the code gained after the model was trained reads as its default: new keys default to
    # the behaviour from before they existed, so such a model was trained with that value.
    defaults = recipe_record(load_config(None))
    cached = {**{k: defaults[k] for k in recipe.keys() - cached.keys() if k in defaults}, **cached}
    changed = [
        f"{key} {cached.get(key)!r} → {recipe.get(key)!r}"
        for key in sorted(set(cached) | set(recipe))
        if key not in cached or key not in recipe or cached[key] != recipe[key]
    ]
    if changed:
        raise SystemExit(
            f"{record.parent}: the cached model was trained with another recipe "
            f"({'; '.join(changed[:6])}; asked for overrides {method}); use another method "
            "name or --work, or delete the folder"
        )


def model_scores(model, test: SplitArrays, test_ids: np.ndarray, unseen: bool) -> dict:
    keep = np.isin(test.subject, test_ids)
    subject = np.zeros(keep.sum(), dtype=np.int64) if unseen else test.subject[keep]
    pred = predict_centred(model, test.eeg[keep], subject)
    cands = centred_candidates(model, test.clip)
    return score_decoder(pred, test.image_index[keep], test.image_ids, cands)


# Not EEG decoders: the noise-free reference's decoders of the sources before noise (no LOSO folds).
NOISE_FREE = {"noise-free": "kernel", "noise-free-linear": "linear"}
# Methods: "ridge" or config overrides on top of configs/decoding.yaml (the default recipe).
METHODS: dict[str, list[str]] = {
    "default": [],  # the ATMS encoder since 2026-12-07
    "axial": ["model.encoder.kind=axial"],  # the default encoder before
    "nice": ["model.encoder.kind=nice"],
    "atms": ["model.encoder.kind=atms"],
    "eegnet": ["model.encoder.kind=eegnet"],
    "linear": ["model.encoder.kind=linear"],
    "reference": ["model.variant=reference"],  # configs/reference.yaml on the same recipe
    "axial-500steps": [  # the recipe before #13: fixed steps, last weights (scored in centred space)
        "model.encoder.kind=axial",
        "train.align_epochs=null",
        "train.align_steps=500",
        "train.select_best=false",
        "train.early_stop_patience=null",
        "data.loader.batch_size=16",
    ],
}


@dataclass(frozen=True)
class Job:
    """One row of the table: ``method`` (config ``overrides`` on top of the recipe; none for ridge)
    on ``ds``, intra-subject or with subject ``held`` left out."""

    ds: Dataset
    method: str
    overrides: tuple[str, ...] = ()
    held: int | None = None  # None: intra-subject
    base: str = ""  # the method this is a training seed of (--train-seeds), "" for itself
    align_s: float = 0.0  # --align-unseen: the held-out subject's largest latency shift (s)

    @property
    def setting(self) -> str:
        if self.held is None:
            return "intra"
        return f"loso-{self.held}" + ("+al" if self.align_s else "")


def run_job(job: Job) -> dict:
    """Train (or fit) and score one job; runs in a worker process of its own."""
    t0 = time.perf_counter()
    cfg = job.ds.config()
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    subjects = sorted(set(train.subject.tolist()))

    def subset(a: SplitArrays, keep: np.ndarray) -> SplitArrays:
        return SplitArrays(a.eeg[keep], a.subject[keep], a.image_index[keep], a.image_ids, a.clip)

    held = job.held
    if held is not None and job.align_s:  # the same trained model, the held-out trials shifted
        sfreq = read_manifest(cfg.data.shard_dir).sfreq
        test = align_held_out(train, test, held, sfreq, job.align_s)
    if job.method in NOISE_FREE:
        scores = noise_free_scores(cfg, train, test, NOISE_FREE[job.method])
    elif job.method == "ridge" and held is None:  # one ridge per subject, as the papers' baselines
        per = [
            ridge_scores(subset(train, train.subject == s), test, np.array([s])) for s in subjects
        ]
        scores = {m: pool_subjects([p[m] for p in per]) for m in ("single", "averaged")}
    elif job.method == "ridge":
        scores = ridge_scores(subset(train, train.subject != held), test, np.array([held]))
    elif held is None:
        model = train_model(job.ds, list(job.overrides), job.method, None)
        scores = model_scores(model, test, np.array(subjects), unseen=False)
    else:
        rest = [s for s in subjects if s != held]
        model = train_model(job.ds, list(job.overrides), f"{job.method}-loso{held}", rest)
        scores = model_scores(model, test, np.array([held]), unseen=True)
    seconds = time.perf_counter() - t0
    return table_row(job.ds.name, job.method, job.base or job.method, job.setting, scores, seconds)


def _worker_init(threads: int, bench: int) -> None:
    """Each worker takes its share of the cores (one thread when there are as many jobs as cores),
    and leaves when the bench does: a killed bench must not leave workers training on."""
    import logging

    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    threading.Thread(target=_exit_with_parent, args=(bench,), daemon=True).start()


def _exit_with_parent(bench: int) -> None:
    """Poll once a second; when the bench (pid ``bench``) is gone, this worker was handed to
    another parent: exit at once. A job cut short keeps its last checkpoint, which the next run resumes."""
    while os.getppid() == bench:
        time.sleep(1.0)
    os._exit(1)


def run_jobs(jobs: list[Job], workers: int) -> list[dict]:
    """All jobs on ``workers`` processes (spawned: forking a process that holds torch threads can
    hang); rows come back in ``jobs``' order, each printed to stderr as it finishes."""
    threads = max(1, usable_cores() // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, context, initializer=_worker_init, initargs=(threads, os.getpid())
    ) as pool:
        order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))
        futures = {i: pool.submit(run_job, jobs[i]) for i in order}
        for done in tqdm(
            as_completed(futures.values()), total=len(jobs), desc="decoding", unit="job"
        ):
            print(format_row(done.result()), file=sys.stderr, flush=True)
        return [futures[i].result() for i in range(len(jobs))]


def method_table(args: argparse.Namespace) -> dict[str, list[str]]:
    """The methods asked for, name → config overrides: ``--methods`` picks from METHODS (and
    "ridge" and the NOISE_FREE references), each ``--method NAME OVERRIDE...`` adds one more."""
    extra = {name: overrides for name, *overrides in args.method or []}
    known = {"ridge": [], **{key: [] for key in NOISE_FREE}, **METHODS, **extra}
    if args.methods is not None:
        names = [*args.methods, *extra]
    else:
        names = [*(["ridge", "default"] if args.quick else ["ridge", *METHODS]), *extra]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(
            f"unknown method(s) {unknown}; known: {sorted(known)} or --method NAME ..."
        )
    return {name: known[name] for name in dict.fromkeys(names)}


def plan(args: argparse.Namespace, workers: int) -> list[Job]:
    """Datasets prepared (``workers`` at a time, before any job starts) and every job to run on them,
    in the table's order: dataset, method as asked, intra-subject before the LOSO folds."""
    sizes = args.sizes or (["small"] if args.quick else ["small", "large"])
    methods = method_table(args)
    folds = args.loso_folds
    if folds is None:
        folds = [3] if args.quick else [1, 2, 3]
    wanted = [(family, size) for size in sizes for family in args.families]
    work, prepare = args.work.resolve(), not args.dry_run
    with ThreadPoolExecutor(workers) as pool:  # each `sgdm prepare` is a process of one thread
        made = pool.map(lambda fs: make_dataset(*fs, work, args.seed, prepare), wanted)
        datasets = list(made)
    return [
        job
        for ds in datasets
        for method, overrides in methods.items()
        for name, seeded in with_seeds(method, overrides, args.train_seeds, args.seed)
        for job in (
            Job(ds, name, seeded, base=method),
            *(
                Job(ds, name, seeded, k, base=method, align_s=args.align_unseen)
                for k in (folds if method not in NOISE_FREE else [])
            ),
        )
    ]


def with_seeds(
    method: str, overrides: list[str], n: int, data_seed: int = 0
) -> list[tuple[str, tuple[str, ...]]]:
    """``method`` at n training seeds: the method itself trains at the datasets' seed (its
    ``experiment.seed``), ``METHOD-sK`` at ``experiment.seed`` = that seed + K, so no two runs share
    a seed whatever ``--seed`` is (ridge has no seed: one run)."""
    runs = [(method, tuple(overrides))]
    if method != "ridge" and method not in NOISE_FREE:
        runs += [
            (f"{method}-s{k}", (*overrides, f"experiment.seed={data_seed + k}"))
            for k in range(1, n)
        ]
    return runs


def _cost(job: Job) -> int:
    """Rough relative run time, to submit the slowest first so the workers finish together."""
    if job.method == "ridge" or job.method in NOISE_FREE:
        return 0  # seconds
    size = 10 if job.ds.size == "large" else 1  # epochs are fixed: time grows with the data
    return size * (3 if job.held is None else 2)  # intra trains on 3 subjects, LOSO on 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 methods, 1 LOSO fold")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-decoding"))
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="from: ridge " + " ".join([*NOISE_FREE, *METHODS]),
    )
    parser.add_argument(
        "--method",
        nargs="+",
        action="append",
        metavar="NAME OVERRIDE",
        help="one more method: a name and config overrides on top of configs/decoding.yaml "
        "(repeatable), e.g. --method shift1 model.encoder.augment_shift=1",
    )
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--sizes", nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=0, help="the datasets' generator seed")
    parser.add_argument(
        "--loso-folds",
        type=int,
        nargs="*",
        choices=[1, 2, 3],
        default=None,
        metavar="K",
        help="the held-out subjects of the leave-one-subject-out folds (default: 3 with --quick, "
        "else 1 2 3; none given: no LOSO folds)",
    )
    parser.add_argument(
        "--train-seeds",
        type=int,
        default=1,
        help="train every method at N seeds, the datasets' --seed + 0..N-1 (rows METHOD, "
        "METHOD-s1, ...); the summary lines compare the default's mean over them",
    )
    parser.add_argument(
        "--align-unseen",
        type=float,
        nargs="?",
        const=ALIGN_MAX_LAG_S,
        default=0.0,
        metavar="SECONDS",
        help="leave-one-subject-out: shift the held-out subject's trials to the training "
        f"subjects' evoked response first, by up to SECONDS (default {ALIGN_MAX_LAG_S}); the "
        "settings read loso-K+al",
    )
    parser.add_argument("--jobs", type=int, default=None, help="worker processes; default: cores")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the jobs (and overrides); prepare and train nothing",
    )
    args = parser.parse_args()
    if args.train_seeds < 1:
        parser.error(f"--train-seeds must be at least 1, got {args.train_seeds}")
    workers = args.jobs or usable_cores()
    jobs = plan(args, workers)
    if args.dry_run:
        for job in jobs:
            print(f"{job.ds.name:<18} {job.method:<15} {job.setting:<8} {' '.join(job.overrides)}")
        return 0
    rows = run_jobs(jobs, workers)
    print(HEADER)
    print("\n".join(format_row(r) for r in rows))
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
