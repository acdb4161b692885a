"""Time a whole training epoch from a ``.mrcs`` stack on disk against the same steps on batches in memory.

The step benchmark (``train_step.py``) cannot see a slow loader. Here a particle stack is
simulated to disk (``cryodomain simulate``, one Gaussian per residue), then

1. ``epoch``: one epoch of ``cryodomain.workflows.train.train`` on it (reading, pixel checks,
   Fourier shift, filtering, normalisation, step, metrics; the checkpoint written after the
   epoch is not counted: the epoch time is the ``seconds`` column of ``metrics.csv``);
2. ``steps only``: the same number of steps with the same model code on the epoch's batches read
   into memory beforehand.

The two are run alternately ``--repeats`` times; the ratio of the medians is the loader's overhead.

Examples:
    .venv/bin/python benchmarks/epoch_from_disk.py
    .venv/bin/python benchmarks/epoch_from_disk.py --n-images 2000 --box 128 --batch 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryodomain.allocator import keep_freed_memory
from cryodomain.workflows.config import RunConfig
from cryodomain.workflows.data import batch_loader, dataset_scale
from cryodomain.workflows.inputs import load_training_data
from cryodomain.workflows.objective import betas_at
from cryodomain.workflows.optimization import set_l2_weight
from cryodomain.workflows.train import Trainer, train, train_step

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "src" / "cryodomain" / "data" / "example_state_a.pdb"


def simulate(out_dir: Path, n_images: int, box: int, apix: float) -> Path:
    """A stack of ``n_images`` particles of the bundled example on disk; returns the star file."""
    command = [
        str(Path(sys.executable).with_name("cryodomain")),
        "simulate",
        str(EXAMPLE),
        "-o",
        str(out_dir),
        "--n-images",
        str(n_images),
        "--box",
        str(box),
        "--apix",
        str(apix),
        "--snr",
        "0.1",
        "--seed",
        "0",
    ]
    subprocess.run(command, check=True, capture_output=True)
    return out_dir / "particles.star"


def epoch_from_disk(star: Path, run_dir: Path, config: RunConfig) -> float:
    """Seconds of one epoch of ``train()`` (metrics.csv ``seconds``)."""
    train(star, EXAMPLE, run_dir, config, progress=False)
    return float(pd.read_csv(run_dir / "metrics.csv")["seconds"].iloc[-1])


def steps_in_memory(star: Path, config: RunConfig) -> float:
    """Seconds of the same steps on the epoch's batches read into memory first."""
    torch.manual_seed(config.optim.seed)
    data = load_training_data(star, EXAMPLE, config)
    scale = dataset_scale(data.dataset, config.data.normalization_sample, config.optim.seed)
    trainer = Trainer.build(data, config, scale, torch.device("cpu"))
    betas = betas_at(config, 0)
    set_l2_weight(trainer.optimizer, betas["l2"])  # as train_epoch() does
    batches = list(batch_loader(data.dataset, config.optim.batch_size, shuffle=True, seed=config.optim.seed, epoch=0))
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        train_step(trainer, batch, 0, step, betas)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--apix", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="append the result (one JSON line) to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    keep_freed_memory()  # train() does; the in-memory steps get the same allocator
    config = RunConfig.model_validate(
        {
            "model": {"n_segments": args.segments},
            "optim": {"epochs": 1, "batch_size": args.batch, "device": "cpu", "num_workers": args.num_workers},
        }
    )
    result = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "n_images": args.n_images,
        "box": args.box,
        "batch": args.batch,
        "segments": args.segments,
        "num_workers": args.num_workers,
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        star = simulate(tmp / "data", args.n_images, args.box, args.apix)
        epochs, steps = [], []
        for repeat in range(args.repeats):
            epochs.append(epoch_from_disk(star, tmp / f"run{repeat}", config))
            steps.append(steps_in_memory(star, config))
    result.update(
        epoch_s=epochs,
        steps_only_s=steps,
        epoch_median_s=float(np.median(epochs)),
        steps_only_median_s=float(np.median(steps)),
        ratio_epoch_over_steps=float(np.median(epochs) / np.median(steps)),
        load_after=" ".join(f"{v:.2f}" for v in os.getloadavg()),
    )
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
