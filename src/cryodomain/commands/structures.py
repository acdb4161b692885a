"""Decode chosen images into structures: each image's expected structure under its latent posterior
(the mean of the structures of 32 latent draws; --at-mean: the structure at the latent mean), or
given latent points (--z).

Always writes OUT/coords.npy (images x residues x 3, Å, float32, in the frame of the input model;
images x atoms x 3 with --full-atom); with --format pdb or cif also one multi-model file
OUT/structures.pdb|cif that ChimeraX plays as a series; with --split one mmCIF per model
OUT/models/model_0001.cif ... (numbered as in the multi-model file). With --full-atom,
OUT/structures_quality.csv checks every structure: peptide C-N bonds outside 1.2-1.5 Å, O3'-P
outside 1.5-1.7 Å, heavy-atom clashes under 2.2 Å between residues not bonded to each other (row
0 is the input model). Decoding streams to disk.

Examples (also under torchrun, e.g. torchrun --nproc_per_node=4 -m cryodomain structures ...):
    cryodomain structures run1 -o run1/structures
    cryodomain structures run1 -o sel --indices chosen.txt --full-atom --format cif
    cryodomain structures run1 -o path --z points.npy --format pdb
    cryodomain structures run1 -o sel --indices chosen.txt --full-atom --format cif --split
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from cryodomain.errors import input_error
from cryodomain.io.structure_writer import write_structure
from cryodomain.workflows.distributed import Processes, resolve_device, start, stop
from cryodomain.workflows.reweighting import ANCHORS
from cryodomain.workflows.structure_quality import quality_summary, write_quality
from cryodomain.workflows.structures import DEFAULT_ESTIMATE, ESTIMATES, write_coordinates, write_particle_structures, write_split_models
from cryodomain.workflows.trained_run import TrainedRun

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory")
    parser.add_argument("-o", "--outdir", required=True, help="output directory")
    parser.add_argument("--checkpoint", help="checkpoint to use (default RUN/last.pt)")
    parser.add_argument("--indices", help="text file of 0-based particle indices (default: all particles)")
    parser.add_argument("--z", help=".npy file of latent points (M x D) to decode instead of particles")
    parser.add_argument(
        "--estimate",
        choices=ESTIMATES,
        default=DEFAULT_ESTIMATE,
        help=f"how each image's structure is estimated (default {DEFAULT_ESTIMATE}): reweighted, the decoded structures weighed by the image's "
        "likelihood; expected, the mean over its latent posterior; mean, decoded at its latent mean",
    )
    parser.add_argument("--at-mean", action="store_true", help="the same as --estimate mean")
    parser.add_argument(
        "--anchors", type=int, default=ANCHORS, help=f"decoded structures each image is weighed over with --estimate reweighted (default {ANCHORS})"
    )
    parser.add_argument("--full-atom", action="store_true", help="move every atom with its residue (default CA/C1' only)")
    parser.add_argument("--format", choices=("npy", "pdb", "cif"), default="npy", help="also write a multi-model file (default npy only)")
    parser.add_argument("--split", action="store_true", help="also write one mmCIF file per model in OUT/models/")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def read_indices(path: str | Path, n_images: int) -> np.ndarray:
    try:
        indices = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as error:
        raise input_error(path, None, f"cannot read particle indices ({error})", "give one 0-based integer per line") from None
    if indices.size and (indices.min() < 0 or indices.max() >= n_images):
        raise input_error(path, None, f"indices must lie in 0..{n_images - 1}", "use 0-based particle indices")
    return indices


def read_latents(path: str | Path, latent_dim: int) -> np.ndarray:
    try:
        z = np.load(path)
    except (OSError, ValueError) as error:
        raise input_error(path, None, f"cannot read latent points ({error})", "save an (M, D) array with numpy.save") from None
    z = np.atleast_2d(z).astype(np.float32)
    if z.shape[1] != latent_dim:
        raise input_error(path, None, f"points have dimension {z.shape[1]}, the run's latent space {latent_dim}", "pass points of the run's latent space")
    return z


def main(args: argparse.Namespace) -> None:
    if args.anchors < 1:
        raise input_error(None, "--anchors", f"must be >= 1, got {args.anchors}", "pass a positive number of anchors")
    device = resolve_device(args.device)
    processes = start(device.type)
    try:
        _structures(args, device, processes)
    finally:
        stop(processes)


def _structures(args: argparse.Namespace, device, processes: Processes) -> None:
    if processes.distributed and device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
    run = TrainedRun.load(args.run, args.checkpoint, device)
    data = run.data
    out = Path(args.outdir)
    atoms_of = data.structure if args.full_atom else None
    if args.z is not None:
        z = read_latents(args.z, run.config.model.latent_dim)
        coords = write_coordinates(out / "coords.npy", run.model, z, atoms_of=atoms_of, processes=processes)
    else:
        chosen = None if args.indices is None else read_indices(args.indices, len(data.table))
        estimate = "mean" if args.at_mean else args.estimate
        coords = write_particle_structures(out / "coords.npy", run, estimate, chosen, atoms_of=atoms_of, n_anchors=args.anchors, processes=processes)
    if not processes.is_main:
        return
    log.info("wrote %s %s", out / "coords.npy", tuple(coords.shape))
    if args.format != "npy":
        path = out / f"structures.{args.format}"
        write_structure(path, data.structure, np.asarray(coords), full_atom=args.full_atom)
        log.info("wrote %d models to %s", len(coords), path)
    if args.split:
        paths = write_split_models(out / "models", data.structure, coords, full_atom=args.full_atom)
        log.info("wrote %d model files to %s", len(paths), out / "models")
    if args.full_atom:
        report = write_quality(out / "structures_quality.csv", data.structure, coords)
        log.info("%s (%s)", quality_summary({"structures": report}), out / "structures_quality.csv")
