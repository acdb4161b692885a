"""The Bayes oracle of the accuracy benchmark: the best any method could do per image at this noise.

For a simulation made by :func:`cryodomain.workflows.simulate.simulate` from a series of C known
conformations, the oracle knows everything but which conformation each image shows: the C
conformations exactly, each image's pose and CTF, and the noise std sigma. For each image n and
conformation c it renders the noise-free image with the simulation's own forward model
(:func:`~cryodomain.workflows.simulate.render_particles`, in float64, stored as float32 as the
simulation stores its images) and takes the Gaussian log-likelihood

    log p(y_n | c) = -||y_n - render(c, pose_n, ctf_n)||^2 / (2 sigma^2),

with a uniform prior over c (simulate assigns conformation ``n mod C``, so the empirical
frequency is uniform to within one image as well), and from it the posterior p(c | y_n). It then
reports the per-image CA RMSD (no superposition, poses are given) against the true X_{c_n} of

* the posterior-mean structure ``sum_c p(c | y_n) X_c`` (the estimate of least expected squared
  error, so the lower bound on the benchmark's median RMSD in practice), and
* the MAP conformation ``X_argmax``,

beside the best single structure (the image-weighted mean of the true conformations, as
``cryodomain evaluate``'s ``best_single``). Medians and 90th percentiles in Å.

The noise std is recovered exactly as simulate computes it: ``sqrt(var(clean stack) / snr)``,
the variance over the whole noise-free stack of the true conformations (all N images, even with
``--n``). simulate normalises nothing after adding the noise (``write_stack`` stores float32 as
given), so nothing is undone here. Check printed to stderr: the residual ``y_n - render(c_n)`` of
the true conformation must be pure noise, std / sigma = 1 and no correlation with the signal;
with ``--seed`` (ablate.py simulates with 100 + its seed) it must equal simulate's own replayed
noise to float32 rounding.

One JSON line goes to stdout and is appended to ``--out``. Run::

    .venv/bin/python benchmarks/accuracy/bayes_oracle.py /tmp/exp/sim_hinge_0.01_2000
    .venv/bin/python benchmarks/accuracy/bayes_oracle.py /tmp/exp/sim_anm_0.01_2000 --n 200 --seed 100

The conformation series defaults to ``/tmp/cryodomain_accuracy/conformations/DATASET.pdb`` with
DATASET the word after ``sim_`` in the folder's name (ablate.py's naming), and the rendered atoms
to ``all`` (``residue`` for a folder ending in ``_residue``); pass ``--conformations`` and
``--atoms`` otherwise. Cost: C x n renders (60 x 2000 of 64 px: a few minutes per CPU core).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryodomain.io.particles import ParticleTable
from cryodomain.io.stack import ParticleImages
from cryodomain.io.star import read_star
from cryodomain.io.structure import AtomicModel
from cryodomain.physics.rotations import random_rotations
from cryodomain.workflows.evaluate import per_image_rmsd, summary
from cryodomain.workflows.references import best_single_structure
from cryodomain.workflows.simulate import SimulationSettings, load_conformations, render_particles

CONFORMATIONS = Path("/tmp/cryodomain_accuracy/conformations")
DEFAULT_OUT = Path("/tmp/exp/oracle.jsonl")
# Largest tolerated gap between truth.npz's CA coordinates (float32) and the series', Å.
COORDS_TOLERANCE_A = 1e-3


def default_conformations(sim: Path) -> Path:
    """``CONFORMATIONS/DATASET.pdb`` for a folder named ``sim_DATASET_SNR_N[_residue]``."""
    name = sim.resolve().name
    if not name.startswith("sim_"):
        raise SystemExit(f"{sim}: not named sim_DATASET_...; pass --conformations")
    return CONFORMATIONS / f"{name.split('_')[1]}.pdb"


def truth_table(truth: dict[str, np.ndarray], star: ParticleTable) -> ParticleTable:
    """The simulation's particle table with poses and CTFs at full precision from ``truth.npz``.

    The star file rounds its numbers; truth.npz holds the float64 values simulate rendered with.
    Image paths, pixel size and box come from ``star``; phase shift and B-factor are 0 as in simulate.
    """
    n = len(star)
    return ParticleTable(
        image_paths=star.image_paths,
        image_indices=star.image_indices,
        rotations=truth["rotations"],
        shifts_A=truth["shifts_A"],
        defocus_u_A=truth["defocus_u_A"],
        defocus_v_A=truth["defocus_v_A"],
        defocus_angle_rad=truth["defocus_angle_rad"],
        voltage_kv=truth["voltage_kv"],
        spherical_aberration_mm=truth["spherical_aberration_mm"],
        amplitude_contrast=truth["amplitude_contrast"],
        phase_shift_rad=np.zeros(n),
        bfactor_A2=np.zeros(n),
        pixel_size_A=np.full(n, float(truth["pixel_size_A"])),
        image_size=star.image_size,
        optics_group=star.optics_group,
        optics_group_names=star.optics_group_names,
        source=star.source,
    )


def check_series(conformations: list[AtomicModel], coords: np.ndarray) -> float:
    """Largest gap, Å, between the series' CA coordinates and truth.npz's ``(C, R, 3)``; exits when they differ."""
    if len(conformations) != len(coords):
        raise SystemExit(f"the series has {len(conformations)} conformations, truth.npz {len(coords)}")
    gap = float(np.abs(np.stack([model.coords for model in conformations]) - coords).max())
    if gap > COORDS_TOLERANCE_A:
        raise SystemExit(f"the series' coordinates differ from truth.npz's by up to {gap:.3g} Å: wrong --conformations")
    return gap


def noise_check(images: np.ndarray, clean: np.ndarray, noise_std: float) -> dict[str, float]:
    """How pure the residual of the true conformation is.

    Args:
        images: ``(n, B, B)`` the stack's images.
        clean: ``(n, B, B)`` their noise-free renders of the true conformations.
        noise_std: sigma of the simulation.

    Returns:
        ``residual_std / sigma`` (1 for pure noise), the residual's mean over sigma (0), its
        correlation with the clean signal (0), and ``mean_n ||y_n - r_n||^2 / (B^2 sigma^2)`` (1).
    """
    residual = images.astype(np.float64) - clean
    signal = clean - clean.mean()
    correlation = float((residual * signal).sum() / math.sqrt((residual**2).sum() * (signal**2).sum()))
    return {
        "residual_std_over_sigma": float(residual.std() / noise_std),
        "residual_mean_over_sigma": float(residual.mean() / noise_std),
        "residual_signal_correlation": correlation,
        "chi2_per_pixel": float((residual**2).mean() / noise_std**2),
    }


def exact_noise_gap(images: np.ndarray, clean: np.ndarray, noise_std: float, seed: int, rotations: np.ndarray) -> float:
    """Largest ``|y - clean - sigma z| / sigma`` over the first n images, with z simulate's own noise.

    Replays simulate's random stream (``torch.Generator().manual_seed(seed)``: the N poses, then
    ``randn`` of the whole ``(N, B, B)`` stack); float32 rounding only (~1e-6) when the renders,
    sigma and the seed are simulate's. Exits when the replayed poses are not truth.npz's.

    Args:
        images: ``(n, B, B)`` the stack's first n images.
        clean: ``(N, B, B)`` noise-free renders of the true conformations, all N images.
        noise_std: sigma.
        seed: ``SimulationSettings.seed`` of the simulation.
        rotations: ``(N, 3, 3)`` truth.npz's poses.
    """
    generator = torch.Generator().manual_seed(seed)
    replayed = random_rotations(len(clean), generator, dtype=torch.float64).numpy()
    if not np.array_equal(replayed, rotations):
        raise SystemExit(f"--seed {seed} does not replay the simulation's poses")
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32).numpy()[: len(images)]
    simulated = clean[: len(images)] + noise_std * noise
    return float(np.abs(images - simulated).max() / noise_std)


def log_likelihoods(images: np.ndarray, conformations: list[AtomicModel], table: ParticleTable, settings: SimulationSettings, noise_std: float) -> np.ndarray:
    """``(n, C)`` Gaussian log-likelihoods ``-||y_n - render(c)||^2 / (2 sigma^2)`` (dimensionless).

    Args:
        images: ``(n, B, B)`` float32, the first n images of the stack.
        conformations: the C models of the series.
        table: the first n rows of the particle table (poses, CTFs).
        settings: the simulation's rendering settings (box, pixel size, sigma_A, atoms).
        noise_std: sigma, in the images' units.

    Each conformation is rendered for all n images, ``settings.batch_size`` at a time inside
    :func:`render_particles` (n x B^2 float32 per conformation: 33 MB for 2000 of 64 px).
    """
    n, n_conformations = len(images), len(conformations)
    values = np.empty((n, n_conformations))
    started = time.perf_counter()
    for c in range(n_conformations):
        rendered = render_particles(conformations, np.full(n, c), table, settings)
        difference = images.astype(np.float64) - rendered
        values[:, c] = -np.einsum("nij,nij->n", difference, difference) / (2 * noise_std**2)
        if (c + 1) % 10 == 0 or c + 1 == n_conformations:
            print(f"  rendered conformation {c + 1}/{n_conformations}, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return values


def posterior(log_likelihood: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """``(n, C)`` posterior p(c | y_n) from ``(n, C)`` log-likelihoods and a ``(C,)`` log prior."""
    log_post = log_likelihood + log_prior
    log_post = log_post - log_post.max(axis=1, keepdims=True)
    weights = np.exp(log_post)
    return weights / weights.sum(axis=1, keepdims=True)


def oracle_scores(probabilities: np.ndarray, coords: np.ndarray, conformation: np.ndarray) -> dict[str, object]:
    """Per-image RMSD summaries of the posterior mean, the MAP and the best single structure.

    Args:
        probabilities: ``(n, C)`` posterior.
        coords: ``(C, R, 3)`` CA coordinates, Å.
        conformation: ``(n,)`` true conformation of each image.

    Returns:
        ``{"posterior_mean", "map", "best_single"}`` -> median/mean/p90 RMSD, Å, and how sure the
        posterior is: the MAP's hit rate (exact and within one conformation index), the mean
        probability of the truth, the mean effective number of conformations ``exp(entropy)``.
    """
    coords = coords.astype(np.float64)
    predicted = np.tensordot(probabilities, coords, axes=1)
    best = probabilities.argmax(axis=1)
    single = best_single_structure(coords, conformation)
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-300, None))).sum(axis=1)
    return {
        "posterior_mean": summary(per_image_rmsd(predicted, coords, conformation)),
        "map": summary(per_image_rmsd(coords[best], coords, conformation)),
        "best_single": summary(per_image_rmsd(single, coords, conformation)),
        "map_accuracy": float((best == conformation).mean()),
        "map_within_1": float((np.abs(best - conformation) <= 1).mean()),
        "mean_p_true": float(probabilities[np.arange(len(conformation)), conformation].mean()),
        "mean_effective_conformations": float(np.exp(entropy).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sim", type=Path, help="folder written by simulate (particles.star, particles.mrcs, truth.npz)")
    parser.add_argument("--conformations", type=Path, default=None, help="the series' PDB (default: from the folder's name)")
    parser.add_argument("--atoms", choices=("all", "residue"), default=None, help="what simulate rendered (default: from the folder's name)")
    parser.add_argument("--n", type=int, default=None, help="use the first n images (default all)")
    parser.add_argument("--prior", choices=("uniform", "empirical"), default="uniform", help="prior over conformations")
    parser.add_argument("--seed", type=int, default=None, help="the simulation's seed: also replay its noise and check it exactly")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: leave the machine's other jobs alone)")
    parser.add_argument("--batch-size", type=int, default=256, help="images rendered at once")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON lines file to append to")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    sim: Path = args.sim
    series = args.conformations or default_conformations(sim)
    atoms = args.atoms or ("residue" if sim.resolve().name.endswith("_residue") else "all")
    truth = dict(np.load(sim / "truth.npz"))
    snr = float(truth["snr"])
    if not math.isfinite(snr):
        raise SystemExit(f"{sim}: noise-free simulation (SNR inf); the posterior is exact and the oracle's RMSD is 0")
    star = read_star(sim / "particles.star")
    table = truth_table(truth, star)
    conformation = truth["conformation"].astype(np.int64)
    coords = truth["coords"]
    conformations = load_conformations([series])
    coords_gap = check_series(conformations, coords)
    n_total = len(table)
    n = n_total if args.n is None else min(args.n, n_total)
    settings = SimulationSettings(
        n_images=n_total,
        box=int(table.image_size[0]),
        pixel_size_A=float(truth["pixel_size_A"]),
        snr=snr,
        sigma_A=float(truth["sigma_A"]),
        atoms=atoms,
        batch_size=args.batch_size,
    )

    # sigma exactly as simulate: the variance of the whole noise-free stack over the SNR.
    clean = render_particles(conformations, conformation, table, settings)
    signal_variance = float(clean.var(dtype=np.float64))
    noise_std = math.sqrt(signal_variance / snr)
    with ParticleImages(table.image_paths, table.image_indices) as stack:
        images = stack.read(np.arange(n))
    check = noise_check(images, clean[:n], noise_std)
    if args.seed is not None:
        check["exact_noise_gap_over_sigma"] = exact_noise_gap(images, clean, noise_std, args.seed, table.rotations)
    print(f"{sim}: sigma {noise_std:.4f} (signal variance {signal_variance:.4f}, SNR {snr:g}); noise check {json.dumps(check)}", file=sys.stderr)

    n_conformations = len(conformations)
    if args.prior == "uniform":
        log_prior = np.zeros(n_conformations)
    else:
        log_prior = np.log(np.bincount(conformation, minlength=n_conformations) / n_total)
    log_likelihood = log_likelihoods(images, conformations, table.subset(np.arange(n)), settings, noise_std)
    scores = oracle_scores(posterior(log_likelihood, log_prior), coords, conformation[:n])

    result = {
        "sim": str(sim),
        "series": str(series),
        "atoms": atoms,
        "snr": snr,
        "n": n,
        "n_conformations": n_conformations,
        "prior": args.prior,
        "noise_std": noise_std,
        "signal_variance": signal_variance,
        "noise_check": check,
        "coords_gap_A": coords_gap,
        "oracle_posterior_mean": scores["posterior_mean"]["median"],
        "oracle_posterior_mean_p90": scores["posterior_mean"]["p90"],
        "oracle_map": scores["map"]["median"],
        "oracle_map_p90": scores["map"]["p90"],
        "single": scores["best_single"]["median"],
        "single_p90": scores["best_single"]["p90"],
        **{key: scores[key] for key in ("map_accuracy", "map_within_1", "mean_p_true", "mean_effective_conformations")},
        "rmsd_A": {key: scores[key] for key in ("posterior_mean", "map", "best_single")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    line = json.dumps(result)
    print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        handle.write(line + "\n")


if __name__ == "__main__":
    main()
