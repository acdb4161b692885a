"""What a RELION particle ``.star`` file must not be, and what it holds that the CTF model leaves out.

Used by :func:`cryodomain.io.star.read_star` right after the blocks are parsed (refusals come before
any stack is looked for) and once the optics are joined to the particles (warnings).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cryodomain.errors import input_error

logger = logging.getLogger(__name__)

# Aberrations RELION's CtfRefine estimates that the CTF model here leaves out, with their neutral values.
_ZERNIKE_COLUMNS = ("rlnOddZernike", "rlnEvenZernike")
_MAGNIFICATION_IDENTITY = {"rlnMagMat00": 1.0, "rlnMagMat01": 0.0, "rlnMagMat10": 0.0, "rlnMagMat11": 1.0}
_BEAM_TILT_COLUMNS = ("rlnBeamTiltX", "rlnBeamTiltY")


def refuse_unsupported(path: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Refuse star files that are not 2-D single-particle images the CTF model can explain.

    Raises:
        InputError: a tomography particle file (a ``rlnTomo*`` label in any block), 3-D images
            (``rlnImageDimensionality`` other than 2), CTF-premultiplied images.
    """
    for name, table in tables.items():
        tomo = [column for column in table.columns if str(column).startswith("rlnTomo")]
        if tomo:
            raise input_error(
                path,
                tomo[0],
                f"a RELION tomography particle file (data_{name}); only single-particle images are supported",
                "give the particles .star file of a single-particle (SPA) Extract or Refine3D job",
            )
    # Every block: RELION 3.0 files hold these per particle in their one unnamed table.
    for name, table in tables.items():
        where = "" if len(tables) == 1 else f" (data_{name})"
        dimensionality = _flag_values(path, table, "rlnImageDimensionality")
        if dimensionality is not None and (dimensionality != 2).any():
            value = int(dimensionality[dimensionality != 2][0])
            problem = "3-D images (subtomograms)" if value == 3 else f"{value}-D images"
            raise input_error(
                path,
                "rlnImageDimensionality",
                f"{problem}{where}; only 2-D particle images are supported",
                "give a .star file of 2-D single-particle images",
            )
        premultiplied = _flag_values(path, table, "rlnCtfDataAreCtfPremultiplied")
        if premultiplied is not None and (premultiplied != 0).any():
            raise input_error(
                path,
                "rlnCtfDataAreCtfPremultiplied",
                f"CTF-premultiplied images are not supported{where}",
                "re-extract without premultiplication",
            )


def _flag_values(path: Path, table: pd.DataFrame, column: str) -> np.ndarray | None:
    """A column of small integers as ``(rows,)`` float64, None when absent."""
    if column not in table.columns:
        return None
    return _numbers(path, table, column)


def warn_unmodelled_aberrations(path: Path, table: pd.DataFrame) -> None:
    """Warn (once, naming the columns) when the file holds aberrations the CTF model leaves out."""
    present = []
    for column in _ZERNIKE_COLUMNS:
        if column in table.columns and any(np.any(coefficients != 0) for coefficients in _zernike_lists(path, table, column)):
            present.append(column)
    for column, neutral in _MAGNIFICATION_IDENTITY.items():
        if column in table.columns and not np.allclose(_numbers(path, table, column), neutral, rtol=0, atol=1e-6):
            present.append(column)
    for column in _BEAM_TILT_COLUMNS:
        if column in table.columns and np.any(_numbers(path, table, column) != 0):
            present.append(column)
    if present:
        logger.warning(
            "%s: %s not modelled: images are formed with defocus, astigmatism, Cs, phase shift and B-factor only",
            path,
            ", ".join(present),
        )


def _zernike_lists(path: Path, table: pd.DataFrame, column: str) -> list[np.ndarray]:
    """The distinct bracketed coefficient lists of a column (``[a,b,...]``, RELION 3.1+), as float arrays."""
    lists = []
    for text in pd.unique(table[column].astype(str)):
        inner = text.strip()
        if not (inner.startswith("[") and inner.endswith("]")):
            raise input_error(path, column, f"{text!r} is not a bracketed list of numbers", "fix the optics table")
        items = [item for item in inner[1:-1].split(",") if item.strip()]
        try:
            lists.append(np.asarray([float(item) for item in items], dtype=np.float64))
        except ValueError:
            raise input_error(path, column, f"{text!r} is not a bracketed list of numbers", "fix the optics table") from None
    return lists


def _numbers(path: Path, table: pd.DataFrame, column: str) -> np.ndarray:
    """A numeric column as ``(rows,)`` float64."""
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        row = int(np.flatnonzero(np.isnan(values))[0])
        raise input_error(path, column, f"value {table[column].iloc[row]!r} in row {row + 1} is not a number", "fix the .star file")
    return values
