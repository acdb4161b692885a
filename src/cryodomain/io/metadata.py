"""Reading particle metadata of either kind: the dispatcher beside the RELION and cryoSPARC readers."""

from __future__ import annotations

from pathlib import Path

from cryodomain.errors import input_error
from cryodomain.io.cryosparc import read_cryosparc
from cryodomain.io.particles import ParticleTable
from cryodomain.io.star import read_star


def read_particles(
    path: str | Path,
    datadir: str | Path | None = None,
    *,
    particle_class: int | None = None,
    passthrough: str | Path | None = None,
) -> ParticleTable:
    """Read particle metadata from a RELION ``.star`` or cryoSPARC ``.cs`` file.

    Args:
        path: the metadata file; its extension picks the reader.
        datadir: optional folder holding the image stacks (cryoDRGN's ``--datadir``).
        particle_class: cryoSPARC only: the 0-based class whose poses every particle takes.
        passthrough: cryoSPARC only: the job's passthrough ``.cs`` file (else looked for beside it).

    Returns:
        The :class:`ParticleTable`.

    Raises:
        InputError: a folder, an unknown extension, cryoSPARC options given with a star file.
    """
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir():
        raise input_error(path, None, "is a folder, not a particle file", "give a RELION .star or a cryoSPARC .cs file")
    if suffix == ".star":
        # RELION's refinement already gives each particle its most probable class's pose.
        if particle_class is not None:
            raise input_error(path, "--class", "applies to cryoSPARC .cs files only", "select the class's particles in RELION (rlnClassNumber) instead")
        if passthrough is not None:
            raise input_error(path, "--passthrough", "applies to cryoSPARC .cs files only", "leave it unset for a RELION .star file")
        return read_star(path, datadir=datadir)
    if suffix == ".cs":
        return read_cryosparc(path, datadir=datadir, particle_class=particle_class, passthrough=passthrough)
    raise input_error(path, None, f"unknown particle file type {suffix or '(no extension)'!r}", "give a RELION .star or a cryoSPARC .cs file")
