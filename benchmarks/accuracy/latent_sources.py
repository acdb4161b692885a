"""What a trained run's latent coordinates encode: the conformation, or the pose.

At high noise an image says little about its conformation, but every image together says a lot
about how the model's images differ from the data at each viewing direction (a forward-model
mismatch shared by all images of a view). An encoder that sees the pose can spend the latent on
that. This script measures how much of the latent means each explains, by cross-validated
k-nearest-neighbour regression (5 folds, 20 neighbours):

- ``conformation``: the latent means predicted from the true conformation index;
- ``pose``: predicted from the pose matrix (neighbours by Frobenius distance, which orders poses
  as their rotation angle does);
- ``direction``: predicted from the viewing direction alone (the third row of the pose matrix;
  what a projection cannot tell apart up to its in-plane rotation).

Each is the fraction of the latent variance explained (R^2 summed over the latent dimensions),
printed with the run's median RMSD. Run::

    .venv/bin/python benchmarks/accuracy/latent_sources.py /tmp/exp/runs/hinge_0.01_def80_s0 /tmp/exp/sim_hinge_0.01_2000/truth.npz
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.neighbors import KNeighborsRegressor

from cryodomain.workflows.trained_run import TrainedRun

NEIGHBOURS, FOLDS = 20, 5


def explained(features: np.ndarray, latents: np.ndarray, seed: int = 0) -> float:
    """Fraction of the variance of ``latents (M, D)`` that ``features (M, F)`` predict out of fold."""
    folds = KFold(FOLDS, shuffle=True, random_state=seed)
    predicted = cross_val_predict(KNeighborsRegressor(NEIGHBOURS), features, latents, cv=folds)
    residual = ((latents - predicted) ** 2).sum()
    total = ((latents - latents.mean(axis=0)) ** 2).sum()
    return float(1.0 - residual / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("truth")
    args = parser.parse_args()
    run = TrainedRun.load(args.run)
    latents = run.latent_means_of(np.arange(len(run.data.table)))
    rotations = np.asarray(run.data.table.rotations, dtype=np.float64)
    conformation = np.load(args.truth)["conformation"].astype(np.float64)
    summary = json.load(open(f"{args.run}/eval/summary.json")) if (run.run_dir / "eval" / "summary.json").exists() else {}
    result = {
        "run": args.run,
        "rmsd_median": summary.get("rmsd_A", {}).get("median"),
        "conformation": explained(conformation[:, None], latents),
        "pose": explained(rotations.reshape(len(rotations), 9), latents),
        "direction": explained(rotations[:, 2, :], latents),
    }
    print(json.dumps({key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}))


if __name__ == "__main__":
    main()
