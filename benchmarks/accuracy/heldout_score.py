"""Score trained runs on images none of them trained on: does that rank them by accuracy?

A probe for segmentation restarts scored on held-out images (issue 12). It simulates 400 new
images of a series (seed 999, the suite's settings: 64 px at 2 Å, every atom rendered), and
reports for each run (at its last or a named checkpoint) the mean normalised correlation between
those images and the model's, at the latent mean and over 4 posterior draws (latent and
segmentation sampled, as in training). Higher is better.

    CK=checkpoints/epoch_0008.pt .venv/bin/python benchmarks/accuracy/heldout_score.py hinge 0.01 /tmp/exp/runs/RUN1 /tmp/exp/runs/RUN2
"""

import os
import sys
from pathlib import Path

import torch

from cryodomain.model.losses import correlation_loss
from cryodomain.workflows.config import RunConfig
from cryodomain.workflows.inputs import load_training_data
from cryodomain.workflows.objective import model_images
from cryodomain.workflows.run_folder import load_checkpoint
from cryodomain.workflows.simulate import SimulationSettings, simulate
from cryodomain.workflows.trained_run import TrainedRun

CONF = Path("/tmp/cryodomain_accuracy/conformations")
N_IMAGES, BATCH, DRAWS = 400, 100, 4


def mean_correlation(run: TrainedRun, sample: bool) -> float:
    """Mean correlation over the held-out images (``DRAWS`` draws each when sampling)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, N_IMAGES, BATCH):
            batch = run.data.dataset[list(range(start, min(start + BATCH, N_IMAGES)))]
            for _ in range(DRAWS if sample else 1):
                seen = model_images(run.model, batch, run.data.table, run.context, sample=sample)
                total += sum(-correlation_loss(seen.predicted[i : i + 1], seen.target[i : i + 1]).item() for i in range(len(seen.target)))
                count += len(seen.target)
    return total / count


series, snr = sys.argv[1], float(sys.argv[2])
held = Path(f"/tmp/exp/held_{series}_{snr:g}")
if not (held / "particles.star").exists():
    simulate([CONF / f"{series}.pdb"], held, SimulationSettings(n_images=N_IMAGES, box=64, pixel_size_A=2.0, snr=snr, atoms="all", sigma_A=2.0, seed=999))
for run_dir in map(Path, sys.argv[3:]):
    checkpoint = run_dir / os.environ.get("CK", "last.pt")
    state = load_checkpoint(checkpoint, "cpu")
    config = RunConfig.model_validate(state["config"])
    run = TrainedRun.from_state(run_dir, checkpoint, state, load_training_data(held / "particles.star", state["structure"], config, None), "cpu")
    torch.manual_seed(0)
    print(f"{run_dir.name} {checkpoint.name}: at the latent mean {mean_correlation(run, False):.5f}, sampled {mean_correlation(run, True):.5f}", flush=True)
