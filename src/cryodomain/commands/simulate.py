"""Simulate particle images from one or more atomic models (RELION-style stack, star and truth).

Every model of every given file is one conformation; images are spread evenly over them. Poses are
uniform over SO(3), the CTF as RELION's with contrast inversion (protein white), white noise at the
requested SNR (signal variance / noise variance; ``inf`` for none).

Examples:
    cryodomain simulate closed.pdb open.pdb -o sim --n-images 5000 --snr 0.1 --atoms all
    cryodomain simulate traj.pdb -o sim --box 128 --apix 1.5 --defocus-min 8000 --defocus-max 20000

Writes DIR/particles.mrcs, DIR/particles.star, DIR/truth.npz and DIR/particles.png.
"""

from __future__ import annotations

import argparse
import logging
import math

from cryodomain.workflows.simulate import SimulationSettings, simulate

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    defaults = SimulationSettings()
    parser.add_argument("structures", nargs="+", metavar="STRUCTURE", help="PDB/mmCIF files; every model is a conformation")
    parser.add_argument("-o", "--outdir", required=True, help="output directory")
    parser.add_argument("--n-images", type=int, default=defaults.n_images, help="number of particles (default %(default)s)")
    parser.add_argument("--box", type=int, default=defaults.box, help="box size in pixels (default %(default)s)")
    parser.add_argument("--apix", type=float, default=defaults.pixel_size_A, help="pixel size in Å (default %(default)s)")
    parser.add_argument("--snr", type=float, default=defaults.snr, help="signal variance / noise variance, inf for no noise (default %(default)s)")
    parser.add_argument("--defocus-min", type=float, default=defaults.defocus_min_A, help="Å (default %(default)s)")
    parser.add_argument("--defocus-max", type=float, default=defaults.defocus_max_A, help="Å (default %(default)s)")
    parser.add_argument("--max-astigmatism", type=float, default=defaults.max_astigmatism_A, help="defocus U - V uniform in [0, this] Å (default %(default)s)")
    parser.add_argument("--max-shift", type=float, default=defaults.max_shift_A, help="shifts uniform in ±this many Å (default %(default)s)")
    parser.add_argument("--sigma", type=float, default=defaults.sigma_A, help="Gaussian width in Å (default %(default)s)")
    parser.add_argument(
        "--atoms",
        choices=("residue", "all"),
        default=defaults.atoms,
        help="render one Gaussian per residue (the training model) or every atom (default %(default)s)",
    )
    parser.add_argument("--voltage", type=float, default=defaults.voltage_kv, help="kV (default %(default)s)")
    parser.add_argument("--cs", type=float, default=defaults.spherical_aberration_mm, help="mm (default %(default)s)")
    parser.add_argument("--amplitude-contrast", type=float, default=defaults.amplitude_contrast, help="(default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    return SimulationSettings(
        n_images=args.n_images,
        box=args.box,
        pixel_size_A=args.apix,
        snr=args.snr if not math.isinf(args.snr) else math.inf,
        defocus_min_A=args.defocus_min,
        defocus_max_A=args.defocus_max,
        max_astigmatism_A=args.max_astigmatism,
        max_shift_A=args.max_shift,
        sigma_A=args.sigma,
        atoms=args.atoms,
        voltage_kv=args.voltage,
        spherical_aberration_mm=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        seed=args.seed,
    )


def main(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    written = simulate(args.structures, args.outdir, settings)
    log.info("wrote %d particles to %s", settings.n_images, written["particles"])
    for name in ("star", "truth", "picture"):
        log.info("       %-8s %s", name, written[name])
