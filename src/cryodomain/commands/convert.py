"""Copy all particles into one contiguous stack (float32 or float16) with a matching star file.

For datasets spread over thousands of small .mrcs files: one sequential file makes random access
during training fast. Streams in chunks; memory stays bounded.

Examples:
    cryodomain convert particles.star -o converted
    cryodomain convert J42_particles.cs --datadir /data/J42 -o converted --dtype float16
    cryodomain train converted/particles.star --structure model.pdb -o run1
"""

from __future__ import annotations

import argparse
import logging

from cryodomain.workflows.convert import convert_particles

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", help="RELION .star or cryoSPARC .cs file")
    parser.add_argument("-o", "--outdir", required=True, help="output directory")
    parser.add_argument("--datadir", help="directory holding the particle stacks")
    parser.add_argument(
        "--class", dest="particle_class", type=int, metavar="K", help="cryoSPARC: every particle's pose from class K (default: its most probable)"
    )
    parser.add_argument("--passthrough", metavar="FILE", help="cryoSPARC: the job's passthrough .cs (default: found beside the particles file)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage type (default %(default)s)")


def main(args: argparse.Namespace) -> None:
    stack, star = convert_particles(
        args.particles, args.outdir, dtype=args.dtype, datadir=args.datadir, particle_class=args.particle_class, passthrough=args.passthrough
    )
    log.info("wrote %s and %s", stack, star)
