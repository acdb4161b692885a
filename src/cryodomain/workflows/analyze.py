"""Analysis of a trained run: the latent space, motions along it, clusters, the segmentation.

From the latent mean of every image (in particle order):

* PCA: explained variance, and for each of the first PCs a traversal from the 5th to the 95th
  percentile of that PC's coordinate; each point is replaced by the nearest real latent (Euclidean
  in latent space) and its structure decoded with the segmentation means (no sampling).
* k-means: a label per particle, the centres replaced by their nearest real latents and decoded,
  and one RELION star file per cluster holding that cluster's particles.
* Optional UMAP embedding (``umap-learn``, an optional dependency).
* The learned segmentation per residue, as a table and as B-factors of the base model.
* Optional volumes of the decoded structures, rendered with the residue Gaussians of training.
* Pictures: latent density with traversals and centres, explained variance, segment membership,
  training curves, observed vs model images.

Every file is written atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from cryodomain import plots
from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.io.star import write_star
from cryodomain.io.structure import AtomicModel, write_structure
from cryodomain.model.cryosphere import CryoSphere
from cryodomain.model.losses import correlation_loss
from cryodomain.physics.ctf import compute_ctf
from cryodomain.physics.render import render_volume
from cryodomain.progress import progress_bar
from cryodomain.workflows.config import RunConfig
from cryodomain.workflows.data import ctf_parameters
from cryodomain.workflows.distributed import Workers
from cryodomain.workflows.structures import decode_batches
from cryodomain.workflows.train import (
    WEIGHTED_TERMS,
    MetricsLog,
    TrainingData,
    build_context,
    latent_means,
    load_run,
    render,
    resolve_device,
)

log = logging.getLogger(__name__)

# Range of a PC's coordinate covered by a traversal (percentiles), as in cryoDRGN and cryoSPHERE.
TRAVERSAL_PERCENTILES = (5.0, 95.0)
# k-means restarts; explicit so results do not change with scikit-learn's default.
KMEANS_N_INIT = 10


@dataclass(frozen=True)
class AnalysisSettings:
    """What to compute.

    Attributes:
        n_pcs: principal components to traverse (at most the latent dimension).
        n_points: points per traversal.
        n_clusters: k-means clusters (at most the number of images).
        umap: also compute a UMAP embedding (needs ``umap-learn``).
        full_atom: decoded structures hold every atom (default: CA / C1' only).
        volumes: render MRC maps of the k-means centres and the traversal end points.
        volume_box: side of the maps in voxels (default: the run's image box).
        volume_pixel_size_A: voxel size in Å (default: the run's pixel size).
        n_example_images: particles shown in the observed vs model picture.
        batch_size: images per batch when computing latents.
        progress: show progress bars.
    """

    n_pcs: int = 3
    n_points: int = 10
    n_clusters: int = 10
    umap: bool = False
    full_atom: bool = False
    volumes: bool = False
    volume_box: int | None = None
    volume_pixel_size_A: float | None = None
    n_example_images: int = 6
    batch_size: int = 256
    progress: bool = True


@dataclass
class AnalysisOutputs:
    """Paths of what :func:`analyze_run` wrote."""

    out_dir: Path
    latents: Path
    trajectories: list[Path] = field(default_factory=list)
    kmeans_structures: Path | None = None
    cluster_stars: list[Path] = field(default_factory=list)
    segments_table: Path | None = None
    segments_structure: Path | None = None
    volumes: list[Path] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class LatentPCA:
    """Principal components of the latent means. N images, D latent dimensions, C = min(N, D).

    Attributes:
        mean: ``(D,)`` mean latent.
        components: ``(C, D)`` unit principal axes, by decreasing variance.
        explained_variance: ``(C,)`` variance along each axis.
        explained_variance_ratio: ``(C,)`` fraction of the total variance.
        projections: ``(N, C)`` coordinate of every image along each axis.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    projections: np.ndarray


# ---------------------------------------------------------------------------------------------
# Latent space
# ---------------------------------------------------------------------------------------------


def check_settings(settings: AnalysisSettings) -> None:
    """InputError naming the flag when a setting cannot be used."""
    for flag, value, smallest in (("--pcs", settings.n_pcs, 1), ("--points", settings.n_points, 2), ("--kmeans", settings.n_clusters, 1)):
        if value < smallest:
            raise input_error(None, flag, f"must be at least {smallest}, got {value}", f"use {flag} {max(smallest, 2)} or more")
    if settings.volume_box is not None and settings.volume_box < 2:
        raise input_error(None, "--box", f"must be at least 2 voxels, got {settings.volume_box}", "give the map side in voxels")
    if settings.volume_pixel_size_A is not None and not settings.volume_pixel_size_A > 0:
        raise input_error(None, "--apix", f"must be positive, got {settings.volume_pixel_size_A}", "give the voxel size in Å")


def require_umap():
    """The ``umap`` module, or an InputError telling how to install it."""
    try:
        import umap
    except ImportError:
        raise input_error(None, "--umap", "needs the optional package umap-learn, which is not installed", "pip install umap-learn, or leave out --umap") from None
    return umap


def nearest_latents(z: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Index of the real latent nearest (Euclidean) to each point.

    Args:
        z: ``(N, D)`` latent means of the images.
        points: ``(M, D)`` points of the latent space.

    Returns:
        ``(M,)`` int64 indices into ``z`` (the first one on ties).
    """
    z = np.asarray(z, dtype=np.float64)
    # One point at a time keeps memory at N x D whatever M is.
    return np.array([np.argmin(((z - point) ** 2).sum(axis=1)) for point in np.asarray(points, dtype=np.float64)], dtype=np.int64)


def latent_pca(z: np.ndarray) -> LatentPCA:
    """PCA (scikit-learn, exact SVD) of the latent means ``z`` ``(N, D)``, all ``min(N, D)`` components."""
    z = np.asarray(z, dtype=np.float64)
    pca = PCA(n_components=min(z.shape), svd_solver="full")
    projections = pca.fit_transform(z)
    return LatentPCA(pca.mean_, pca.components_, pca.explained_variance_, pca.explained_variance_ratio_, projections)


def pc_traversal(z: np.ndarray, pca: LatentPCA, pc: int, n_points: int) -> np.ndarray:
    """Real images along one principal axis.

    Points evenly spaced along axis ``pc`` (through the mean) from the 5th to the 95th percentile of
    the images' coordinate on it, each replaced by the nearest real latent. Along a line the nearest
    points are in the same order as the line's points, so the result is ordered along the PC.

    Args:
        z: ``(N, D)`` latent means.
        pca: their :func:`latent_pca`.
        pc: 0-based index of the principal axis.
        n_points: points of the traversal.

    Returns:
        ``(n_points,)`` int64 particle indices (an image can appear more than once).
    """
    low, high = np.percentile(pca.projections[:, pc], TRAVERSAL_PERCENTILES)
    steps = np.linspace(low, high, n_points)
    points = pca.mean + steps[:, None] * pca.components[pc]
    return nearest_latents(z, points)


def kmeans_latents(z: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the latent means, with centres replaced by their nearest real latents.

    Args:
        z: ``(N, D)`` latent means.
        n_clusters: wanted clusters; ``min(n_clusters, N)`` are made.
        seed: random seed (reduced modulo 2**32 for scikit-learn).

    Returns:
        ``(labels, centre_indices)``: ``(N,)`` int64 cluster of each image (0-based) and ``(K,)``
        int64 index of the image nearest to each cluster's centre.
    """
    z = np.asarray(z, dtype=np.float64)
    kmeans = KMeans(n_clusters=min(n_clusters, len(z)), n_init=KMEANS_N_INIT, random_state=seed % 2**32)
    labels = kmeans.fit_predict(z).astype(np.int64)
    return labels, nearest_latents(z, kmeans.cluster_centers_)


# ---------------------------------------------------------------------------------------------
# Structures, segmentation and volumes
# ---------------------------------------------------------------------------------------------


def structure_suffix(structure: AtomicModel) -> str:
    """``.pdb``, or ``.cif`` when a chain name is longer than the 2 characters PDB can hold."""
    return ".cif" if any(len(name) > 2 for name in structure.chain_ids.tolist()) else ".pdb"


def decode_structures(model: CryoSphere, z: np.ndarray, *, atoms_of: AtomicModel | None = None, progress: bool = True) -> np.ndarray:
    """Structures at latents ``z`` ``(M, D)``: ``(M, R, 3)`` residues or ``(M, A, 3)`` atoms of ``atoms_of``, Å."""
    return np.concatenate([coords for _, coords in decode_batches(model, z, atoms_of=atoms_of, progress=progress)])


def segment_table(structure: AtomicModel, segment: np.ndarray, probability: np.ndarray) -> pd.DataFrame:
    """One row per residue: chain, residue_number, insertion_code, residue_name, segment, probability.

    Args:
        structure: the base model.
        segment: ``(R,)`` int segment of each residue (-1 outside every part).
        probability: ``(R,)`` membership of that segment.
    """
    return pd.DataFrame(
        {
            "chain": structure.chain_ids,
            "residue_number": structure.residue_numbers,
            "insertion_code": structure.insertion_codes,
            "residue_name": structure.residue_names,
            "segment": np.asarray(segment, dtype=np.int64),
            "probability": np.round(np.asarray(probability, dtype=np.float64), 6),
        }
    )


def write_volume(path: str | Path, volume: np.ndarray, pixel_size_A: float) -> None:
    """Write a ``(N, N, N)`` ``[z, y, x]`` map as MRC, atomically, in the box-centred frame.

    The header's voxel size is ``pixel_size_A`` and its origin ``-(N // 2) * pixel_size_A`` on each
    axis, so voxel ``N // 2`` sits at coordinate 0, where the centred model's origin is.
    """
    volume = np.asarray(volume, dtype=np.float32)
    with atomic_output(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = pixel_size_A
        mrc.header.origin = tuple((-(np.array(volume.shape[::-1]) // 2) * pixel_size_A).tolist())


def write_structure_volumes(
    paths: list[Path], model: CryoSphere, residue_coords: np.ndarray, sigma_A: float, box: int, pixel_size_A: float, *, progress: bool = True
) -> None:
    """Render each structure with the residue Gaussians of training and write it to its path.

    Args:
        paths: one ``.mrc`` path per structure.
        model: gives the residue amplitudes (electrons).
        residue_coords: ``(M, R, 3)`` Å decoded residue positions.
        sigma_A: Gaussian width, Å (the run's ``model.sigma_A``).
        box: map side in voxels.
        pixel_size_A: voxel size, Å.
    """
    device = model.amplitudes.device
    with torch.no_grad():
        for path, coords in progress_bar(list(zip(paths, residue_coords)), "volumes", enabled=progress):
            points = torch.as_tensor(coords, dtype=torch.float32, device=device)
            volume = render_volume(points, model.amplitudes, sigma_A, box, pixel_size_A)
            write_volume(path, volume.cpu().numpy(), pixel_size_A)


# ---------------------------------------------------------------------------------------------
# Images and training curves
# ---------------------------------------------------------------------------------------------


def observed_and_model_images(
    model: CryoSphere, data: TrainingData, state: dict, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Experimental images as training compares them, and the model's images, for some particles.

    The observed image is the training target (scaled, shifted into the model frame, filtered and
    masked as configured); the model image is rendered exactly as in training from the structure at
    the image's latent mean with the segmentation means (no sampling).

    Args:
        model: the trained model (its device is used).
        data: the run's data.
        state: the checkpoint (config and dataset scale).
        rows: ``(B,)`` particle indices.

    Returns:
        ``(observed, predicted, correlation)``: ``(B, N, N)``, ``(B, N, N)`` float32 and ``(B,)``
        the normalised correlation of each pair (the training loss's measure, sign flipped).
    """
    config = RunConfig.model_validate(state["config"])
    device = model.base_coords.device
    context = build_context(model, data, config, state["scale"], device)
    batch = data.dataset[[int(row) for row in rows]]
    with torch.no_grad():
        encoder_input, target = context.preprocess(batch["images"].to(device), batch["shifts_A"].to(device))
        mean, _ = model.encode(encoder_input, batch["index"].to(device))
        deformation = model.decode(mean.float(), sample_segmentation=False)
        ctf = compute_ctf(context.preprocess.freqs, ctf_parameters(data.table, np.asarray(rows), device=device))
        predicted = render(deformation.coords, model.amplitudes, batch["rotations"].to(device), ctf, context)
        correlation = torch.stack([-correlation_loss(predicted[i : i + 1], target[i : i + 1]) for i in range(len(rows))])
    return target.cpu().numpy(), predicted.cpu().numpy(), correlation.cpu().numpy()


def metric_curves(metrics_path: str | Path, n_pixels: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Loss curves from a run's ``metrics.csv``; None when it is missing or empty.

    Args:
        metrics_path: the run's ``metrics.csv``.
        n_pixels: pixels per image, ``N * N`` (the KL terms enter the loss divided by it).

    Returns:
        ``(epochs (E,), {"total", "correlation"}, {term: weighted value})``, each value ``(E,)``:
        the regulariser as it entered the total loss, beta times the term (divided by ``n_pixels``
        for the KL terms, as in training).
    """
    rows = MetricsLog(Path(metrics_path)).read()
    if not rows:
        return None

    def column(name: str) -> np.ndarray:
        return np.array([float(row[name]) for row in rows])

    epochs = column("epoch").astype(np.int64)
    losses = {name: column(name) for name in ("total", "correlation")}
    regularisers = {
        name: column(f"beta_{name}") * column(name) / (n_pixels if name.endswith("_kl") else 1.0) for name in WEIGHTED_TERMS
    }
    return epochs, losses, regularisers


def example_rows(n_images: int, n_examples: int) -> np.ndarray:
    """Up to ``n_examples`` particle indices spread evenly over the dataset, ``(B,)`` int64."""
    return np.unique(np.linspace(0, n_images - 1, min(n_examples, n_images)).round().astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        np.save(tmp, array)


def _save_indices(path: Path, indices: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        np.savetxt(tmp, np.asarray(indices, dtype=np.int64), fmt="%d")


def _save_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)


def _remove_stale(directory: Path, pattern: str, written: list[Path]) -> None:
    """Delete files matching ``pattern`` in ``directory`` that this analysis did not write, so that
    an earlier analysis into the same folder (more clusters, other maps) leaves nothing misleading."""
    kept = {path.name for path in written}
    for path in sorted(directory.glob(pattern)):
        if path.name not in kept:
            log.info("removing %s from an earlier analysis", path)
            path.unlink()


def _number_width(count: int) -> int:
    """Digits of zero-padded file numbers 0..count-1 (at least 2)."""
    return max(2, len(str(max(count - 1, 0))))


# ---------------------------------------------------------------------------------------------
# The workflow
# ---------------------------------------------------------------------------------------------


def analyze_run(
    run_dir: str | Path,
    out_dir: str | Path,
    settings: AnalysisSettings = AnalysisSettings(),
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    workers: Workers = Workers(),
) -> AnalysisOutputs | None:
    """Analyse a trained run into ``out_dir`` (layout in the README, ``cryodomain analyze``).

    Under torchrun the per-particle work (the latent means) is shared among the processes; the
    main process does the rest and writes everything (the others return None).

    Args:
        run_dir: the training run directory (``last.pt``, ``metrics.csv``).
        out_dir: where to write.
        settings: what to compute.
        checkpoint: checkpoint to analyse (default ``run_dir/last.pt``).
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The written paths.
    """
    # Fail on options before the slow part.
    check_settings(settings)
    umap = require_umap() if settings.umap else None
    run_dir, out = Path(run_dir), Path(out_dir)
    model, state, data = load_run(run_dir, checkpoint, resolve_device(device))
    config = RunConfig.model_validate(state["config"])
    structure = data.structure
    if len(data.table) < 2:
        raise input_error(data.table.source, None, "a latent space analysis needs at least 2 particles", "train on more particles")
    suffix = structure_suffix(structure)
    atoms_of = structure if settings.full_atom else None
    volume_box = settings.volume_box or data.box
    volume_apix = settings.volume_pixel_size_A or data.pixel_size_A
    outputs = AnalysisOutputs(out_dir=out, latents=out / "z.npy")

    log.info("latent means of %d particles", len(data.table))
    z = latent_means(model, data, state, batch_size=settings.batch_size, progress=settings.progress, workers=workers)
    if not workers.is_main:
        return None
    _save_npy(outputs.latents, z)

    # PCA and traversals.
    pca = latent_pca(z)
    _save_npy(out / "pca_projections.npy", pca.projections.astype(np.float32))
    variance = pd.DataFrame(
        {
            "pc": np.arange(1, len(pca.explained_variance) + 1),
            "explained_variance": pca.explained_variance,
            "explained_variance_ratio": pca.explained_variance_ratio,
        }
    )
    _save_csv(out / "pca_explained_variance.csv", variance)
    n_pcs = min(settings.n_pcs, len(pca.explained_variance))
    if n_pcs < settings.n_pcs:
        log.info("the latent space has %d dimension(s): traversing %d PC(s) instead of %d", len(pca.explained_variance), n_pcs, settings.n_pcs)
    traversals: list[np.ndarray] = []
    point_width = _number_width(settings.n_points + 1)
    for pc in range(n_pcs):
        directory = out / f"pc{pc + 1}"
        indices = pc_traversal(z, pca, pc, settings.n_points)
        traversals.append(indices)
        _save_npy(directory / "z.npy", z[indices])
        _save_indices(directory / "indices.txt", indices)
        trajectory = directory / f"trajectory{suffix}"
        write_structure(trajectory, structure, decode_structures(model, z[indices], atoms_of=atoms_of, progress=settings.progress), full_atom=settings.full_atom)
        outputs.trajectories.append(trajectory)
        if settings.volumes:
            ends = [0, len(indices) - 1]
            paths = [directory / f"point_{end + 1:0{point_width}d}.mrc" for end in ends]
            residues = decode_structures(model, z[indices[ends]], progress=False)
            write_structure_volumes(paths, model, residues, config.model.sigma_A, volume_box, volume_apix, progress=settings.progress)
            outputs.volumes += paths
        _remove_stale(directory, "point_*.mrc", outputs.volumes)
        log.info("PC%d: %d structures from the 5th to the 95th percentile in %s", pc + 1, len(indices), trajectory)

    # k-means clusters.
    kmeans_dir = out / "kmeans"
    labels, centres = kmeans_latents(z, settings.n_clusters, config.optim.seed)
    n_clusters = len(centres)
    width = _number_width(n_clusters)
    _save_npy(kmeans_dir / "labels.npy", labels)
    _save_npy(kmeans_dir / "centers_z.npy", z[centres])
    _save_indices(kmeans_dir / "centers_indices.txt", centres)
    outputs.kmeans_structures = kmeans_dir / f"centers{suffix}"
    write_structure(outputs.kmeans_structures, structure, decode_structures(model, z[centres], atoms_of=atoms_of, progress=settings.progress), full_atom=settings.full_atom)
    for cluster in progress_bar(range(n_clusters), "cluster star files", enabled=settings.progress):
        members = np.flatnonzero(labels == cluster)
        if members.size == 0:
            # Only when the latents hold fewer distinct points than clusters.
            log.warning("k-means cluster %d is empty: no star file written", cluster)
            continue
        path = kmeans_dir / f"cluster_{cluster:0{width}d}.star"
        write_star(path, data.table.subset(members))
        outputs.cluster_stars.append(path)
    if settings.volumes:
        paths = [kmeans_dir / f"center_{cluster:0{width}d}.mrc" for cluster in range(n_clusters)]
        residues = decode_structures(model, z[centres], progress=False)
        write_structure_volumes(paths, model, residues, config.model.sigma_A, volume_box, volume_apix, progress=settings.progress)
        outputs.volumes += paths
    _remove_stale(kmeans_dir, "cluster_*.star", outputs.cluster_stars)
    _remove_stale(kmeans_dir, "center_*.mrc", outputs.volumes)
    log.info("k-means: %d clusters of sizes %s", n_clusters, np.bincount(labels, minlength=n_clusters).tolist())

    # Segmentation.
    segment, probability = model.segmentation.hard_assignment()
    outputs.segments_table = out / "segments.csv"
    _save_csv(outputs.segments_table, segment_table(structure, segment, probability))
    outputs.segments_structure = out / f"segments{suffix}"
    write_structure(outputs.segments_structure, structure, structure.atom_coords, full_atom=True, bfactors=segment + 1.0)

    # Pictures.
    centre_projections = pca.projections[centres, :2]
    marks = {f"PC{pc + 1} traversal": pca.projections[indices, :2] for pc, indices in enumerate(traversals)}
    marks["k-means centres"] = centre_projections
    picture = out / "latent_pca.png"
    plots.latent_density(picture, pca.projections[:, :2], marks, ("PC1", "PC2"), f"latent means of {len(z)} particles")
    outputs.pictures.append(picture)
    if umap is not None:
        embedding = umap.UMAP(n_neighbors=min(15, len(z) - 1), random_state=config.optim.seed % 2**32).fit_transform(z)
        embedding = np.asarray(embedding, dtype=np.float32)
        _save_npy(out / "umap.npy", embedding)
        umap_marks = {f"PC{pc + 1} traversal": embedding[indices] for pc, indices in enumerate(traversals)}
        umap_marks["k-means centres"] = embedding[centres]
        picture = out / "latent_umap.png"
        plots.latent_density(picture, embedding, umap_marks, ("UMAP1", "UMAP2"), f"UMAP of the latent means of {len(z)} particles")
        outputs.pictures.append(picture)
    picture = out / "pca_explained_variance.png"
    plots.explained_variance(picture, pca.explained_variance_ratio)
    outputs.pictures.append(picture)
    picture = out / "segments.png"
    plots.segment_membership(picture, segment, probability, structure.chain_ids)
    outputs.pictures.append(picture)
    curves = metric_curves(run_dir / "metrics.csv", data.box * data.box)
    if curves is None:
        log.warning("%s: no training metrics found, training_curves.png not drawn", run_dir / "metrics.csv")
    else:
        picture = out / "training_curves.png"
        plots.training_curves(picture, *curves, marked_epoch=state.get("epoch"))
        outputs.pictures.append(picture)
    rows = example_rows(len(z), settings.n_example_images)
    observed, predicted, correlation = observed_and_model_images(model, data, state, rows)
    picture = out / "images.png"
    plots.image_panel(
        picture,
        [observed, predicted],
        row_labels=["observed", "model"],
        titles=[f"#{row}  r {value:.2f}" for row, value in zip(rows.tolist(), correlation.tolist())],
        suptitle="observed images (shifted into the model frame) and the model's images at their latent means",
    )
    outputs.pictures.append(picture)
    return outputs
