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

import mrcfile
import numpy as np

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.io.structure import read_atomic_model, write_structure


@dataclass(frozen=True)
class CenteredOutputs:
    structure: Path
    map: Path
    translation_A: np.ndarray  # (3,) added to every coordinate


def map_centre_A(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Position (x, y, z) in Å of the centre voxel of an MRC map, its data and voxel size."""
    try:
        with mrcfile.open(path, permissive=False) as mrc:
            data = np.array(mrc.data, dtype=np.float32)
            voxel = np.array([mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z], dtype=np.float64)
            origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z], dtype=np.float64)
            start = np.array([mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart], dtype=np.float64)
    except (OSError, ValueError) as error:
        raise input_error(path, None, f"not a readable MRC map ({error})", "pass the consensus map (.mrc)") from None
    if data.ndim != 3:
        raise input_error(path, None, f"holds a {data.ndim}-D array, not a 3-D map", "pass the consensus map")
    if np.any(voxel <= 0):
        raise input_error(path, "voxel size", "is not set in the header", "set it, e.g. with relion_image_handler --angpix")
    shape_xyz = np.array(data.shape[::-1], dtype=np.float64)
    centre = origin + (start + shape_xyz // 2) * voxel
    return centre, data, float(voxel[0])


def center_model_and_map(structure_path: str | Path, map_path: str | Path, out_dir: str | Path) -> CenteredOutputs:
    """Write ``*_centered.pdb|cif`` and ``*_centered.mrc`` in ``out_dir``."""
    structure_path, map_path, out_dir = Path(structure_path), Path(map_path), Path(out_dir)
    structure = read_atomic_model(structure_path)
    centre, data, voxel = map_centre_A(map_path)
    translation = -centre
    suffix = ".cif" if structure_path.name.lower().removesuffix(".gz").endswith((".cif", ".mmcif")) else ".pdb"
    stem = structure_path.name.split(".")[0]
    out_structure = out_dir / f"{stem}_centered{suffix}"
    out_map = out_dir / f"{map_path.name.split('.')[0]}_centered.mrc"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_structure(out_structure, structure, structure.atom_coords + translation, full_atom=True)
    with atomic_output(out_map) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = voxel
            box_centre_index = np.array(data.shape[::-1]) // 2
            origin = -box_centre_index * voxel
            mrc.header.origin = tuple(origin.tolist())
    return CenteredOutputs(out_structure, out_map, translation)
