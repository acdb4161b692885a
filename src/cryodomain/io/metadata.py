"""Reading particle metadata of either kind: the dispatcher beside the RELION and cryoSPARC readers."""

from __future__ import annotations

from pathlib import Path

from cryodomain.errors import input_error
from cryodomain.io.cryosparc import read_cryosparc
from cryodomain.io.particles import ParticleTable
from cryodomain.io.star import read_star


def read_particles(path: str | Path, datadir: str | Path | None = None) -> ParticleTable:
    """Read particle metadata from a RELION ``.star`` or cryoSPARC ``.cs`` file.

    Args:
        path: the metadata file; its extension picks the reader.
        datadir: optional folder holding the image stacks (cryoDRGN's ``--datadir``).

    Returns:
        The :class:`ParticleTable`.
    """
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir():
        raise input_error(path, None, "is a folder, not a particle file", "give a RELION .star or a cryoSPARC .cs file")
    if suffix == ".star":
        return read_star(path, datadir=datadir)
    if suffix == ".cs":
        return read_cryosparc(path, datadir=datadir)
    raise input_error(path, None, f"unknown particle file type {suffix or '(no extension)'!r}", "give a RELION .star or a cryoSPARC .cs file")
