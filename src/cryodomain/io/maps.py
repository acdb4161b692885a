"""MRC maps (volumes): reading one with its frame, writing one in the box-centred frame.

A voxel ``(k, j, i)`` of a ``[z, y, x]`` map sits at ``origin + (index + nstart) * voxel_size``
(x, y, z in Å). cryodomain's frame puts voxel ``N // 2`` of each axis at 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output


@dataclass(frozen=True)
class MapFrame:
    """A map's data and where its voxels sit.

    Attributes:
        data: ``(Z, Y, X)`` float32 values.
        voxel_size_A: ``(3,)`` x, y, z voxel size, Å.
        origin_A: ``(3,)`` x, y, z header origin, Å.
        start: ``(3,)`` x, y, z ``nxstart/nystart/nzstart`` in voxels.
    """

    data: np.ndarray
    voxel_size_A: np.ndarray
    origin_A: np.ndarray
    start: np.ndarray

    def centre_A(self) -> np.ndarray:
        """``(3,)`` x, y, z position of voxel ``N // 2`` of each axis, Å."""
        shape_xyz = np.array(self.data.shape[::-1], dtype=np.float64)
        return self.origin_A + (self.start + shape_xyz // 2) * self.voxel_size_A


def read_map(path: str | Path) -> MapFrame:
    """A 3-D MRC map with its voxel size, origin and start; InputError for anything else."""
    path = Path(path)
    try:
        with mrcfile.open(path, permissive=False) as mrc:
            data = np.array(mrc.data, dtype=np.float32)
            voxel = np.array([mrc.voxel_size.x, mrc.voxel_size.y, mrc.voxel_size.z], dtype=np.float64)
            origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z], dtype=np.float64)
            start = np.array([mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart], dtype=np.float64)
            stack = mrc.is_image_stack()
    except (OSError, ValueError) as error:
        raise input_error(path, None, f"not a readable MRC map ({error})", "pass an MRC map (.mrc)") from None
    if stack:
        raise input_error(path, "space group", "is an image stack (a .mrcs of particles), not a map", "pass a 3-D map (.mrc)")
    if data.ndim != 3:
        raise input_error(path, None, f"holds a {data.ndim}-D array, not a 3-D map", "pass a 3-D map")
    if np.any(voxel <= 0):
        raise input_error(path, "voxel size", "is not set in the header", "set it, e.g. with relion_image_handler --angpix")
    return MapFrame(data, voxel, origin, start)


def write_map(path: str | Path, volume: np.ndarray, voxel_size_A: float) -> None:
    """Write a ``(Z, Y, X)`` map as MRC, atomically, in the box-centred frame.

    The header's voxel size is ``voxel_size_A`` and its origin ``-(N // 2) * voxel_size_A`` on each
    axis (start 0), so voxel ``N // 2`` sits at coordinate 0, where a centred model's origin is.
    """
    volume = np.asarray(volume, dtype=np.float32)
    with atomic_output(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = voxel_size_A
        mrc.header.origin = tuple((-(np.array(volume.shape[::-1]) // 2) * voxel_size_A).tolist())
