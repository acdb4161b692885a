"""A small particle table with distinct values in every row, and the metadata fixtures, for the io tests."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryodomain.io.particles import ParticleTable
from cryodomain.io.stack import write_stack


def small_table(paths: list[str]) -> ParticleTable:
    n = len(paths)
    values = np.arange(n, dtype=np.float64)
    return ParticleTable(
        image_paths=np.array(paths),
        image_indices=np.arange(n),
        rotations=np.repeat(np.eye(3)[None], n, axis=0),
        shifts_A=np.stack([values, -values], axis=-1),
        defocus_u_A=10000 + values,
        defocus_v_A=9000 + values,
        defocus_angle_rad=values / 10,
        voltage_kv=np.full(n, 300.0),
        spherical_aberration_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift_rad=np.zeros(n),
        bfactor_A2=np.zeros(n),
        pixel_size_A=np.full(n, 1.2),
        image_size=np.full(n, 8),
        optics_group=np.ones(n, dtype=np.int64),
        optics_group_names={1: "opticsGroup1"},
        source="test",
        extra=pd.DataFrame({"rlnMicrographName": [f"mic{k}" for k in range(n)]}),
    )


# Small metadata files in the shapes RELION writes (tests/data/metadata/).
METADATA = Path(__file__).parents[1] / "data" / "metadata"


def star_fixture_with_stacks(name: str, folder: Path, box: int) -> Path:
    """Copy ``tests/data/metadata/<name>`` into ``folder`` and write the blank stacks it names (``box`` px)."""
    path = folder / name
    shutil.copy(METADATA / name, path)
    names = starfile.read(path, always_dict=True, parse_as_string=["rlnImageName"])["particles"]["rlnImageName"]
    counts: dict[str, int] = {}
    for image_name in names:
        number, _, stack = image_name.partition("@")
        counts[stack] = max(counts.get(stack, 0), int(number))
    for stack, count in counts.items():
        (folder / stack).parent.mkdir(parents=True, exist_ok=True)
        write_stack(folder / stack, np.zeros((count, box, box), np.float32), 1.0)
    return path
