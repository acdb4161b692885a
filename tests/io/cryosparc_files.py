"""cryoSPARC ``.cs`` files built field by field, in the result groups and dtypes cryoSPARC writes.

A ``.cs`` file is one numpy structured array saved with ``np.save``: ``uid`` then, per result group
(``blob``, ``ctf``, ``location``, ``alignments3D`` ...), the group's fields as ``<group>/<field>``.
The fields of each group type below are those of real particle files (as cryosparc-tools, pyem and
cryoDRGN read them); a heterogeneous refinement writes the ``alignments3D`` fields once per class as
``alignments_class_<k>/...``, newer versions once for all K classes as ``alignments3D_multi/...``
with a leading (K,) in each field's shape.
"""

from pathlib import Path

import numpy as np

from cryodomain.io.particles import ParticleTable
from cryodomain.io.poses import matrix_to_cryosparc_pose

BLOB = [("path", "S64", ()), ("idx", "<u4", ()), ("shape", "<u4", (2,)), ("psize_A", "<f4", ()), ("sign", "<f4", ()), ("import_sig", "<u8", ())]
CTF = [
    ("type", "S1", ()),
    ("exp_group_id", "<u4", ()),
    ("accel_kv", "<f4", ()),
    ("cs_mm", "<f4", ()),
    ("amp_contrast", "<f4", ()),
    ("df1_A", "<f4", ()),
    ("df2_A", "<f4", ()),
    ("df_angle_rad", "<f4", ()),
    ("phase_shift_rad", "<f4", ()),
    ("scale", "<f4", ()),
    ("scale_const", "<f4", ()),
    ("shift_A", "<f4", (2,)),
    ("tilt_A", "<f4", (2,)),
    ("trefoil_A", "<f4", (2,)),
    ("tetra_A", "<f4", (4,)),
    ("anisomag", "<f4", (4,)),
    ("bfactor", "<f4", ()),
]
LOCATION = [
    ("micrograph_uid", "<u8", ()),
    ("exp_group_id", "<u4", ()),
    ("micrograph_path", "S64", ()),
    ("micrograph_shape", "<u4", (2,)),
    ("micrograph_psize_A", "<f4", ()),
    ("center_x_frac", "<f4", ()),
    ("center_y_frac", "<f4", ()),
]
ALIGNMENTS3D = [
    ("split", "<u4", ()),
    ("shift", "<f4", (2,)),
    ("pose", "<f4", (3,)),
    ("psize_A", "<f4", ()),
    ("error", "<f4", ()),
    ("error_min", "<f4", ()),
    ("resid_pow", "<f4", ()),
    ("slice_pow", "<f4", ()),
    ("image_pow", "<f4", ()),
    ("cross_cor", "<f4", ()),
    ("alpha", "<f4", ()),
    ("alpha_min", "<f4", ()),
    ("weight", "<f4", ()),
    ("pose_ess", "<f4", ()),
    ("shift_ess", "<f4", ()),
    ("class_posterior", "<f4", ()),
    ("class", "<u4", ()),
    ("class_ess", "<f4", ()),
]
# Per-particle fields of alignments3D_multi that are not per class.
_MULTI_SHARED = {"split", "psize_A", "alpha", "alpha_min", "weight"}


def group_fields(prefix: str, fields: list[tuple[str, str, tuple]], classes: int | None = None) -> list[tuple]:
    """Numpy dtype entries of one result group; ``classes`` = K prepends (K,) to per-class fields."""
    entries = []
    for name, dtype, shape in fields:
        if classes is not None and name not in _MULTI_SHARED:
            shape = (classes, *shape)
        entries.append((f"{prefix}/{name}", dtype, shape) if shape else (f"{prefix}/{name}", dtype))
    return entries


