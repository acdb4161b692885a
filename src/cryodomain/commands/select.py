"""Write a subset of a run's particles for RELION and cryoSPARC, chosen in the latent space.

Criteria combine as AND; --invert keeps the complement. --clusters takes the k-means clusters of an
analysis (numbers as in kmeans/cluster_NN.star, from 0); --indices a file of 0-based particle indices
(one per line, or .npy); --pc K:min:max a range of PC K's coordinate (from 1, as analyze computes
it; repeat for several PCs); --segment-motion K:min:max the rotation of segment K (from 1) in
degrees, or its centre displacement in Å with --motion displacement. The analysis is RUN/analysis
unless --analysis says otherwise.

Writes OUT/particles.star (RELION 3.1 to 5: the input rows with their columns and optics table,
image paths relative to OUT), OUT/particles.cs with OUT/particles.csg (cryoSPARC: open the .csg
with an "Import Result Group" job; a .cs input keeps its rows and uids, so put OUT inside the
cryoSPARC project; from a star, absolute image paths and fresh uids) and OUT/indices.txt (0-based
rows of the input particle file).

Examples:
    cryodomain select run1 -o run1/cluster3 --clusters 3
    cryodomain select run1 -o run1/pc1_low --pc 1:-3:-1 --pc 2:-1:1 --format star
    cryodomain select run1 -o run1/rest --indices picked.txt --invert
    cryodomain select run1 -o run1/open --segment-motion 2:10:90
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryodomain.errors import InputError
from cryodomain.workflows.select import FORMATS, MOTION_MEASURES, Selection, SelectionOutputs, parse_clusters, parse_range, select_particles


def _argument(parse, *flag):
    """An argparse type from a parser raising InputError (argparse then reports the flag)."""

    def convert(text: str):
        try:
            return parse(text, *flag)
        except InputError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory")
    parser.add_argument("-o", "--outdir", required=True, help="output directory")
    parser.add_argument("--clusters", type=_argument(parse_clusters), help="k-means clusters to keep, e.g. 1,3 (numbers of kmeans/cluster_NN.star)")
    parser.add_argument("--indices", type=Path, help="file of 0-based particle indices to keep (one per line, or .npy)")
    parser.add_argument(
        "--pc", action="append", default=[], type=_argument(parse_range, "--pc"), metavar="K:MIN:MAX", help="keep PC K coordinates in [MIN, MAX]; repeatable"
    )
    parser.add_argument(
        "--segment-motion", type=_argument(parse_range, "--segment-motion"), metavar="K:MIN:MAX", help="keep particles whose segment K moves by MIN to MAX"
    )
    parser.add_argument(
        "--motion",
        choices=MOTION_MEASURES,
        default="angle",
        help="segment motion measure: rotation angle in degrees or centre displacement in Å (default %(default)s)",
    )
    parser.add_argument("--invert", action="store_true", help="keep the particles the criteria reject")
    parser.add_argument("--analysis", type=Path, help="cryodomain analyze output folder (default RUN/analysis)")
    parser.add_argument("--format", choices=FORMATS, default="both", help="RELION star, cryoSPARC cs+csg, or both (default %(default)s)")
    parser.add_argument("--checkpoint", help="checkpoint for --segment-motion (default RUN/last.pt)")


def main(args: argparse.Namespace) -> None:
    selection = Selection(
        clusters=args.clusters,
        indices_file=args.indices,
        pc_ranges=tuple(args.pc),
        segment_motion=args.segment_motion,
        motion=args.motion,
        invert=args.invert,
        analysis_dir=args.analysis,
        formats=args.format,
    )
    print(describe(select_particles(args.run, Path(args.outdir), selection, checkpoint=args.checkpoint)))


def describe(out: SelectionOutputs) -> str:
    """What was written, as a few lines for the terminal."""
    lines = [f"Selected {out.n_selected} of {out.n_particles} particles into {out.out_dir}"]
    if out.star is not None:
        lines.append(f"  RELION:     {out.star}")
    if out.cs is not None:
        lines.append(f"  cryoSPARC:  {out.cs} (Import Result Group: {out.csg})")
    lines.append(f"  indices:    {out.indices} (0-based rows of the input particle file)")
    return "\n".join(lines)
