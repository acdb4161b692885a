"""One-time conversion of particles spread over many stacks into one contiguous stack.

Datasets exported as thousands of per-micrograph ``.mrcs`` files make random access slow (a file
open and a seek per image). Writing every particle once, in particle order, into one float32 or
float16 stack (memory-mapped, streamed in chunks) gives one sequential file that batches read fast.
A RELION 3.1 star file pointing at the new stack keeps all metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import mrcfile
import numpy as np

from cryodomain.io.atomic import atomic_output
from cryodomain.io.metadata import read_particles
from cryodomain.io.particles import ParticleTable
from cryodomain.io.stack import ParticleImages
from cryodomain.io.star import write_star
from cryodomain.progress import progress_bar

MRC_MODE = {"float32": 2, "float16": 12}


def convert_particles(
    particles: str | Path,
    out_dir: str | Path,
    *,
    dtype: Literal["float32", "float16"] = "float32",
    datadir: str | Path | None = None,
    particle_class: int | None = None,
    passthrough: str | Path | None = None,
    chunk: int = 1024,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write ``out_dir/particles.mrcs`` and ``out_dir/particles.star``; returns both paths.

    ``particle_class`` and ``passthrough`` are passed to the cryoSPARC reader (see
    :func:`cryodomain.io.metadata.read_particles`).
    """
    table = read_particles(particles, datadir=datadir, particle_class=particle_class, passthrough=passthrough)
    images = ParticleImages(table.image_paths, table.image_indices)
    out_dir = Path(out_dir)
    stack_path, star_path = out_dir / "particles.mrcs", out_dir / "particles.star"
    height, width = images.image_shape
    n = len(table)
    with atomic_output(stack_path) as tmp:
        with mrcfile.new_mmap(tmp, shape=(n, height, width), mrc_mode=MRC_MODE[dtype], overwrite=True) as mrc:
            for start in progress_bar(range(0, n, chunk), "convert"):
                rows = np.arange(start, min(start + chunk, n))
                mrc.data[rows[0] : rows[-1] + 1] = images.read(rows).astype(dtype)
            mrc.set_image_stack()
            mrc.voxel_size = float(table.pixel_size_A[0])
            mrc.header.label[0] = b"cryodomain contiguous particle stack".ljust(80)
    images.close()
    converted = _pointing_at(table, stack_path.resolve())
    write_star(star_path, converted)
    return stack_path, star_path


def _pointing_at(table: ParticleTable, stack: Path) -> ParticleTable:
    converted = table.subset(np.arange(len(table)))
    converted.image_paths = np.full(len(table), str(stack))
    converted.image_indices = np.arange(len(table), dtype=np.int64)
    return converted
