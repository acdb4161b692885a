"""One ablation run of the accuracy suite: simulate (cached), train with overrides, evaluate.

The runs behind the "Accuracy: what the defaults are made of" table of benchmarks/RESULTS.md
(2000 images of a conformation series, 64 px at 2 Å, every atom rendered, seed 100 + seed, the
given config plus JSON overrides), one JSON line each in /tmp/exp/results.jsonl. Each run is
scored by the posterior's expected structures (``run``, as ``cryodomain structures`` decodes) and
by the structures at the latent means (``at_mean``). The series come from make_conformations.py
(default folder /tmp/cryodomain_accuracy/conformations).

    .venv/bin/python benchmarks/accuracy/ablate.py hinge inf NAME --config C.yaml --set '{"optim.epochs": 40}'
"""

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from cryodomain.workflows.config import load_config
from cryodomain.workflows.evaluate import evaluate_run, load_truth, per_image_rmsd
from cryodomain.workflows.simulate import SimulationSettings, simulate
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun

CONF = Path("/tmp/cryodomain_accuracy/conformations")
p = argparse.ArgumentParser()
p.add_argument("dataset")
p.add_argument("snr", type=float)
p.add_argument("name")
p.add_argument("--n", type=int, default=2000)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--config", default=None)
p.add_argument("--set", default="{}")
p.add_argument(
    "--atoms", choices=("all", "residue"), default="all", help="residue: the training model's own forward model (a CA Gaussian of 2.35 Å per residue)"
)
p.add_argument("--estimate", default="expected", help="how evaluate estimates each structure (the product's default is reweighted, slower)")
a = p.parse_args()
logging.basicConfig(level=logging.WARNING)
matched = "_residue" if a.atoms == "residue" else ""
sim = Path(f"/tmp/exp/sim_{a.dataset}_{a.snr:g}_{a.n}{matched}")
if not (sim / "particles.star").exists():
    settings = SimulationSettings(
        n_images=a.n, box=64, pixel_size_A=2.0, snr=a.snr, atoms=a.atoms, sigma_A=2.35 if a.atoms == "residue" else 2.0, seed=100 + a.seed
    )
    simulate([CONF / f"{a.dataset}.pdb"], sim, settings)
overrides = {"optim.seed": a.seed, **json.loads(a.set)}
config = load_config(a.config, overrides)
run = Path(f"/tmp/exp/runs/{a.dataset}_{a.snr:g}_{a.name}{matched}_s{a.seed}")
t0 = time.time()
train(sim / "particles.star", CONF / f"{a.dataset}_state0.pdb", run, config, force=True, progress=False)
t_train = time.time() - t0
summary = evaluate_run(run, sim / "truth.npz", run / "eval", map_images=0, estimate=a.estimate)
# The same run decoded at each image's latent mean (`cryodomain structures --at-mean`), for comparison.
trained = TrainedRun.load(run)
everyone = np.arange(len(trained.data.table))
with torch.no_grad():
    z = torch.as_tensor(trained.latent_means_of(everyone))
    at_mean = np.concatenate([trained.model.decode(chunk, sample_segmentation=False).coords.double().numpy() for chunk in z.split(256)])
truth_coords, conformation = load_truth(sim / "truth.npz", len(everyone), at_mean.shape[1])

rows = list(csv.DictReader(open(run / "metrics.csv")))
corr = [float(r["correlation"]) for r in rows]
ref = summary["references"]
out = {
    "dataset": a.dataset,
    "snr": a.snr,
    "name": a.name,
    "seed": a.seed,
    "n": a.n,
    "atoms": a.atoms,
    "set": overrides,
    "config": a.config,
    "estimate": a.estimate,
    "run": summary["rmsd_A"]["median"],
    "p90": summary["rmsd_A"]["p90"],
    "at_mean": float(np.median(per_image_rmsd(at_mean, np.asarray(truth_coords, dtype=np.float64), conformation))),
    "limit": ref["rigid_limit"]["rmsd_A"]["median"],
    "single": ref["best_single"]["rmsd_A"]["median"],
    "base": ref["baseline"]["rmsd_A"]["median"],
    "train_s": round(t_train, 1),
    "corr_last5": [round(c, 4) for c in corr[-5:]],
    "best_epoch": int(np.argmin(corr)) + 1,
    "epochs": len(corr),
}
print(json.dumps(out))
with open("/tmp/exp/results.jsonl", "a") as f:
    f.write(json.dumps(out) + "\n")
