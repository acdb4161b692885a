"""Analysis of a trained run: the latent space, motions along it, clusters, the segmentation.

From the latent mean of every image (in particle order):

* PCA: explained variance, and for each of the first PCs a traversal from the 5th to the 95th
  percentile of that PC's coordinate; each point is replaced by the nearest real latent (Euclidean
  in latent space) and its structure decoded with the segmentation means (no sampling).
* k-means: a label per particle, the centres replaced by their nearest real latents and decoded,
  and one RELION star file per cluster holding that cluster's particles.
* Optional UMAP embedding (``umap-learn``, an optional dependency).
* The learned segmentation per residue, as a table and as B-factors of the base model.
* Optional volumes of the decoded structures (every traversal point, the centres), rendered with
  the residue Gaussians of training; the maps of a series share one grid and origin.
* Segment motions per particle (:mod:`~cryodomain.workflows.motions`), how they follow each PC and
  along each traversal; per-residue flexibility (RMSF) as B-factors of the base model.
* With full atoms, bond and clash checks of every decoded structure
  (:mod:`~cryodomain.workflows.structure_quality`).
* ChimeraX scripts (:mod:`~cryodomain.workflows.chimerax`) that play the traversals and centres
  coloured by segment, and record a movie per PC.
* Pictures: latent density with traversals and centres, explained variance, segment membership,
  segment motions, training curves, observed vs model images.
* ``report.html``: all of it on one interactive page (:mod:`~cryodomain.workflows.report`).

Every file is written atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryodomain import plots
from cryodomain.errors import input_error
from cryodomain.io.atomic import save_csv, save_indices, save_npy
from cryodomain.io.maps import write_map
from cryodomain.io.star import write_star
from cryodomain.io.structure import AtomicModel
from cryodomain.io.structure_writer import write_structure
from cryodomain.model.cryosphere import CryoSphere
from cryodomain.physics.render import render_volume
from cryodomain.progress import progress_bar
from cryodomain.workflows.chimerax import Series, write_scripts
from cryodomain.workflows.distributed import Processes, resolve_device
from cryodomain.workflows.fit_report import example_rows, metric_curves, observed_and_model_images
from cryodomain.workflows.latent import LatentPCA, kmeans_latents, latent_pca, pc_traversal, require_umap, umap_embedding
from cryodomain.workflows.motions import residue_rmsf, segment_motions, write_flexibility, write_motion_files
from cryodomain.workflows.report import default_evaluation, write_report
from cryodomain.workflows.structure_quality import quality_summary, write_quality
from cryodomain.workflows.structures import decode_batches
from cryodomain.workflows.trained_run import TrainedRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisSettings:
    """What to compute.

    Attributes:
        n_pcs: principal components to traverse (at most the latent dimension).
        n_points: points per traversal.
        n_clusters: k-means clusters (at most the number of images).
        umap: also compute a UMAP embedding (needs ``umap-learn``).
        full_atom: decoded structures hold every atom (default: CA / C1' only).
        volumes: render MRC maps of the k-means centres and of every traversal point.
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
    motions: list[Path] = field(default_factory=list)
    flexibility: Path | None = None
    quality_tables: list[Path] = field(default_factory=list)
    quality_summary: str | None = None
    chimerax: list[Path] = field(default_factory=list)
    report: Path | None = None


def check_settings(settings: AnalysisSettings) -> None:
    """InputError naming the flag when a setting cannot be used."""
    for flag, value, smallest in (("--pcs", settings.n_pcs, 1), ("--points", settings.n_points, 2), ("--kmeans", settings.n_clusters, 1)):
        if value < smallest:
            raise input_error(None, flag, f"must be at least {smallest}, got {value}", f"use {flag} {max(smallest, 2)} or more")
    if settings.volume_box is not None and settings.volume_box < 2:
        raise input_error(None, "--box", f"must be at least 2 voxels, got {settings.volume_box}", "give the map side in voxels")
    if settings.volume_pixel_size_A is not None and not settings.volume_pixel_size_A > 0:
        raise input_error(None, "--apix", f"must be positive, got {settings.volume_pixel_size_A}", "give the voxel size in Å")


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


def write_structure_volumes(
    paths: list[Path], model: CryoSphere, residue_coords: np.ndarray, sigma_A: float | torch.Tensor, box: int, pixel_size_A: float, *, progress: bool = True
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
            write_map(path, volume.cpu().numpy(), pixel_size_A)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


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
# The workflow, in its parts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Analysis:
    """What the parts of :func:`analyze_run` share."""

    run: TrainedRun
    out: Path
    settings: AnalysisSettings
    z: np.ndarray  # (N, D) latent means
    suffix: str  # structure file suffix
    atoms_of: AtomicModel | None  # full-atom outputs
    volume_box: int
    volume_apix: float
    series: dict[str, Series] = field(default_factory=dict)  # "pc1", ..., "kmeans": for ChimeraX
    quality: dict[str, pd.DataFrame] = field(default_factory=dict)  # the same keys, full atom only

    def decode(self, z: np.ndarray) -> np.ndarray:
        return decode_structures(self.run.model, z, atoms_of=self.atoms_of, progress=self.settings.progress)

    def write_structures(self, path: Path, z: np.ndarray, key: str, outputs: AnalysisOutputs) -> None:
        """Decode ``z`` into the multi-model file ``path``; full-atom structures are checked beside it."""
        coords = self.decode(z)
        write_structure(path, self.run.data.structure, coords, full_atom=self.settings.full_atom)
        if self.atoms_of is not None:
            report = path.parent / "structures_quality.csv"
            self.quality[key] = write_quality(report, self.atoms_of, coords)
            outputs.quality_tables.append(report)
        _remove_stale(path.parent, "structures_quality.csv", outputs.quality_tables)

    def write_volumes(self, paths: list[Path], z: np.ndarray) -> None:
        sigma = self.run.context.sigma_A
        # The maps put each residue's Gaussian where training did.
        gaussians = np.concatenate([coords for _, coords in decode_batches(self.run.model, z, gaussians=True, progress=False)])
        write_structure_volumes(paths, self.run.model, gaussians, sigma, self.volume_box, self.volume_apix, progress=self.settings.progress)


def _pca_part(job: _Analysis, outputs: AnalysisOutputs) -> tuple[LatentPCA, list[np.ndarray]]:
    """PCA, its spectrum, and a decoded traversal per PC (with end-point maps on request)."""
    z, out, settings = job.z, job.out, job.settings
    pca = latent_pca(z)
    save_npy(out / "pca_projections.npy", pca.projections.astype(np.float32))
    variance = pd.DataFrame(
        {
            "pc": np.arange(1, len(pca.explained_variance) + 1),
            "explained_variance": pca.explained_variance,
            "explained_variance_ratio": pca.explained_variance_ratio,
        }
    )
    save_csv(out / "pca_explained_variance.csv", variance)
    n_pcs = min(settings.n_pcs, len(pca.explained_variance))
    if n_pcs < settings.n_pcs:
        log.info("the latent space has %d dimension(s): traversing %d PC(s) instead of %d", len(pca.explained_variance), n_pcs, settings.n_pcs)
    traversals: list[np.ndarray] = []
    point_width = _number_width(settings.n_points + 1)
    for pc in range(n_pcs):
        directory = out / f"pc{pc + 1}"
        indices = pc_traversal(z, pca, pc, settings.n_points)
        traversals.append(indices)
        save_npy(directory / "z.npy", z[indices])
        save_indices(directory / "indices.txt", indices)
        trajectory = directory / f"trajectory{job.suffix}"
        job.write_structures(trajectory, z[indices], f"pc{pc + 1}", outputs)
        outputs.trajectories.append(trajectory)
        paths = [directory / f"point_{point + 1:0{point_width}d}.mrc" for point in range(len(indices))] if settings.volumes else []
        if paths:
            # Every point, on the one grid of the run: a volume series (ChimeraX vseries).
            job.write_volumes(paths, z[indices])
            outputs.volumes += paths
        job.series[f"pc{pc + 1}"] = Series(
            trajectory, len(indices), paths, f"PC{pc + 1} traversal, {len(indices)} structures from the 5th to the 95th percentile"
        )
        _remove_stale(directory, "point_*.mrc", outputs.volumes)
        log.info("PC%d: %d structures from the 5th to the 95th percentile in %s", pc + 1, len(indices), trajectory)
    return pca, traversals


def _kmeans_part(job: _Analysis, outputs: AnalysisOutputs) -> np.ndarray:
    """k-means labels, centre structures, one star file per cluster (and centre maps); the centres."""
    z, settings, table = job.z, job.settings, job.run.data.table
    kmeans_dir = job.out / "kmeans"
    labels, centres = kmeans_latents(z, settings.n_clusters, job.run.config.optim.seed)
    n_clusters = len(centres)
    width = _number_width(n_clusters)
    save_npy(kmeans_dir / "labels.npy", labels)
    save_npy(kmeans_dir / "centers_z.npy", z[centres])
    save_indices(kmeans_dir / "centers_indices.txt", centres)
    outputs.kmeans_structures = kmeans_dir / f"centers{job.suffix}"
    job.write_structures(outputs.kmeans_structures, z[centres], "kmeans", outputs)
    for cluster in progress_bar(range(n_clusters), "cluster star files", enabled=settings.progress):
        members = np.flatnonzero(labels == cluster)
        if members.size == 0:
            # Only when the latents hold fewer distinct points than clusters.
            log.warning("k-means cluster %d is empty: no star file written", cluster)
            continue
        path = kmeans_dir / f"cluster_{cluster:0{width}d}.star"
        write_star(path, table.subset(members))
        outputs.cluster_stars.append(path)
    paths = [kmeans_dir / f"center_{cluster:0{width}d}.mrc" for cluster in range(n_clusters)] if settings.volumes else []
    if paths:
        job.write_volumes(paths, z[centres])
        outputs.volumes += paths
    job.series["kmeans"] = Series(outputs.kmeans_structures, n_clusters, paths, f"{n_clusters} k-means centres (real particles)")
    _remove_stale(kmeans_dir, "cluster_*.star", outputs.cluster_stars)
    _remove_stale(kmeans_dir, "center_*.mrc", outputs.volumes)
    log.info("k-means: %d clusters of sizes %s", n_clusters, np.bincount(labels, minlength=n_clusters).tolist())
    return centres


def _segments_part(job: _Analysis, outputs: AnalysisOutputs) -> tuple[np.ndarray, np.ndarray]:
    """The learned segmentation as a table and as B-factors of the base model."""
    structure = job.run.data.structure
    segment, probability = job.run.model.segmentation.hard_assignment()
    outputs.segments_table = job.out / "segments.csv"
    save_csv(outputs.segments_table, segment_table(structure, segment, probability))
    outputs.segments_structure = job.out / f"segments{job.suffix}"
    write_structure(outputs.segments_structure, structure, structure.atom_coords, full_atom=True, bfactors=segment + 1.0)
    return segment, probability


def _motions_part(job: _Analysis, outputs: AnalysisOutputs, pca: LatentPCA, traversals: list[np.ndarray]) -> None:
    """Segment motions of every particle, against the PCs and along the traversals; flexibility."""
    batch, progress = job.settings.batch_size, job.settings.progress
    motions = segment_motions(job.run, job.z, batch_size=batch, progress=progress)
    written = write_motion_files(job.out, motions, pca.projections, traversals)
    outputs.motions = [path for path in written if path.suffix == ".csv"]
    outputs.pictures += [path for path in written if path.suffix == ".png"]
    rmsf = residue_rmsf(job.run, job.z, batch_size=batch, progress=progress)
    outputs.flexibility = job.out / f"flexibility{job.suffix}"
    write_flexibility(outputs.flexibility, job.run.data.structure, rmsf)
    log.info("flexibility: RMSF median %.2f Å, largest %.2f Å", float(np.median(rmsf)), float(rmsf.max()))


def _chimerax_part(job: _Analysis, outputs: AnalysisOutputs, segment: np.ndarray) -> None:
    """The segment attribute file and one ChimeraX script per traversal, per movie, for the centres."""
    pcs = [series for key, series in job.series.items() if key.startswith("pc")]
    n_segments = job.run.model.segmentation.n_segments
    directory = job.out / "chimerax"
    structure = job.run.data.structure
    outputs.chimerax = write_scripts(directory, structure, segment, n_segments, pcs, job.series.get("kmeans"), outputs.flexibility)
    _remove_stale(directory, "*.cxc", outputs.chimerax)


def _pictures_part(job: _Analysis, outputs: AnalysisOutputs, pca: LatentPCA, traversals: list[np.ndarray], centres: np.ndarray, segmentation) -> None:
    """Latent density (PCA, UMAP), explained variance, segments, training curves, images."""
    z, out, run = job.z, job.out, job.run

    def draw(name: str, function, *args, **kwargs) -> None:
        picture = out / name
        function(picture, *args, **kwargs)
        outputs.pictures.append(picture)

    marks = {f"PC{pc + 1} traversal": pca.projections[indices, :2] for pc, indices in enumerate(traversals)}
    marks["k-means centres"] = pca.projections[centres, :2]
    draw("latent_pca.png", plots.latent_density, pca.projections[:, :2], marks, ("PC1", "PC2"), f"latent means of {len(z)} particles")
    if job.settings.umap:
        embedding = umap_embedding(z, run.config.optim.seed)
        save_npy(out / "umap.npy", embedding)
        umap_marks = {f"PC{pc + 1} traversal": embedding[indices] for pc, indices in enumerate(traversals)}
        umap_marks["k-means centres"] = embedding[centres]
        draw("latent_umap.png", plots.latent_density, embedding, umap_marks, ("UMAP1", "UMAP2"), f"UMAP of the latent means of {len(z)} particles")
    draw("pca_explained_variance.png", plots.explained_variance, pca.explained_variance_ratio)
    segment, probability = segmentation
    draw("segments.png", plots.segment_membership, segment, probability, run.data.structure.chain_ids)
    curves = metric_curves(run.run_dir / "metrics.csv", run.data.box * run.data.box)
    if curves is None:
        log.warning("%s: no training metrics found, training_curves.png not drawn", run.run_dir / "metrics.csv")
    else:
        draw("training_curves.png", plots.training_curves, *curves, marked_epoch=run.epoch)
    rows = example_rows(len(z), job.settings.n_example_images)
    observed, predicted, correlation = observed_and_model_images(run, rows)
    draw(
        "images.png",
        plots.image_panel,
        [observed, predicted],
        row_labels=["observed", "model"],
        titles=[f"#{row}  r {value:.2f}" for row, value in zip(rows.tolist(), correlation.tolist())],
        suptitle="observed images (shifted into the model frame) and the model's images at their latent means",
    )


def analyze_run(
    run_dir: str | Path,
    out_dir: str | Path,
    settings: AnalysisSettings = AnalysisSettings(),
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    processes: Processes = Processes(),
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
    if settings.umap:
        require_umap()
    out = Path(out_dir)
    run = TrainedRun.load(run_dir, checkpoint, resolve_device(device))
    data = run.data
    if len(data.table) < 2:
        raise input_error(data.table.source, None, "a latent space analysis needs at least 2 particles", "train on more particles")
    outputs = AnalysisOutputs(out_dir=out, latents=out / "z.npy")
    log.info("latent means of %d particles", len(data.table))
    z = run.latent_means(batch_size=settings.batch_size, progress=settings.progress, processes=processes)
    if not processes.is_main:
        return None
    save_npy(outputs.latents, z)
    job = _Analysis(
        run,
        out,
        settings,
        z,
        structure_suffix(data.structure),
        data.structure if settings.full_atom else None,
        settings.volume_box or data.box,
        settings.volume_pixel_size_A or data.pixel_size_A,
    )
    pca, traversals = _pca_part(job, outputs)
    centres = _kmeans_part(job, outputs)
    if job.quality:
        outputs.quality_summary = quality_summary(job.quality)
        log.info("%s", outputs.quality_summary)
    segmentation = _segments_part(job, outputs)
    _motions_part(job, outputs, pca, traversals)
    _chimerax_part(job, outputs, segmentation[0])
    _pictures_part(job, outputs, pca, traversals, centres, segmentation)
    # Last: the page shows what was written above (and the run's evaluation when there is one).
    outputs.report = write_report(run.run_dir, out, out / "report.html", default_evaluation(run.run_dir))
    return outputs
