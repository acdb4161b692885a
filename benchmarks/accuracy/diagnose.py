"""Where a trained run's error sits: the encoder, the decoder, or the regularisers.

For a run of ``ablate.py`` (or ``run.py``) and its simulation's ``truth.npz``, prints per bin of ten
conformations:

- ``actual``: median per-image CA RMSD of the decoded latent means (what ``evaluate`` reports);
- ``oracle``: for each true conformation, the RMSD of the nearest structure the decoder makes from
  any image's latent mean. Far below ``actual``: the encoder is what limits; close: the decoder
  (the segmentation and the motions it can make) is;
- ``reach``: how far along the true displacement from state 0 those nearest structures go
  (``<P - T0, T - T0> / |T - T0|^2``; 1 is all the way) and the rms of what is left orthogonal to it;
- ``limit``: the piecewise-rigid limit of those images, from the run's ``eval/rmsd.csv`` when
  ``evaluate`` wrote one;
- the continuity and clash losses of the true structures themselves (weights apart), against
  state 0: what the regularisers would charge the truth;
- and, over all images, how far the decoded structures' chain-neighbour CA-CA distances stray
  from state 0's (the truth's own, for comparison): whether the decoded structures keep their bonds.

    .venv/bin/python benchmarks/accuracy/diagnose.py /tmp/exp/runs/anm_0.1_sig235_s0 /tmp/exp/sim_anm_0.1_2000/truth.npz
"""

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import torch

from cryodomain.model.losses import clash_loss, clash_pairs_light, continuity_loss
from cryodomain.workflows.evaluate import per_image_rmsd
from cryodomain.workflows.structures import write_coordinates
from cryodomain.workflows.trained_run import TrainedRun

BIN = 10


def bond_stretch(structures: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``(M,)`` Å: the largest change of a chain-neighbour distance (by index) of ``structures`` ``(M, R, 3)`` against ``base`` ``(R, 3)``."""
    length = np.linalg.norm(structures[:, 1:] - structures[:, :-1], axis=-1)
    return np.abs(length - np.linalg.norm(base[1:] - base[:-1], axis=-1)).max(axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("truth")
    args = parser.parse_args()
    truth = np.load(args.truth)
    coords, conformation = truth["coords"].astype(np.float64), truth["conformation"]
    run = TrainedRun.load(args.run)
    z = run.latent_means(progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        decoded = np.array(write_coordinates(Path(scratch) / "coords.npy", run.model, z, progress=False), dtype=np.float64)
    actual = per_image_rmsd(decoded, coords, conformation)
    # (N images, C conformations): RMSD of every decoded structure to every true one.
    to_truth = np.stack([np.sqrt(((decoded - coords[c]) ** 2).sum(-1).mean(-1)) for c in range(len(coords))], axis=1)
    nearest = to_truth.argmin(axis=0)  # (C,) the image whose decoded structure is nearest each truth
    oracle = to_truth[nearest, np.arange(len(coords))]
    limit = np.full(len(conformation), np.nan)
    table = Path(args.run) / "eval" / "rmsd.csv"
    if table.exists():
        limit = np.array([float(row["rigid_limit_rmsd_A"]) for row in csv.DictReader(table.open())])
    truth_t = torch.as_tensor(coords, dtype=torch.float32)
    chain = torch.stack([torch.arange(len(coords[0]) - 1), torch.arange(1, len(coords[0]))], dim=1)
    clash_pairs = clash_pairs_light(truth_t[0])
    print(f"all: actual {np.median(actual):.3f} Å, oracle {np.median(oracle[conformation]):.3f} Å")
    decoded_stretch, truth_stretch = bond_stretch(decoded, coords[0]), bond_stretch(coords, coords[0])
    print(
        f"CA-CA change from state 0, largest per structure (Å): decoded median {np.median(decoded_stretch):.2f}, "
        f"p90 {np.percentile(decoded_stretch, 90):.2f}, max {decoded_stretch.max():.2f}; truth max {truth_stretch.max():.2f}"
    )
    print("conformations  limit  actual  oracle  reach  orthogonal  truth continuity (Å²)  truth clash")
    for first in range(0, len(coords), BIN):
        states = np.arange(first, min(first + BIN, len(coords)))
        images = np.isin(conformation, states)
        shift = coords[states] - coords[0]
        moved = decoded[nearest[states]] - coords[0]
        reach = (moved * shift).sum((1, 2)) / np.clip((shift * shift).sum((1, 2)), 1e-9, None)
        orthogonal = np.sqrt(((moved - reach[:, None, None] * shift) ** 2).sum(-1).mean(-1))
        continuity = continuity_loss(truth_t[states], truth_t[0], chain).item()
        clash = clash_loss(truth_t[states], clash_pairs, 4.0).item()
        print(
            f"{first:3d}-{states[-1]:<3d}      {np.median(limit[images]):.3f}  {np.median(actual[images]):.3f}   {np.median(oracle[states]):.3f}   "
            f"{np.median(reach):.2f}   {np.median(orthogonal):.2f}        {continuity:.4f}               {clash:.4f}"
        )


if __name__ == "__main__":
    main()
