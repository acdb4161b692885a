"""Move an atomic model and its consensus map together so the map centre is the origin.

Training takes model coordinates in the frame whose origin is the box centre. Fit the model into
the consensus map (e.g. in ChimeraX), then run this on both to get that frame.

Example:
    cryodomain center model.pdb consensus.mrc -o centered
    # -> centered/model_centered.pdb and centered/consensus_centered.mrc
"""

from __future__ import annotations

import argparse
import logging

from cryodomain.workflows.center import center_model_and_map

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("structure", metavar="MODEL", help="atomic model fitted into the map (PDB/mmCIF)")
    parser.add_argument("map", metavar="MAP", help="consensus map (.mrc) of the refinement that gave the poses")
    parser.add_argument("-o", "--outdir", required=True, help="output directory")


def main(args: argparse.Namespace) -> None:
    outputs = center_model_and_map(args.structure, args.map, args.outdir)
    dx, dy, dz = outputs.translation_A
    log.info("translated model and map by (%.2f, %.2f, %.2f) Å", dx, dy, dz)
    log.info("wrote %s and %s", outputs.structure, outputs.map)
