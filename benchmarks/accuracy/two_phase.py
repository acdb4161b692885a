"""The prototype of the segment search behind RESULTS.md, "Accuracy: the segmentation" (2026-12-02).

Phase 1: ablate.py with K1 fixed, evenly spaced segments for E1 epochs. Then the latent means of
`--sample` particles are decoded and the K segments that best follow them are found by the
rigid-limit programme over every residue (the product's `model.search` uses the first phase's
boundaries as the only candidates). Phase 2: ablate.py from those boundaries for E2 epochs, with
fresh networks. Needs the series of make_conformations.py; writes where ablate.py does.

    .venv/bin/python benchmarks/accuracy/two_phase.py hinge inf NAME --k1 32 --e1 12 --k 16 --e2 28 [--set2 JSON] [--p1 NAME_OF_A_PHASE_1]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryodomain.workflows.references import piecewise_rigid_limit
from cryodomain.workflows.trained_run import TrainedRun

p = argparse.ArgumentParser()
p.add_argument("dataset")
p.add_argument("snr")
p.add_argument("name")
p.add_argument("--k1", type=int, default=32)
p.add_argument("--e1", type=int, default=12)
p.add_argument("--k", type=int, default=16)
p.add_argument("--e2", type=int, default=28)
p.add_argument("--sample", type=int, default=200)
p.add_argument("--set2", default="{}")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--p1", default=None)
a = p.parse_args()
py = sys.executable
abl = "benchmarks/accuracy/ablate.py"
n1 = a.p1 or f"{a.name}_p1"
run1 = Path(f"/tmp/exp/runs/{a.dataset}_{float(a.snr):g}_{n1}_s{a.seed}")
if not (run1 / "last.pt").exists():
    subprocess.run(
        [
            py,
            abl,
            a.dataset,
            a.snr,
            n1,
            "--seed",
            str(a.seed),
            "--set",
            json.dumps({"optim.epochs": a.e1, "model.n_segments": a.k1, "optim.segmentation_lr": 1e-9}),
        ],
        check=True,
    )
t0 = time.time()
r = TrainedRun.load(run1)
rng = np.random.default_rng(0)
idx = np.sort(rng.choice(len(r.data.table), a.sample, replace=False))
z = torch.as_tensor(r.latent_means(progress=False)[idx])
with torch.no_grad():
    coords = r.model.decode(z, sample_segmentation=False).coords.numpy().astype(np.float64)
base = r.model.base_coords.numpy().astype(np.float64)
lim = piecewise_rigid_limit(base, coords, np.ones(len(coords)), a.k)
b = lim.boundaries.astype(float)
print("DP boundaries", lim.boundaries.tolist(), "fit rmsd", np.median(lim.rmsd_A), "time", time.time() - t0)
init = {"centres": ((b[:-1] + b[1:]) / 2).tolist(), "widths": (b[1:] - b[:-1]).tolist(), "centre_std": 1.0, "width_std": 1.0, "proportion_std": 0.1}
s2 = {"optim.epochs": a.e2, "model.n_segments": a.k, "model.init": init, **json.loads(a.set2)}
subprocess.run([py, abl, a.dataset, a.snr, a.name, "--seed", str(a.seed), "--set", json.dumps(s2)], check=True)
