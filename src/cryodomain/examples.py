"""The bundled example: M.HhaI DNA methyltransferase with DNA (PDB 3MHT) in two conformations.

State A is 3MHT without waters and ligands, centred on the mean of its residue (CA / C1')
coordinates. State B is the same model with the target recognition domain (chain A residues
``MOVED_RESIDUES``) rotated rigidly by ``HINGE_ANGLE_DEG`` about the axis through the CA atoms of
the two hinge residues ``HINGE_RESIDUES`` (right-handed, axis pointing from the first hinge residue
to the second); everything else is unchanged. ``tools/make_example_conformations.py`` makes both
files; ``data/README.md`` tells how the residues and the axis were chosen.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE_DIR: Path = Path(__file__).resolve().parent / "data"
SOURCE_STRUCTURE: Path = EXAMPLE_DIR / "3mht.pdb"
STATE_A: Path = EXAMPLE_DIR / "example_state_a.pdb"
STATE_B: Path = EXAMPLE_DIR / "example_state_b.pdb"
# Fast training settings for the example (demo and learning test).
DEMO_CONFIG: Path = EXAMPLE_DIR / "demo.yaml"

MOVED_CHAIN: str = "A"
# Inclusive author residue numbers of the rotated block (the target recognition domain).
MOVED_RESIDUES: tuple[int, int] = (186, 283)
# The residues flanking the block (Pro185, Gly284); the rotation axis runs through their CA atoms,
# so the CA-CA distances across both hinges are kept exactly.
HINGE_RESIDUES: tuple[int, int] = (185, 284)
HINGE_ANGLE_DEG: float = 20.0


def example_structures() -> tuple[Path, Path]:
    """Paths of the two bundled example states ``(state A, state B)`` (full-atom PDB files)."""
    for path in (STATE_A, STATE_B):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the installed package; reinstall cryodomain")
    return STATE_A, STATE_B