def cs_dataset(uids: list[int] | np.ndarray, groups: list[list[tuple]], values: dict[str, object]) -> np.ndarray:
    """A ``(N,)`` structured array with ``uid``, the given groups' fields (zeros) and ``values`` set.

    Raises ``KeyError`` for a value whose field is in no group, so a fixture cannot set a field the
    file would not have.
    """
    dtype = [("uid", "<u8")] + [entry for group in groups for entry in group]
    data = np.zeros(len(uids), dtype=dtype)
    data["uid"] = uids
    for field, value in values.items():
        if field not in data.dtype.names:
            raise KeyError(field)
        data[field] = value
    return data


def particle_groups(n_stack_images: int, stack: str = "J3/extract/mic1_particles.mrc", psize_A: float = 1.0, box: int = 8) -> dict[str, object]:
    """Values of ``blob`` and ``ctf`` for particles ``0..n-1`` of one stack: defocus ``10000 + 100 k`` Å."""
    k = np.arange(n_stack_images)
    return {
        "blob/path": stack.encode(),
        "blob/idx": k,
        "blob/shape": box,
        "blob/psize_A": psize_A,
        "blob/sign": -1.0,
        "ctf/type": b"i",
        "ctf/accel_kv": 300.0,
        "ctf/cs_mm": 2.7,
        "ctf/amp_contrast": 0.1,
        "ctf/df1_A": 10000.0 + 100.0 * k,
        "ctf/df2_A": 9500.0 + 100.0 * k,
        "ctf/df_angle_rad": 0.25 * k,
        "ctf/phase_shift_rad": 0.0,
        "ctf/scale": 1.0,
        "ctf/anisomag": [1.0, 0.0, 0.0, 1.0],
        "ctf/bfactor": 10.0 * k,
    }


def table_groups(table: ParticleTable, stack: str) -> dict[str, object]:
    """Values of ``blob`` and ``ctf`` for the particles of ``table`` (e.g. a simulation's), their images
    at the same indices of ``stack`` (the path as the file writes it)."""
    return {
        "blob/path": stack.encode(),
        "blob/idx": table.image_indices,
        "blob/shape": table.image_size[:, None],
        "blob/psize_A": table.pixel_size_A,
        "blob/sign": -1.0,
        "ctf/type": b"i",
        "ctf/accel_kv": table.voltage_kv,
        "ctf/cs_mm": table.spherical_aberration_mm,
        "ctf/amp_contrast": table.amplitude_contrast,
        "ctf/df1_A": table.defocus_u_A,
        "ctf/df2_A": table.defocus_v_A,
        "ctf/df_angle_rad": table.defocus_angle_rad,
        "ctf/phase_shift_rad": table.phase_shift_rad,
        "ctf/scale": 1.0,
        "ctf/anisomag": [1.0, 0.0, 0.0, 1.0],
        "ctf/bfactor": table.bfactor_A2,
    }


def class_groups(poses: list[tuple[np.ndarray, np.ndarray]], posterior: np.ndarray, psize_A: np.ndarray) -> tuple[list[list[tuple]], dict[str, object]]:
    """The ``alignments_class_k`` groups of a heterogeneous refinement and their values.

    Args:
        poses: per class k, ``(N, 3, 3)`` matrices ``A`` and ``(N, 2)`` shifts in Å (RELION sign).
        posterior: ``(N, K)`` class posteriors.
        psize_A: ``(N,)`` pixel size of the alignment, Å (the shifts are written in its pixels).
    """
    groups, values = [], {}
    for k, (rotations, shifts_A) in enumerate(poses):
        prefix = f"alignments_class_{k}"
        groups.append(group_fields(prefix, ALIGNMENTS3D))
        values[f"{prefix}/pose"] = matrix_to_cryosparc_pose(rotations)
        values[f"{prefix}/shift"] = shifts_A / np.asarray(psize_A)[:, None]
        values[f"{prefix}/psize_A"] = psize_A
        values[f"{prefix}/class_posterior"] = posterior[:, k]
        values[f"{prefix}/class"] = k
    return groups, values


def save_cs(path: Path, data: np.ndarray) -> Path:
    """Write ``data`` as cryoSPARC does (``np.save`` to an open file, so no ``.npy`` is appended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, data)
    return path
