"""Particle subsets of a trained run, chosen in its latent space, written back for RELION and cryoSPARC.

Criteria (each gives a mask over the run's particles; several combine as AND, ``invert`` takes the
complement of the result):

* k-means clusters of an analysis (``kmeans/labels.npy`` of ``cryodomain analyze``; cluster
  numbers are those of ``kmeans/cluster_NN.star``, from 0);
* a file of 0-based particle indices (text, one integer per line, or ``.npy``);
* ranges of PC coordinates (``pca_projections.npy`` of the analysis: the PCA ``analyze`` computed,
  PC numbers from 1, both ends included);
* the size of a segment's motion (segment numbers from 1; rotation angle in degrees or centre
  displacement in Å, from :mod:`cryodomain.workflows.motions`).

Every criterion is checked and every output built before the first file is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryodomain.errors import input_error
from cryodomain.io.atomic import save_indices
from cryodomain.io.subset_writer import cryosparc_subset, star_subset, write_cryosparc, write_star_blocks
from cryodomain.workflows.motions import segment_motions
from cryodomain.workflows.trained_run import TrainedRun

log = logging.getLogger(__name__)

FORMATS = ("star", "cs", "both")
MOTION_MEASURES = ("angle", "displacement")
# Where `cryodomain analyze RUN -o RUN/analysis` (the documented call) puts its outputs.
DEFAULT_ANALYSIS = "analysis"


@dataclass(frozen=True)
class Range:
    """``min <= value <= max`` on quantity ``number`` (a PC or a segment, 1-based)."""

    number: int
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.number}:{self.low:g}:{self.high:g}"


def parse_range(text: str, flag: str) -> Range:
    """``"K:min:max"`` -> :class:`Range` (K a positive integer, min <= max).

    Raises:
        InputError: naming ``flag`` and the expected form.
    """
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        number, low, high = int(parts[0]), float(parts[1]), float(parts[2])
    except ValueError:
        raise input_error(None, flag, f"{text!r} is not K:min:max", f"write e.g. {flag} 1:-1.5:0.5") from None
    if number < 1 or not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise input_error(None, flag, f"{text!r}: K counts from 1 and min must not exceed max", f"write e.g. {flag} 1:-1.5:0.5")
    return Range(number, low, high)


def parse_clusters(text: str) -> tuple[int, ...]:
    """``"1,3"`` -> ``(1, 3)``: k-means cluster numbers (from 0, as in ``cluster_NN.star``)."""
    try:
        clusters = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise input_error(None, "--clusters", f"{text!r} is not a comma-separated list of cluster numbers", "write e.g. --clusters 1,3") from None
    if not clusters or min(clusters) < 0:
        raise input_error(None, "--clusters", f"{text!r}: cluster numbers count from 0", "write e.g. --clusters 0,3")
    return clusters


@dataclass(frozen=True)
class Selection:
    """Which particles to write and how.

    Attributes:
        clusters: k-means clusters to keep (from 0), or None.
        indices_file: text or ``.npy`` file of 0-based particle indices to keep, or None.
        pc_ranges: ranges of PC coordinates (PC from 1); every one must hold.
        segment_motion: range of segment motion (segment from 1), or None.
        motion: ``angle`` (rotation, degrees) or ``displacement`` (segment centre, Å).
        invert: keep the particles the criteria reject instead.
        analysis_dir: the ``cryodomain analyze`` folder (default ``RUN/analysis``).
        formats: ``star``, ``cs`` or ``both``.
    """

    clusters: tuple[int, ...] | None = None
    indices_file: Path | None = None
    pc_ranges: tuple[Range, ...] = field(default_factory=tuple)
    segment_motion: Range | None = None
    motion: str = "angle"
    invert: bool = False
    analysis_dir: Path | None = None
    formats: str = "both"

    def check(self) -> None:
        """InputError naming the flag when the selection cannot be made."""
        if self.clusters is None and self.indices_file is None and not self.pc_ranges and self.segment_motion is None:
            raise input_error(None, "selection", "no criterion given", "give --clusters, --indices, --pc or --segment-motion")
        if self.formats not in FORMATS:
            raise input_error(None, "--format", f"{self.formats!r} is not one of {', '.join(FORMATS)}", "use --format star, cs or both")
        if self.motion not in MOTION_MEASURES:
            raise input_error(None, "--motion", f"{self.motion!r} is not one of {', '.join(MOTION_MEASURES)}", "use --motion angle or displacement")


@dataclass
class SelectionOutputs:
    """What :func:`select_particles` wrote."""

    out_dir: Path
    n_selected: int
    n_particles: int
    indices: Path
    star: Path | None = None
    cs: Path | None = None
    csg: Path | None = None


# ---------------------------------------------------------------------------------------------
# Criteria: each returns an (N,) bool mask
# ---------------------------------------------------------------------------------------------


def _load_analysis_array(path: Path, n_particles: int) -> np.ndarray:
    """An array ``analyze`` wrote, checked to have one row per particle of the run."""
    if not path.is_file():
        raise input_error(path, None, "not found", "run `cryodomain analyze RUN -o RUN/analysis` first, or pass --analysis with its folder")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise input_error(path, None, f"cannot read ({error})", "run cryodomain analyze again") from error
    if len(array) != n_particles:
        raise input_error(path, None, f"has {len(array)} rows but the run has {n_particles} particles", "pass --analysis with an analysis of this run")
    return array


def cluster_mask(labels: np.ndarray, clusters: tuple[int, ...], source: str | Path = "kmeans/labels.npy") -> np.ndarray:
    """``(N,)`` bool: particles whose k-means label is one of ``clusters``.

    Args:
        labels: ``(N,)`` int k-means label of each particle (0-based).
        clusters: the clusters to keep.

    Raises:
        InputError: a cluster the analysis does not have.
    """
    n_clusters = int(labels.max()) + 1
    unknown = sorted(set(clusters) - set(range(n_clusters)))
    if unknown:
        raise input_error(source, "--clusters", f"no cluster(s) {unknown}: the analysis has clusters 0 to {n_clusters - 1}", "pick clusters from that range")
    return np.isin(labels, clusters)


def read_index_file(path: str | Path, n_particles: int) -> np.ndarray:
    """0-based particle indices from a text file (one integer per line) or a ``.npy`` file.

    Returns:
        ``(M,)`` int64 indices (repeats allowed; they select once).

    Raises:
        InputError: unreadable, empty, not integers, or outside ``0..n_particles-1``.
    """
    path = Path(path)
    fix = "give 0-based particle indices, one integer per line (or a .npy array)"
    if not path.is_file():
        raise input_error(path, "--indices", "file not found", fix)
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        elif not path.read_text().strip():
            raise input_error(path, "--indices", "holds no indices", fix)
        else:
            values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except (OSError, ValueError, EOFError) as error:
        raise input_error(path, "--indices", f"cannot read ({' '.join(str(error).split())})", fix) from error
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0:
        raise input_error(path, "--indices", f"expected a list of indices, got an array of shape {values.shape}", fix)
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise input_error(path, "--indices", "holds values that are not integers", fix)
    indices = values.astype(np.int64)
    outside = np.flatnonzero((indices < 0) | (indices >= n_particles))
    if outside.size:
        raise input_error(path, "--indices", f"index {indices[outside[0]]} (line {outside[0] + 1}) is outside 0..{n_particles - 1}", fix)
    return indices


def range_mask(values: np.ndarray, bounds: Range) -> np.ndarray:
    """``(N,)`` bool: ``bounds.low <= values <= bounds.high`` for ``values`` ``(N,)``."""
    return (values >= bounds.low) & (values <= bounds.high)


def pc_mask(projections: np.ndarray, ranges: tuple[Range, ...], source: str | Path = "pca_projections.npy") -> np.ndarray:
    """``(N,)`` bool: particles whose PC coordinates lie in every range.

    Args:
        projections: ``(N, C)`` PC coordinates of the analysis.
        ranges: PC numbers from 1.
    """
    mask = np.ones(len(projections), dtype=bool)
    for bounds in ranges:
        if bounds.number > projections.shape[1]:
            raise input_error(
                source, "--pc", f"PC {bounds.number} asked, the analysis has {projections.shape[1]}", f"use a PC from 1 to {projections.shape[1]}"
            )
        mask &= range_mask(projections[:, bounds.number - 1], bounds)
    return mask


def motion_mask(run: TrainedRun, bounds: Range, measure: str, *, progress: bool = False) -> np.ndarray:
    """``(N,)`` bool: particles whose segment ``bounds.number`` (from 1) moves by an amount in ``bounds``.

    The motion is decoded at each particle's latent mean (:func:`~cryodomain.workflows.motions.segment_motions`).

    Args:
        run: the trained run.
        bounds: segment number and range: degrees for ``angle``, Å for ``displacement``.
        measure: ``angle`` (rotation angle) or ``displacement`` (segment centre displacement).
    """
    n_segments = run.model.segmentation.n_segments
    if bounds.number > n_segments:
        raise input_error(None, "--segment-motion", f"segment {bounds.number} asked, the model has {n_segments}", f"use a segment from 1 to {n_segments}")
    motions = segment_motions(run, run.latent_means(progress=progress), progress=progress)
    values = motions.angle_deg if measure == "angle" else motions.displacement_A
    return range_mask(values[:, bounds.number - 1], bounds)


# ---------------------------------------------------------------------------------------------
# The workflow
# ---------------------------------------------------------------------------------------------


def selection_mask(run: TrainedRun, selection: Selection, run_dir: Path) -> np.ndarray:
    """``(N,)`` bool: the particles of ``run`` that ``selection`` keeps (criteria ANDed, then inverted)."""
    n = len(run.data.table)
    analysis = Path(selection.analysis_dir) if selection.analysis_dir is not None else run_dir / DEFAULT_ANALYSIS
    mask = np.ones(n, dtype=bool)
    if selection.clusters is not None:
        labels_path = analysis / "kmeans" / "labels.npy"
        mask &= cluster_mask(_load_analysis_array(labels_path, n).astype(np.int64), selection.clusters, labels_path)
    if selection.indices_file is not None:
        mask &= np.isin(np.arange(n), read_index_file(selection.indices_file, n))
    if selection.pc_ranges:
        projections_path = analysis / "pca_projections.npy"
        mask &= pc_mask(_load_analysis_array(projections_path, n), selection.pc_ranges, projections_path)
    if selection.segment_motion is not None:
        mask &= motion_mask(run, selection.segment_motion, selection.motion)
    return ~mask if selection.invert else mask


def select_particles(
    run_dir: str | Path, out_dir: str | Path, selection: Selection, *, checkpoint: str | Path | None = None, device: str = "cpu", uid_seed: int | None = None
) -> SelectionOutputs:
    """Write the particles of a trained run that ``selection`` keeps (layout in ``cryodomain select``).

    Writes ``OUT/particles.star`` (RELION 3.1), ``OUT/particles.cs`` + ``OUT/particles.csg``
    (cryoSPARC, "Import Result Group") as ``selection.formats`` says, and ``OUT/indices.txt`` (the
    0-based rows of the input particle file, ascending).

    Args:
        run_dir: the training run folder.
        out_dir: where to write.
        selection: the criteria and formats.
        checkpoint: checkpoint for the motion criterion (default ``RUN/last.pt``).
        device: where the model runs (motion criterion).
        uid_seed: seed of fresh cryoSPARC uids (None: random).

    Raises:
        InputError: a bad criterion, or a selection without particles.
    """
    selection.check()
    run_dir, out = Path(run_dir), Path(out_dir)
    run = TrainedRun.load(run_dir, checkpoint, device)
    table = run.data.table
    rows = np.flatnonzero(selection_mask(run, selection, run_dir))
    if rows.size == 0:
        raise input_error(None, "selection", f"no particle of the {len(table)} matches the criteria", "widen the ranges, pick other clusters, or drop --invert")
    log.info("selected %d of %d particles", rows.size, len(table))

    # Build every output before writing any, so that a failure leaves nothing half-written.
    star_blocks = star_subset(table, rows, out) if selection.formats in ("star", "both") else None
    data_sign = -1.0 if run.config.data.invert_contrast else 1.0
    cs_rows = cryosparc_subset(table, rows, data_sign=data_sign, seed=uid_seed) if selection.formats in ("cs", "both") else None

    outputs = SelectionOutputs(out, int(rows.size), len(table), out / "indices.txt")
    save_indices(outputs.indices, rows)
    if star_blocks is not None:
        outputs.star = out / "particles.star"
        write_star_blocks(outputs.star, star_blocks)
    if cs_rows is not None:
        outputs.cs = out / "particles.cs"
        outputs.csg = write_cryosparc(outputs.cs, cs_rows, title=f"{rows.size} particles selected from {run_dir.name}")
    _remove_stale(out, [outputs.star, outputs.cs, outputs.csg])
    return outputs


def _remove_stale(out: Path, written: list[Path | None]) -> None:
    """Delete subset files of an earlier selection into ``out`` in a format not written now (they
    would disagree with ``indices.txt``)."""
    kept = {path.name for path in written if path is not None}
    for name in ("particles.star", "particles.cs", "particles.csg"):
        if name not in kept and (out / name).is_file():
            log.info("removing %s from an earlier selection", out / name)
            (out / name).unlink()
