"""Analyse a trained run: latent PCA and traversals, k-means clusters, segmentation, pictures.

Writes OUT/z.npy (latent mean per particle), PCA traversals OUT/pcK/trajectory.pdb (multi-model,
structures at the real latents nearest to 10 points from the 5th to the 95th percentile of PC K),
k-means centres OUT/kmeans/centers.pdb with one RELION star file per cluster, the segmentation
OUT/segments.csv and OUT/segments.pdb (segment in the B-factor column), segment motions per
particle OUT/motions.csv (angle, axis, translation, centre displacement; how they follow each PC in
OUT/motions_vs_pc.csv, along each traversal in OUT/pcK/motions.csv), per-residue RMSF as
B-factors OUT/flexibility.pdb, ChimeraX scripts OUT/chimerax/*.cxc (open one in ChimeraX), PNG
pictures, and all of it on one interactive page OUT/report.html (see `cryodomain report`). With
--full-atom, bond and clash checks per structure (structures_quality.csv beside each multi-model
file). mmCIF (.cif) replaces PDB when a chain name is longer than 2 characters.

Examples:
    cryodomain analyze run1 -o run1/analysis
    cryodomain analyze run1 -o run1/analysis --pcs 2 --points 20 --kmeans 20 --full-atom
    cryodomain analyze run2 -o run2/analysis_e50 --checkpoint run2/checkpoints/epoch_0050.pt --volumes  # run2 ran 100 epochs: every 10th is kept
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cryodomain.workflows.analyze import AnalysisOutputs, AnalysisSettings, analyze_run
from cryodomain.workflows.distributed import resolve_device, start, stop

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    defaults = AnalysisSettings()
    parser.add_argument("run", help="training run directory")
    parser.add_argument("-o", "--outdir", required=True, help="output directory")
    parser.add_argument("--checkpoint", help="checkpoint to analyse (default RUN/last.pt)")
    parser.add_argument("--pcs", type=int, default=defaults.n_pcs, help="principal components to traverse (default %(default)s)")
    parser.add_argument("--points", type=int, default=defaults.n_points, help="structures per traversal (default %(default)s)")
    parser.add_argument("--kmeans", type=int, default=defaults.n_clusters, help="k-means clusters (default %(default)s)")
    parser.add_argument("--umap", action="store_true", help="also embed the latents with UMAP (needs: pip install umap-learn)")
    parser.add_argument("--full-atom", action="store_true", help="structures with every atom (default CA/C1' only)")
    parser.add_argument("--volumes", action="store_true", help="render MRC maps of the k-means centres and of every traversal point")
    parser.add_argument("--box", type=int, help="map side in voxels (default: the run's image box)")
    parser.add_argument("--apix", type=float, help="map voxel size in Å (default: the run's pixel size)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def main(args: argparse.Namespace) -> None:
    settings = AnalysisSettings(
        n_pcs=args.pcs,
        n_points=args.points,
        n_clusters=args.kmeans,
        umap=args.umap,
        full_atom=args.full_atom,
        volumes=args.volumes,
        volume_box=args.box,
        volume_pixel_size_A=args.apix,
    )
    processes = start(resolve_device(args.device).type)
    try:
        out = analyze_run(args.run, Path(args.outdir), settings, checkpoint=args.checkpoint, device=args.device, processes=processes)
    finally:
        stop(processes)
    if out is not None:
        print(describe(out))


def describe(out: AnalysisOutputs) -> str:
    """Where to look, as a few lines for the terminal."""
    lines = [f"Analysis written to {out.out_dir}"]
    if out.report is not None:
        lines.append(f"  report:           {out.report} (everything on one page: open it in a browser)")
    lines.append("  pictures:")
    lines += [f"    {path}" for path in out.pictures]
    lines += ["  PC traversals (multi-model, play as a series in ChimeraX):"]
    lines += [f"    {path}" for path in out.trajectories]
    lines += [
        f"  k-means centres:  {out.kmeans_structures} ({len(out.cluster_stars)} cluster star files beside it)",
        f"  segmentation:     {out.segments_table}, {out.segments_structure} (colour by B-factor: segment + 1, 0 = fixed)",
        f"  latent means:     {out.latents}",
    ]
    if out.motions:
        lines.append(f"  segment motions:  {out.motions[0]} (vs the PCs: {out.out_dir / 'motions_vs_pc.csv'}; along traversals: pc*/motions.csv)")
    if out.flexibility is not None:
        lines.append(f"  flexibility:      {out.flexibility} (RMSF over all particles in the B-factor column, Å)")
    if out.volumes:
        lines.append(f"  volumes:          {len(out.volumes)} maps (.mrc) in {out.out_dir}/kmeans and {out.out_dir}/pc*/")
    if out.chimerax:
        scripts = [path.name for path in out.chimerax if path.suffix == ".cxc"]
        lines.append(f"  ChimeraX:         {out.chimerax[0].parent}/ ({', '.join(scripts)})")
    if out.quality_summary:
        lines.append(f"  {out.quality_summary}")
    return "\n".join(lines)
