"""Train a cryoSPHERE model on particles with poses and CTF, starting from an atomic model.

The configuration is one YAML file over the defaults (the best settings measured; --preset paper
starts from the published cryoSPHERE settings instead); the flags below override it. The resolved configuration is written to RUN/config.yaml.

Examples:
    cryodomain train particles.star --structure model_centered.pdb -o run1
    cryodomain train J42_particles.cs --datadir /data/J42 --structure model.cif -o run2 --epochs 100
    cryodomain train J9_00020_particles_all_classes.cs --class 2 --datadir /data/P3 --structure model.cif -o run3
    cryodomain train particles.star --structure model.pdb -o run1 --resume

Writes RUN/last.pt (every epoch), RUN/checkpoints/epoch_NNNN.pt (every optim.checkpoint_every-th
epoch and the final one; about ten a run by default), RUN/metrics.csv, RUN/train.log (one line per
epoch with steps, images/s and losses) and RUN/config.yaml.
Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves RUN/last.pt and exits; --resume then
continues from that step with the same result as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cryodomain.workflows.config import PRESETS, RunConfig, load_config
from cryodomain.workflows.distributed import (
    Processes,
    launched_by_torchrun,
    resolve_device,
    start,
    stop,
)
from cryodomain.workflows.train import train

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    parser.add_argument("particles", help="RELION .star or cryoSPARC .cs file with poses and CTF")
    parser.add_argument("--structure", required=True, help="atomic model (PDB/mmCIF) in the box-centred frame")
    parser.add_argument("-o", "--outdir", required=True, help="run directory")
    parser.add_argument("--config", help="YAML configuration (see README, Configuration); its values override the preset's")
    parser.add_argument("--preset", choices=PRESETS, help="start from a shipped configuration: paper = the published cryoSPHERE settings")
    parser.add_argument("--datadir", help="directory holding the particle stacks (overrides paths in the star/cs file)")
    parser.add_argument(
        "--class",
        dest="particle_class",
        type=int,
        metavar="K",
        help="cryoSPARC hetero refinement / multi-class ab-initio: take every particle's pose from class K (0-based; default: its most probable class)",
    )
    parser.add_argument(
        "--passthrough",
        metavar="FILE",
        help="cryoSPARC: the job's passthrough .cs holding blob/ctf fields (default: <job>_passthrough_particles*.cs beside the particles file)",
    )
    parser.add_argument("--epochs", type=int, help="number of epochs (default: from the number of particles, 80 for 5000)")
    parser.add_argument("--batch-size", type=int, help=f"images per step (default {defaults.optim.batch_size})")
    parser.add_argument("--segments", type=int, help=f"segments of the whole model (default {defaults.model.n_segments})")
    parser.add_argument("--latent-dim", type=int, help=f"latent dimension (default {defaults.model.latent_dim})")
    parser.add_argument("--lr", type=float, help=f"learning rate of encoder and decoder (default {defaults.optim.lr})")
    parser.add_argument("--segmentation-lr", type=float, help=f"learning rate of the segmentation (default {defaults.optim.segmentation_lr})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default auto)")
    parser.add_argument("--seed", type=int, help="random seed (default 0); CPU runs are repeatable bit for bit")
    parser.add_argument("--downsample", type=int, metavar="BOX", help="Fourier-crop the images to this box (pixel size scaled)")
    parser.add_argument("--invert-contrast", action="store_true", default=None, help="the data has dark protein (not RELION's contrast)")
    parser.add_argument(
        "--no-convention-check",
        action="store_true",
        help="skip the preflight test of contrast, rotation and shift conventions (data.convention_check: false), for odd data",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --outdir from RUN/last.pt")
    parser.add_argument("--force", action="store_true", help="overwrite a run directory that holds another run")
    parser.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="train on N GPUs of this machine: relaunches itself with torchrun --nproc_per_node=N (DDP)",
    )


def main(args: argparse.Namespace) -> None:
    run_dir = Path(args.outdir)
    config_path = args.config
    if args.resume and config_path is None and (run_dir / "config.yaml").exists():
        config_path = run_dir / "config.yaml"
    overrides = {
        "data.datadir": args.datadir,
        "data.particle_class": args.particle_class,
        "data.passthrough": args.passthrough,
        "data.invert_contrast": args.invert_contrast,
        "data.convention_check": False if args.no_convention_check else None,
        "optim.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "optim.segmentation_lr": args.segmentation_lr,
        "optim.device": args.device,
        "optim.seed": args.seed,
        "model.n_segments": args.segments,
        "model.latent_dim": args.latent_dim,
    }
    # A resumed run's config.yaml holds every value: no preset under it.
    preset = args.preset if config_path != run_dir / "config.yaml" else None
    config = load_config(config_path, overrides, preset=preset)
    if args.gpus is not None and args.gpus > 1 and not launched_by_torchrun():
        _relaunch_with_torchrun(args.gpus)
    processes = start(resolve_device(config.optim.device).type)
    try:
        _train(args, run_dir, config, processes)
    finally:
        stop(processes)


def _relaunch_with_torchrun(n_processes: int) -> None:
    """Replace this process by ``torchrun --nproc_per_node=N -m cryodomain train ...`` (same flags)."""
    argv = sys.argv[1:]
    flags = [arg for i, arg in enumerate(argv) if not (arg == "--gpus" or arg.startswith("--gpus=") or (i > 0 and argv[i - 1] == "--gpus"))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_processes}", "-m", "cryodomain", *flags]
    log.info("relaunching on %d processes: %s", n_processes, " ".join(command))
    os.execv(sys.executable, command)


def _train(args: argparse.Namespace, run_dir: Path, config, processes: Processes) -> None:
    if not processes.is_main:
        # One log for the run: the other processes report only problems.
        logging.getLogger().setLevel(logging.WARNING)
    checkpoint = train(
        args.particles,
        args.structure,
        run_dir,
        config,
        resume=args.resume,
        force=args.force,
        downsample_box=args.downsample,
        processes=processes,
    )
    log.info("done: %s", checkpoint)
