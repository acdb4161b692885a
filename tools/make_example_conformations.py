"""Write the two bundled example states from ``src/cryodomain/data/3mht.pdb``.

State A: 3MHT, protein and DNA only (waters and SAH dropped by the reader), translated so that the
mean of the residue coordinates (CA / C1') is at the origin.
State B: state A with chain A residues ``MOVED_RESIDUES`` rotated rigidly by ``HINGE_ANGLE_DEG``
about the axis through the CA atoms of ``HINGE_RESIDUES`` (right-handed about the direction from
the first hinge CA to the second); every other atom is unchanged.

Usage (from the repository root):

    python tools/make_example_conformations.py
    python tools/make_example_conformations.py --output-dir /tmp/example
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import roma
import torch

from cryodomain.examples import (
    HINGE_ANGLE_DEG,
    HINGE_RESIDUES,
    MOVED_CHAIN,
    MOVED_RESIDUES,
    SOURCE_STRUCTURE,
    STATE_A,
    STATE_B,
)
from cryodomain.io.structure import (
    AtomicModel,
    center_of_residues,
    read_atomic_model,
)
from cryodomain.io.structure_writer import write_structure

logger = logging.getLogger("make_example_conformations")


def residue_index(model: AtomicModel, chain: str, number: int) -> int:
    """Index of the residue ``chain``/``number`` (no insertion code) in ``model``."""
    matches = np.nonzero((model.chain_ids == chain) & (model.residue_numbers == number))[0]
    if len(matches) != 1:
        raise ValueError(f"{model.source}: expected one residue {chain}{number}, found {len(matches)}")
    return int(matches[0])


def rotate_domain(model: AtomicModel, chain: str, residues: tuple[int, int], hinges: tuple[int, int], angle_deg: float) -> AtomicModel:
    """Rotate a residue range rigidly about the axis through the CA atoms of two hinge residues.

    Args:
        model: the structure to move (its coordinates in Å).
        chain: chain of the moved range.
        residues: inclusive author residue numbers ``(first, last)`` of the moved range.
        hinges: residue numbers whose CA atoms define the axis, pointing from the first to the second.
        angle_deg: right-handed rotation angle in degrees.

    Returns:
        A copy of ``model`` with the range's residues and atoms moved.
    """
    in_domain = (model.chain_ids == chain) & (model.residue_numbers >= residues[0]) & (model.residue_numbers <= residues[1])
    atom_in_domain = in_domain[model.atom_residue_index]
    # The axis passes through both hinge CAs, so they are fixed points of the motion.
    pivot = model.coords[residue_index(model, chain, hinges[0])]
    axis = model.coords[residue_index(model, chain, hinges[1])] - pivot
    axis /= np.linalg.norm(axis)
    rotation = roma.rotvec_to_rotmat(torch.from_numpy(axis * np.deg2rad(angle_deg))).numpy()

    coords = model.coords.copy()
    atom_coords = model.atom_coords.copy()
    coords[in_domain] = (coords[in_domain] - pivot) @ rotation.T + pivot
    atom_coords[atom_in_domain] = (atom_coords[atom_in_domain] - pivot) @ rotation.T + pivot
    return model.with_coords(coords, atom_coords)


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line) and write both states."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE_STRUCTURE, help="input structure (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=STATE_A.parent, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = read_atomic_model(args.source)
    # PDB files keep 3 decimals: round once so state B is built from exactly what state A holds.
    centre = center_of_residues(model)
    state_a = model.with_coords(np.round(model.coords - centre, 3), np.round(model.atom_coords - centre, 3))
    state_b = rotate_domain(state_a, MOVED_CHAIN, MOVED_RESIDUES, HINGE_RESIDUES, HINGE_ANGLE_DEG)

    path_a, path_b = args.output_dir / STATE_A.name, args.output_dir / STATE_B.name
    write_structure(path_a, state_a, state_a.atom_coords, full_atom=True)
    write_structure(path_b, state_b, state_b.atom_coords, full_atom=True)

    moved = np.linalg.norm(state_b.coords - state_a.coords, axis=1)
    moved = moved[moved > 0]
    logger.info(
        "wrote %s and %s: %d residues, %d atoms; %d residues of chain %s moved by %.2f A on average (max %.2f A)",
        path_a,
        path_b,
        model.n_residues,
        model.n_atoms,
        len(moved),
        MOVED_CHAIN,
        moved.mean(),
        moved.max(),
    )


if __name__ == "__main__":
    main()
