"""Test-time refinement, a prototype: a few Adam steps per image on its own latent after training.

Starts from the encoder's latent mean and minimises ``-correlation + |z|^2 / (2 P)`` (the MAP form
of the training objective with the standard normal prior, P pixels) for each image alone, decoding
with the segmentation means; then prints the per-image CA RMSD of the encoder's latents and the
refined ones. Measured no better (RESULTS.md, "Accuracy: the width"), so not in the product.

    .venv/bin/python benchmarks/accuracy/refine_latents.py RUN TRUTH.npz --steps 10 --lr 0.05
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryodomain.model.losses import correlation_loss
from cryodomain.physics.imaging import form_images
from cryodomain.workflows.evaluate import per_image_rmsd
from cryodomain.workflows.objective import encoder_inputs
from cryodomain.workflows.structures import write_coordinates
from cryodomain.workflows.trained_run import TrainedRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("truth")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    run = TrainedRun.load(args.run)
    model, context, data = run.model, run.context, run.data
    model.requires_grad_(False)
    encoded = run.latent_means(progress=False)
    refined = encoded.copy()
    start = time.time()
    before, after = [], []
    for first in range(0, len(encoded), args.batch):
        rows = list(range(first, min(first + args.batch, len(encoded))))
        batch = data.dataset[rows]
        _, target, ctf = encoder_inputs(model, batch, data.table, context)
        z = torch.tensor(encoded[rows], requires_grad=True)
        optimizer = torch.optim.Adam([z], lr=args.lr)
        for step in range(args.steps + 1):
            decoded = model.decode(z, sample_segmentation=False)
            predicted = form_images(decoded.render_coords, model.amplitudes, batch["rotations"], context.sigma_A, context.frame, ctf)
            # Summed over the images: each latent gets the gradient of its own image alone.
            correlation = correlation_loss(predicted, target) * len(rows)
            if step == 0:
                before.append(correlation.item() / len(rows))
            if step == args.steps:
                after.append(correlation.item() / len(rows))
                break
            optimizer.zero_grad()
            (correlation + 0.5 * z.square().sum() / context.n_pixels).backward()
            optimizer.step()
        refined[rows] = z.detach().numpy()
    print(f"{args.steps} steps, lr {args.lr}: {time.time() - start:.1f} s; correlation loss {np.mean(before):.4f} -> {np.mean(after):.4f}")
    truth = np.load(args.truth)
    with tempfile.TemporaryDirectory() as scratch:
        for name, z in (("encoder", encoded), ("refined", refined)):
            coords = write_coordinates(Path(scratch) / f"{name}.npy", model, z, progress=False)
            rmsd = per_image_rmsd(coords, truth["coords"], truth["conformation"])
            print(f"{name}: median {np.median(rmsd):.3f} Å, p90 {np.percentile(rmsd, 90):.3f} Å")


if __name__ == "__main__":
    main()
