"""A small particle table with distinct values in every row, for the io tests."""

import numpy as np
import pandas as pd

from cryodomain.io.particles import ParticleTable


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
