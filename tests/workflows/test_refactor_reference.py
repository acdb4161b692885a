"""Same seed, same trained run: the parameters and latent means of a 2-epoch run equal, to 1e-5,
those the code produced before the training package was split (tools/make_refactor_reference.py),
with the settings of that time (the published ones, now `--preset paper`)."""

import hashlib
from pathlib import Path

import numpy as np

from cryodomain.examples import STATE_A
from cryodomain.workflows.config import load_config
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "refactor_reference.npz"


def test_two_epochs_give_the_reference_parameters_and_latents(tmp_path, tiny_simulation, tiny_config_overrides, one_thread):
    reference = np.load(REFERENCE)
    assert hashlib.sha256(Path(tiny_simulation["particles"]).read_bytes()).hexdigest() == str(reference["particles_sha256"])
    train(tiny_simulation["star"], STATE_A, tmp_path / "run", load_config(None, tiny_config_overrides, preset="paper"), progress=False)
    run = TrainedRun.load(tmp_path / "run")
    parameters = {name: value.cpu().numpy() for name, value in run.model.state_dict().items()}
    expected = {key.removeprefix("param/"): reference[key] for key in reference.files if key.startswith("param/")}
    assert sorted(parameters) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(parameters[name], value, rtol=0, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(run.latent_means(progress=False), reference["latent_means"], rtol=0, atol=1e-5)
