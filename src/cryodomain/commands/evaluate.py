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

from cryodomain.workflows.evaluate import evaluate_run


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory")
    parser.add_argument("--truth", required=True, help="truth.npz written by cryodomain simulate")
    parser.add_argument("-o", "--outdir", help="output directory (default RUN/evaluation)")
    parser.add_argument("--checkpoint", help="checkpoint to use (default RUN/last.pt)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def main(args: argparse.Namespace) -> None:
    out = Path(args.outdir) if args.outdir else Path(args.run) / "evaluation"
    result = evaluate_run(args.run, args.truth, out, args.checkpoint, args.device)
    print(json.dumps(result, indent=2))
