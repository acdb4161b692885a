"""How much a trained run loses to its encoder's posterior: each image's structure re-estimated by likelihood.

For a run of ``ablate.py`` and its simulation's ``truth.npz``: ``K`` anchor latents are drawn from the
run's aggregate posterior (one sample of the posterior of each of ``K`` random images) and decoded
with the segmentation means. For each of ``--images`` random images every anchor is rendered at
that image's pose and CTF, scaled to the image by least squares, and scored by the Gaussian
log-likelihood of the residual on the low-pass band, ``-M r_k / (2 s)`` (``r_k``: the residual's
sum of squares; ``M``: the real degrees of freedom in the band; ``s``: the median over images of
their smallest residual, an estimate of the noise's sum of squares). The image's structure is then
the likelihood-weighted mean of the anchor structures, with the image's own latent mean as one more
anchor. Printed: the median per-image CA RMSD of the run's posterior expectation (what ``evaluate``
scores), of the latent mean, of the reweighted estimate, and of the best anchor (what the anchors
allow at all), over the same images.

    .venv/bin/python benchmarks/accuracy/reweight.py /tmp/exp/runs/hinge_0.01_def_s0 /tmp/exp/sim_hinge_0.01_5000/truth.npz
"""

import argparse

import numpy as np
import torch

from cryodomain.physics.imaging import form_images
from cryodomain.workflows.evaluate import load_truth, per_image_rmsd
from cryodomain.workflows.objective import encoder_inputs, lowpass_at
from cryodomain.workflows.trained_run import TrainedRun


def band_dof(box: int, pixel_size_A: float, resolution_A: float) -> int:
    """Real degrees of freedom of a real ``box`` x ``box`` image low-passed to ``resolution_A``: the
    full-grid frequencies within ``1 / resolution_A`` (Hermitian symmetry pairs the complex ones)."""
    f = np.fft.fftfreq(box, d=pixel_size_A)
    return int(((f[:, None] ** 2 + f[None, :] ** 2) <= 1.0 / resolution_A**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("truth")
    parser.add_argument("--anchors", type=int, default=512)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    run = TrainedRun.load(args.run)
    model, context, data = run.model, run.context, run.data
    n = len(data.table)
    rng = np.random.default_rng(args.seed)
    posterior = run.latent_posterior(progress=False)
    chosen = rng.choice(n, size=args.anchors, replace=False)
    anchors = posterior.means[chosen] + posterior.stds[chosen] * rng.standard_normal(posterior.means[chosen].shape)
    images = np.sort(rng.choice(n, size=args.images, replace=False))
    anchor_def = model.decode(torch.as_tensor(anchors, dtype=torch.float32), sample_segmentation=False)
    own_def = model.decode(torch.as_tensor(posterior.means[images], dtype=torch.float32), sample_segmentation=False)
    resolution = lowpass_at(run.config)
    dof = band_dof(data.box, data.pixel_size_A, resolution)

    residuals = np.empty((len(images), args.anchors + 1))
    for row, index in enumerate(images):
        batch = data.dataset[[int(index)]]
        _, target, ctf = encoder_inputs(model, batch, data.table, context)
        points = torch.cat([anchor_def.render_coords, own_def.render_coords[row : row + 1]])
        rotations = batch["rotations"].expand(len(points), 3, 3)
        predicted = form_images(points, model.amplitudes, rotations, context.sigma_A, context.frame, ctf.expand(len(points), -1, -1))
        x, y = predicted.flatten(1).double(), target.flatten(1).double()
        scale = (x @ y[0]) / x.square().sum(1).clamp_min(1e-30)
        residuals[row] = (y - scale[:, None] * x).square().sum(1).numpy()
    noise = np.median(residuals.min(axis=1)) * dof / (dof - 1)
    log_like = -dof * residuals / (2 * noise)
    weights = np.exp(log_like - log_like.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)

    coords = torch.cat([anchor_def.coords, torch.zeros_like(anchor_def.coords[:1])]).double().numpy()
    truth_coords, conformation = load_truth(args.truth, n, coords.shape[1])
    truth_coords = np.asarray(truth_coords, dtype=np.float64)
    own = own_def.coords.double().numpy()
    estimate = np.empty_like(own)
    best = np.empty(len(images))
    for row in range(len(images)):
        coords[-1] = own[row]
        estimate[row] = np.tensordot(weights[row], coords, axes=1)
        true = truth_coords[conformation[images[row]]]
        best[row] = np.sqrt(((coords - true) ** 2).sum(-1).mean(-1)).min()
    sub = conformation[images]
    scored = np.loadtxt(f"{args.run}/eval/rmsd.csv", delimiter=",", skiprows=1, usecols=(0, 2))
    expectation = dict(zip(scored[:, 0].astype(int), scored[:, 1]))
    print(
        f"{args.anchors} anchors, {len(images)} images, band {resolution:.1f} Å ({dof} dof); effective anchors per image {np.median(1 / (weights**2).sum(1)):.1f}"
    )
    print(f"posterior expectation (evaluate) {np.median([expectation[i] for i in images]):.3f} Å")
    print(f"latent mean {np.median(per_image_rmsd(own, truth_coords, sub)):.3f} Å")
    print(f"reweighted  {np.median(per_image_rmsd(estimate, truth_coords, sub)):.3f} Å")
    print(f"best anchor {np.median(best):.3f} Å")


if __name__ == "__main__":
    main()
