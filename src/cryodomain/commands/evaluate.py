"""Per-image CA RMSD of a trained run against the true structures of a simulation.

No superposition (the poses are given). The unmoved base model is scored too, as the baseline.
Writes OUT/rmsd.csv (one row per image) and OUT/summary.json, and prints the summary.

Example:
    cryodomain evaluate run1 --truth sim/truth.npz -o run1/evaluation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryodomain.workflows.evaluate import load_truth, per_image_rmsd, write_report
from cryodomain.workflows.structures import write_coordinates
from cryodomain.workflows.train import latent_means, load_run, resolve_device


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory")
    parser.add_argument("--truth", required=True, help="truth.npz written by cryodomain simulate")
    parser.add_argument("-o", "--outdir", help="output directory (default RUN/evaluation)")
    parser.add_argument("--checkpoint", help="checkpoint to use (default RUN/last.pt)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def evaluate_run(run: str | Path, truth: str | Path, out: Path, checkpoint: str | None = None, device: str = "auto") -> dict:
    model, state, data = load_run(run, checkpoint, resolve_device(device))
    truth_coords, conformation = load_truth(truth, len(data.table), data.structure.n_residues)
    z = latent_means(model, data, state)
    predicted = write_coordinates(out / "coords.npy", model, z)
    rmsd = per_image_rmsd(predicted, truth_coords, conformation)
    baseline = per_image_rmsd(data.structure.coords, truth_coords, conformation)
    return write_report(out, rmsd, baseline, conformation)


def main(args: argparse.Namespace) -> None:
    out = Path(args.outdir) if args.outdir else Path(args.run) / "evaluation"
    result = evaluate_run(args.run, args.truth, out, args.checkpoint, args.device)
    print(json.dumps(result, indent=2))
