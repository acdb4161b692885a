"""Per-image CA RMSD of a trained run against the true structures of a simulation, with references.

No superposition (the poses are given). Three references are scored the same way: the unmoved base
model (baseline), the best single structure (the image-weighted mean of the true conformations),
and the piecewise-rigid limit (the best contiguous segmentation of the base into the run's K
segments, each moved exactly onto every true conformation). On a subsample of images, maps of the
decoded and the true structures are compared by Fourier shell correlation (AUC and resolution at
FSC 0.5). Writes OUT/rmsd.csv (one row per image), OUT/summary.json, OUT/fsc.csv (mean curves) and
OUT/map_agreement.csv (per sampled image), and prints a table of median RMSDs (conformations in at
most 10 bins).

Example:
    cryodomain evaluate run1 --truth sim/truth.npz -o run1/evaluation
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from cryodomain.errors import input_error
from cryodomain.workflows.evaluate import REFERENCES, evaluate_run
from cryodomain.workflows.reweighting import ANCHORS
from cryodomain.workflows.structures import DEFAULT_ESTIMATE, ESTIMATES

_COLUMNS = ("run", *REFERENCES)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory")
    parser.add_argument("--truth", required=True, help="truth.npz written by cryodomain simulate")
    parser.add_argument("-o", "--outdir", help="output directory (default RUN/evaluation)")
    parser.add_argument("--checkpoint", help="checkpoint to use (default RUN/last.pt)")
    parser.add_argument("--map-images", type=int, default=100, help="images compared as maps by FSC (default 100; 0 skips)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images compared as maps (default 0)")
    parser.add_argument(
        "--estimate",
        choices=ESTIMATES,
        default=DEFAULT_ESTIMATE,
        help=f"how each image's structure is estimated, as in cryodomain structures (default {DEFAULT_ESTIMATE})",
    )
    parser.add_argument(
        "--anchors", type=int, default=ANCHORS, help=f"decoded structures each image is weighed over with --estimate reweighted (default {ANCHORS})"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def main(args: argparse.Namespace) -> None:
    if args.map_images < 0:
        raise input_error(None, "--map-images", f"must be >= 0, got {args.map_images}", "pass 0 to skip the maps")
    if args.anchors < 1:
        raise input_error(None, "--anchors", f"must be >= 1, got {args.anchors}", "pass a positive number of anchors")
    out = Path(args.outdir) if args.outdir else Path(args.run) / "evaluation"
    result = evaluate_run(
        args.run, args.truth, out, args.checkpoint, args.device, map_images=args.map_images, seed=args.seed, estimate=args.estimate, n_anchors=args.anchors
    )
    print(describe(result, out))


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def describe(result: dict, out: Path) -> str:
    """The summary as a compact table for the terminal; the full detail is in the files."""
    lines = [f"{result['n_images']} images, {result['n_conformations']} conformations, structures {result['estimate']}; written to {out}"]
    lines.append("median per-image RMSD (Å), no superposition:")
    lines.append(f"  {'conformations':>13} {'images':>6} {'run':>7} {'baseline':>8} {'best single':>11} {'rigid limit':>11}")
    rows = [
        (f"{row['conformations'][0]}" if row["conformations"][0] == row["conformations"][1] else "{}-{}".format(*row["conformations"]), row)
        for row in result["by_conformation_bin"]
    ]
    overall = {"n_images": result["n_images"], "run_median_A": result["rmsd_A"]["median"]}
    overall.update({f"{name}_median_A": result["references"][name]["rmsd_A"]["median"] for name in REFERENCES})
    for label, row in [*rows, ("all", overall)]:
        values = [_number(row[f"{name}_median_A"]) for name in _COLUMNS]
        lines.append(f"  {label:>13} {row['n_images']:>6} {values[0]:>7} {values[1]:>8} {values[2]:>11} {values[3]:>11}")
    limit = result["references"]["rigid_limit"]
    grid = "" if limit["exact"] else f" (boundaries on a grid of {limit['candidate_step']} residues: an upper bound)"
    lines.append(f"rigid limit: {limit['n_segments']} segments, boundaries {' '.join(map(str, limit['boundaries']))}{grid}")
    agreement = result.get("map_agreement")
    if agreement:
        lines.append(
            f"map agreement on {agreement['n_images']} images (FSC; median AUC, median resolution at FSC 0.5, Nyquist {agreement['nyquist_A']:.1f} Å):"
        )
        lines.append(
            "  "
            + ", ".join(
                f"{name.replace('_', ' ')} {_number(agreement[name]['auc']['median'], 3)} / {_number(agreement[name]['resolution_A_at_fsc_0.5']['median'], 1)} Å"
                for name in _COLUMNS
            )
        )
    return "\n".join(lines)
