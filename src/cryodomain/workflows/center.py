"""Move an atomic model and its consensus map together so the map's centre is the origin.

cryodomain works in the frame whose origin is the box centre (voxel N//2 along each axis: the
centre of rotation of RELION and cryoSPARC refinements). A model fitted into the consensus map in
ChimeraX has coordinates in the map's frame, where voxel (i, j, k) sits at
``origin + (index + nstart) * voxel_size``. Both are translated by minus the position of the centre
voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryodomain.io.maps import read_map, write_map
from cryodomain.io.structure import read_atomic_model
from cryodomain.io.structure_writer import write_structure


@dataclass(frozen=True)
class CenteredOutputs:
    structure: Path
    map: Path
    translation_A: np.ndarray  # (3,) added to every coordinate


def center_model_and_map(structure_path: str | Path, map_path: str | Path, out_dir: str | Path) -> CenteredOutputs:
    """Write ``*_centered.pdb|cif`` and ``*_centered.mrc`` in ``out_dir``."""
    structure_path, map_path, out_dir = Path(structure_path), Path(map_path), Path(out_dir)
    structure = read_atomic_model(structure_path)
    frame = read_map(map_path)
    translation = -frame.centre_A()
    suffix = ".cif" if structure_path.name.lower().removesuffix(".gz").endswith((".cif", ".mmcif")) else ".pdb"
    stem = structure_path.name.split(".")[0]
    out_structure = out_dir / f"{stem}_centered{suffix}"
    out_map = out_dir / f"{map_path.name.split('.')[0]}_centered.mrc"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_structure(out_structure, structure, structure.atom_coords + translation, full_atom=True)
    write_map(out_map, frame.data, float(frame.voxel_size_A[0]))
    return CenteredOutputs(out_structure, out_map, translation)
