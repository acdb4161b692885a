"""Shared small data made on the fly: a tiny simulation of the bundled example, and a run on it."""

import logging
import types

import pytest
import torch

from cryodomain.examples import STATE_A, example_structures
from cryodomain.workflows.simulate import SimulationSettings, simulate

# Small enough for unit tests of whole workflows: 32 px at 4 Å (the 128 Å box of the example).
TINY = SimulationSettings(n_images=48, box=32, pixel_size_A=4.0, snr=1.0, atoms="residue", seed=7)


@pytest.fixture(autouse=True)
def restore_logging():
    """The CLI points the root logger at this test's captured stderr; later tests must not write there."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_simulation(tmp_path_factory):
    """Paths of a 48-particle simulation of both example states (particles, star, truth, picture)."""
    out = tmp_path_factory.mktemp("tiny_simulation")
    return simulate(list(example_structures()), out, TINY)


# Config overrides that make a training run take seconds.
TINY_OVERRIDES = {
    "optim.epochs": 2,
    "optim.batch_size": 16,
    "optim.lr": 1e-3,
    "model.n_segments": 3,
    "model.latent_dim": 2,
    "model.encoder_hidden": [32, 16],
    "model.decoder_hidden": [32],
}


@pytest.fixture(scope="session")
def tiny_config_overrides():
    """Config overrides that make a training run take seconds."""
    return dict(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_analysis(tmp_path_factory, tiny_simulation):
    """A tiny run trained (train.log holding its preflight), evaluated against the truth into
    RUN/evaluation and analysed (report.html included): paths ``run``, ``analysis``, ``evaluation``."""
    from cryodomain.workflows.analyze import AnalysisSettings, analyze_run
    from cryodomain.workflows.config import load_config
    from cryodomain.workflows.evaluate import evaluate_run
    from cryodomain.workflows.train import train

    root = tmp_path_factory.mktemp("tiny_analysis")
    threads, logger = torch.get_num_threads(), logging.getLogger()
    level = logger.level
    torch.set_num_threads(1)
    # train.log receives what reaches the root logger, as under the CLI.
    logger.setLevel(logging.INFO)
    try:
        train(tiny_simulation["star"], STATE_A, root / "run", load_config(None, TINY_OVERRIDES), progress=False)
        evaluate_run(root / "run", tiny_simulation["truth"], root / "run" / "evaluation", device="cpu", map_images=4)
        outputs = analyze_run(root / "run", root / "analysis", AnalysisSettings(n_points=5, n_clusters=4, progress=False), device="cpu")
    finally:
        logger.setLevel(level)
        torch.set_num_threads(threads)
    return types.SimpleNamespace(run=root / "run", analysis=root / "analysis", evaluation=root / "run" / "evaluation", outputs=outputs)


@pytest.fixture
def one_thread():
    """One torch thread: tiny tensors avoid thread contention, and reductions run in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
