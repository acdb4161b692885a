"""Decoding latents into structures: CA/C1' coordinates and full-atom models, one file or one per model."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from cryodomain.io.structure import AtomicModel
from cryodomain.io.structure_writer import write_structure
from cryodomain.model.cryosphere import CryoSphere
from cryodomain.model.deformation import deform_atoms
from cryodomain.progress import progress_bar
from cryodomain.workflows.distributed import Processes, barrier, share
from cryodomain.workflows.reweighting import ANCHORS, Reweighting, reweight
from cryodomain.workflows.trained_run import TrainedRun

# Latent draws per image for a posterior-expected structure: antithetic pairs, the same for every
# image, so that the result depends neither on the batch size nor on the processes.
POSTERIOR_SAMPLES = 32
POSTERIOR_SEED = 0
# How a particle's structure is estimated from its image (docs/method.md, "Per-particle structures"):
# "reweighted": weighed by its likelihood over the decoded population (workflows/reweighting.py);
# "expected": its expectation under the encoder's posterior; "mean": decoded at the latent mean.
ESTIMATES = ("reweighted", "expected", "mean")
DEFAULT_ESTIMATE = "reweighted"


def posterior_draws(latent_dim: int, samples: int = POSTERIOR_SAMPLES) -> torch.Tensor:
    """Fixed standard-normal draws ``(S, D)``: ``S / 2`` seeded draws and their negatives (mean exactly 0)."""
    half = torch.randn((samples + 1) // 2, latent_dim, generator=torch.Generator().manual_seed(POSTERIOR_SEED))
    return torch.cat([half, -half])[:samples]


def decode_batches(
    model: CryoSphere,
    z: np.ndarray,
    *,
    stds: np.ndarray | None = None,
    reweighting: Reweighting | None = None,
    atoms_of: AtomicModel | None = None,
    gaussians: bool = False,
    batch_size: int = 128,
    progress: bool = True,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, coords)`` batches of structures decoded from latents ``z`` ``(M, D)``.

    Coordinates are ``(b, R, 3)`` residues, or ``(b, A, 3)`` every atom of ``atoms_of`` (each atom
    moves with its residue's rigid transform), or with ``gaussians`` the ``(b, R, 3)`` positions of
    the residue Gaussians (for maps), in Å in the frame of the input model. The
    segmentation's variational means are used (no sampling).

    With ``stds`` ``(M, D)``, ``z`` and ``stds`` are each image's posterior and the structure is its
    expectation under it: the mean of the structures at ``z + stds * e`` over the
    :func:`posterior_draws` ``e``. That is the estimate of least expected squared error; where an
    image says little (high noise) it leans towards the structures the other images support, where
    decoding the mean would not (benchmarks/RESULTS.md, "Per-particle structures").

    With ``reweighting`` (:mod:`~cryodomain.workflows.reweighting`, its rows those of ``z``, the
    latent means) each structure is the likelihood-weighted mean of the anchors' structures and of
    the structure at ``z``.
    """
    device = model.base_coords.device
    if atoms_of is not None:
        atom_points = torch.as_tensor(atoms_of.atom_coords, dtype=torch.float32, device=device)
        atom_index = torch.as_tensor(atoms_of.atom_residue_index, device=device)

    def placed(rotations: torch.Tensor, translations: torch.Tensor) -> torch.Tensor:
        if atoms_of is not None:
            return deform_atoms(atom_points, atom_index, rotations, translations)
        coords, render = model.place(rotations, translations)
        return render if gaussians else coords

    def structures(latents: torch.Tensor) -> torch.Tensor:
        deformation = model.decode(latents, sample_segmentation=False)
        return placed(deformation.rotations, deformation.translations)

    def reweighted(latents: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
        # The structures are linear in the residue transforms: average those (K x R x 12 numbers),
        # not K structures of every atom.
        own = model.decode(latents, sample_segmentation=False)
        w = torch.as_tensor(weights, dtype=torch.float32, device=device)
        rotations = (w[:, :-1] @ anchors.rotations.flatten(1)).view_as(own.rotations) + w[:, -1:, None, None] * own.rotations
        translations = (w[:, :-1] @ anchors.translations.flatten(1)).view_as(own.translations) + w[:, -1:, None] * own.translations
        return placed(rotations, translations)

    draws = None if stds is None else posterior_draws(z.shape[1]).to(device)
    with torch.no_grad():
        if reweighting is not None:
            anchors = model.decode(torch.as_tensor(reweighting.anchors, dtype=torch.float32, device=device), sample_segmentation=False)
        for start in progress_bar(range(0, len(z), batch_size), "structures", enabled=progress):
            rows = slice(start, min(start + batch_size, len(z)))
            mean = torch.as_tensor(z[rows], dtype=torch.float32, device=device)
            if reweighting is not None:
                coords = reweighted(mean, reweighting.weights[rows])
            elif draws is None:
                coords = structures(mean)
            else:
                std = torch.as_tensor(stds[rows], dtype=torch.float32, device=device)
                coords = sum(structures(mean + std * draw) for draw in draws) / len(draws)
            yield rows, coords.cpu().numpy().astype(np.float32)


def write_coordinates(
    path: Path,
    model: CryoSphere,
    z: np.ndarray,
    *,
    stds: np.ndarray | None = None,
    reweighting: Reweighting | None = None,
    atoms_of: AtomicModel | None = None,
    progress: bool = True,
    processes: Processes = Processes(),
) -> np.ndarray:
    """Decode ``z`` (with ``stds`` or ``reweighting``: see :func:`decode_batches`) into ``path``
    (``.npy`` ``(M, R or A, 3)`` float32), streamed batch by batch; returns the file memory-mapped.

    With several processes (torchrun) each decodes a contiguous share of ``z`` into the same file;
    the main process creates it under a temporary name and renames it when all are done, so the
    final name never holds a partial file.
    """
    path = Path(path)
    n_points = atoms_of.n_atoms if atoms_of is not None else model.base_coords.shape[0]
    partial = path.with_name(f".{path.name}.partial.npy")
    if processes.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(len(z), n_points, 3)).flush()
    barrier(processes)
    out = np.load(partial, mmap_mode="r+")
    mine = share(len(z), processes)
    try:
        mine_reweighting = None if reweighting is None else dataclasses.replace(reweighting, weights=reweighting.weights[mine])
        for rows, coords in decode_batches(
            model,
            z[mine],
            stds=None if stds is None else stds[mine],
            reweighting=mine_reweighting,
            atoms_of=atoms_of,
            progress=progress and processes.is_main,
        ):
            out[mine.start + rows.start : mine.start + rows.stop] = coords
        out.flush()
        del out
        barrier(processes)
        if processes.is_main:
            os.replace(partial, path)
    except BaseException:
        if processes.is_main:
            partial.unlink(missing_ok=True)
        raise
    barrier(processes)
    return np.load(path, mmap_mode="r")


