"""The per-particle estimates of a trained run side by side: reweighted, expected, at the mean.

For a run of ``ablate.py`` and its simulation's ``truth.npz``: each image's structure by every
``--estimate`` of ``cryodomain structures`` (workflows/structures.py::write_particle_structures), on
``--images`` random images (all with 0), with the median per-image CA RMSD to the truth, the
seconds each took, and for the reweighted estimate the median number of anchors an image's weights
spread over and the weight of its own latent mean. One JSON line per run is appended to ``--out``.

    .venv/bin/python benchmarks/accuracy/reweight.py /tmp/exp/runs/hinge_0.01_def_s0 /tmp/exp/sim_hinge_0.01_5000/truth.npz --images 0
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryodomain.workflows.evaluate import load_truth, per_image_rmsd
from cryodomain.workflows.reweighting import ANCHORS, reweight
from cryodomain.workflows.structures import ESTIMATES, write_particle_structures
from cryodomain.workflows.trained_run import TrainedRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("truth")
    parser.add_argument("--anchors", type=int, default=ANCHORS)
    parser.add_argument("--images", type=int, default=500, help="random images scored (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/exp/estimates.jsonl")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    run = TrainedRun.load(args.run)
    n = len(run.data.table)
    images = np.arange(n) if args.images == 0 else np.sort(np.random.default_rng(args.seed).choice(n, size=min(args.images, n), replace=False))
    truth_coords, conformation = load_truth(args.truth, n, run.data.structure.n_residues)
    truth_coords = np.asarray(truth_coords, dtype=np.float64)
    result = {"run": args.run, "images": len(images), "anchors": args.anchors, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder:
        for estimate in ESTIMATES:
            start = time.time()
            coords = write_particle_structures(Path(folder) / f"{estimate}.npy", run, estimate, images, n_anchors=args.anchors, progress=False)
            result[f"{estimate}_s"] = round(time.time() - start, 1)
            result[estimate] = float(np.median(per_image_rmsd(coords, truth_coords, conformation[images])))
    weights = reweight(run, run.latent_posterior(progress=False), images[: min(len(images), 200)], n_anchors=args.anchors, progress=False)
    result["effective_anchors"] = float(np.median(weights.effective_anchors()))
    result["own_weight"] = float(np.median(weights.weights[:, -1]))
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(result))
    with open(args.out, "a") as stream:
        stream.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
