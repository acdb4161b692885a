"""Write one self-contained HTML report of a trained and analysed run (analyze writes it too).

The page opens offline in any browser (plotly.js is inlined once): the run (inputs, configuration,
preflight, training time, device), the training curves, the latent space (PCA and UMAP, coloured by
k-means cluster or by any segment's motion; hover shows the particle index), the segmentation along
the sequence with the segment table, a 3-D viewer of each PC traversal with a slider, the segment
motions and how they follow the PCs, observed vs model images and, when the run was evaluated
against a simulation's truth, the accuracy with its references. Beyond 10,000 particles the latent
scatter is a random subsample over the density of all of them.

Examples:
    cryodomain report run1 -o run1/analysis/report.html
    cryodomain report run1 --analysis run1/analysis_e50 -o report_e50.html
    cryodomain report run1 --analysis run1/analysis --evaluation run1/evaluation -o report.html
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryodomain.workflows.report import default_evaluation, write_report


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory")
    parser.add_argument("--analysis", help="the -o folder of `cryodomain analyze` (default RUN/analysis)")
    parser.add_argument("--evaluation", help="the -o folder of `cryodomain evaluate` (default RUN/evaluation when it holds summary.json)")
    parser.add_argument("-o", "--output", help="HTML file to write (default ANALYSIS/report.html)")


def main(args: argparse.Namespace) -> None:
    analysis = Path(args.analysis) if args.analysis else Path(args.run) / "analysis"
    evaluation = Path(args.evaluation) if args.evaluation else default_evaluation(args.run)
    path = write_report(args.run, analysis, Path(args.output) if args.output else None, evaluation)
    print(f"Report written to {path} ({path.stat().st_size / 1e6:.1f} MB; open it in a browser, no network needed)")