def write_split_models(directory: Path, structure: AtomicModel, coords: np.ndarray, *, full_atom: bool, progress: bool = True) -> list[Path]:
    """One mmCIF file per structure, ``model_0001.cif`` ... numbered as the models of the multi-model
    file; files of an earlier, longer run in ``directory`` are removed.

    Args:
        directory: where the files go (created).
        structure: the base model (names, numbers, chains).
        coords: ``(M, R, 3)`` residues or with ``full_atom`` ``(M, A, 3)`` atoms, Å.
        full_atom: whether ``coords`` holds every atom.

    Returns:
        The M paths, in model order.
    """
    directory = Path(directory)
    width = max(4, len(str(len(coords))))
    paths = [directory / f"model_{number:0{width}d}.cif" for number in range(1, len(coords) + 1)]
    for path, model in progress_bar(list(zip(paths, coords)), "model files", enabled=progress):
        write_structure(path, structure, np.asarray(model), full_atom=full_atom)
    kept = {path.name for path in paths}
    for stale in directory.glob("model_*.cif"):
        if stale.name not in kept:
            stale.unlink()
    return paths


def write_particle_structures(
    path: Path,
    run: TrainedRun,
    estimate: str,
    indices: np.ndarray | None = None,
    *,
    atoms_of: AtomicModel | None = None,
    n_anchors: int = ANCHORS,
    progress: bool = True,
    processes: Processes = Processes(),
) -> np.ndarray:
    """Each particle's structure by ``estimate`` (one of :data:`ESTIMATES`; ``n_anchors`` for
    ``"reweighted"``) into ``path`` (see :func:`write_coordinates`), for the particles ``indices``
    (all when None), in that order."""
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
    posterior = run.latent_posterior(progress=progress, processes=processes)
    indices = np.arange(len(posterior.means)) if indices is None else np.asarray(indices, dtype=np.int64)
    z, stds, reweighting = posterior.means[indices], None, None
    if estimate == "expected":
        stds = posterior.stds[indices]
    elif estimate == "reweighted":
        reweighting = reweight(run, posterior, indices, n_anchors=n_anchors, progress=progress, processes=processes)
    return write_coordinates(path, run.model, z, stds=stds, reweighting=reweighting, atoms_of=atoms_of, progress=progress, processes=processes)
