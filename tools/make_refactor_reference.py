"""Make tests/data/refactor_reference.npz: the trained parameters and latent means of a 2-epoch run.

Made once with the code before the training package was split (issue 11, commit 1513582); the test
tests/workflows/test_refactor_reference.py trains the same run with today's code and compares.
One thread, so that reductions run in the same order on any machine.

    python tools/make_refactor_reference.py
"""

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY, TINY_OVERRIDES  # noqa: E402
from cryodomain.examples import STATE_A, example_structures  # noqa: E402
from cryodomain.workflows.config import load_config  # noqa: E402
from cryodomain.workflows.simulate import simulate  # noqa: E402
from cryodomain.workflows.train import train  # noqa: E402
from cryodomain.workflows.trained_run import TrainedRun  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        simulation = simulate(list(example_structures()), Path(tmp) / "sim", TINY)
        checksum = hashlib.sha256(Path(simulation["particles"]).read_bytes()).hexdigest()
        train(simulation["star"], STATE_A, Path(tmp) / "run", load_config(None, TINY_OVERRIDES, preset="paper"), progress=False)
        run = TrainedRun.load(Path(tmp) / "run")
        z = run.latent_means(progress=False)
        arrays = {f"param/{name}": value.cpu().numpy() for name, value in run.model.state_dict().items()}
    out = Path(__file__).resolve().parents[1] / "tests" / "data" / "refactor_reference.npz"
    np.savez_compressed(out, latent_means=z, particles_sha256=np.array(checksum), **arrays)
    print(out, len(arrays), "tensors", z.shape)


if __name__ == "__main__":
    main()
