"""Make tests/data/refactor_reference.npz: the trained parameters and latent means of a 2-epoch run.

Made once with the code before the training package was split (issue 11); the test
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
from conftest import TINY  # noqa: E402
from cryodomain.examples import STATE_A, example_structures  # noqa: E402
from cryodomain.workflows.config import load_config  # noqa: E402
from cryodomain.workflows.simulate import simulate  # noqa: E402
from cryodomain.workflows.train import latent_means, load_run, train  # noqa: E402

OVERRIDES = {
    "optim.epochs": 2,
    "optim.batch_size": 16,
    "optim.lr": 1e-3,
    "model.n_segments": 3,
    "model.latent_dim": 2,
    "model.encoder_hidden": [32, 16],
    "model.decoder_hidden": [32],
}


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        simulation = simulate(list(example_structures()), Path(tmp) / "sim", TINY)
        checksum = hashlib.sha256(Path(simulation["particles"]).read_bytes()).hexdigest()
        train(simulation["star"], STATE_A, Path(tmp) / "run", load_config(None, OVERRIDES), progress=False)
        model, state, data = load_run(Path(tmp) / "run")
        z = latent_means(model, data, state, progress=False)
        arrays = {f"param/{name}": value.cpu().numpy() for name, value in model.state_dict().items()}
    out = Path(__file__).resolve().parents[1] / "tests" / "data" / "refactor_reference.npz"
    np.savez_compressed(out, latent_means=z, particles_sha256=np.array(checksum), **arrays)
    print(out, len(arrays), "tensors", z.shape)


if __name__ == "__main__":
    main()
