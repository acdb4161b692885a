"""How close a run's own segmentation could follow the truth: its limit, soft and hard.

For a trained run and the simulation's truth, two numbers that split a run's error into what
its segmentation allows and what training leaves:

* **soft limit**: per true conformation, the segment rotations and translations that bring the
  model's own deformation (the run's soft memberships at their means, rotations blended as the
  decoder blends them, each segment turning about its own centre) closest to the true CA
  positions, fitted by L-BFGS; the median over images of the per-image RMSD;
* **hard limit**: the piecewise-rigid limit of ``cryodomain evaluate`` with the run's hard
  boundaries as the only candidates (a Kabsch fit per segment and conformation).

Both are in Å, like the run's score. Run (a few minutes for 60 conformations on 2 cores)::

    .venv/bin/python benchmarks/accuracy/segmentation_limit.py /tmp/exp/sim_anm_inf_2000/truth.npz /tmp/exp/runs/anm_inf_band_s0
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from cryodomain.model.deformation import deform_points, pivot_translations, residue_transforms
from cryodomain.workflows.references import piecewise_rigid_limit
from cryodomain.workflows.trained_run import TrainedRun


def soft_limit(base: torch.Tensor, memberships: torch.Tensor, target: torch.Tensor, rounds: int = 2) -> np.ndarray:
    """Per-conformation RMSD of the best segment motions through fixed soft memberships.

    Args:
        base: ``(R, 3)`` Å base CA positions.
        memberships: ``(R, K)`` memberships at their means.
        target: ``(C, R, 3)`` Å true CA positions.
        rounds: L-BFGS restarts (200 iterations each).

    Returns:
        ``(C,)`` Å RMSD of each conformation's best fit.
    """
    n_conformations, n_segments = len(target), memberships.shape[-1]
    weights = memberships.expand(n_conformations, -1, -1)
    rotvecs = torch.zeros(n_conformations, n_segments, 3, dtype=torch.float64, requires_grad=True)
    shifts = torch.zeros(n_conformations, n_segments, 3, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([rotvecs, shifts], lr=1, max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14)

    def moved() -> torch.Tensor:
        rotations, translations = residue_transforms(weights, rotvecs, pivot_translations(weights, rotvecs, shifts, base))
        return deform_points(base, rotations, translations)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = (moved() - target).square().sum(-1).mean()
        loss.backward()
        return loss

    for _ in range(rounds):
        optimiser.step(closure)
    with torch.no_grad():
        return (moved() - target).square().sum(-1).mean(-1).sqrt().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("truth", help="the simulation's truth.npz")
    parser.add_argument("runs", nargs="+", help="trained run folders")
    args = parser.parse_args()
    truth = np.load(args.truth)
    target = torch.as_tensor(truth["coords"], dtype=torch.float64)
    conformation = truth["conformation"]
    counts = np.bincount(conformation, minlength=len(target))
    for run_dir in args.runs:
        model = TrainedRun.load(run_dir).model
        if model.rotate_about != "segment":
            raise SystemExit(f"{run_dir}: the soft limit is written for rotate_about 'segment'")
        base = model.base_coords.double()
        with torch.no_grad():
            memberships = model.segmentation(1, sample=False).double()[0]
        soft = soft_limit(base, memberships, target)
        segment, _ = model.segmentation.hard_assignment()
        boundaries = np.concatenate([[0], np.flatnonzero(segment[1:] != segment[:-1]) + 1, [len(segment)]])
        hard = piecewise_rigid_limit(base.numpy(), truth["coords"], counts, len(boundaries) - 1, candidates=boundaries[1:-1])
        print(
            json.dumps(
                {
                    "run": run_dir,
                    "soft_limit": float(np.median(soft[conformation])),
                    "hard_limit": float(np.median(hard.rmsd_A[conformation])),
                    "hard_segments": len(boundaries) - 1,
                    "boundaries": boundaries.tolist(),
                }
            )
        )


if __name__ == "__main__":
    main()
