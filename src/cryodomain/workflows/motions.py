"""Segment motions and per-residue flexibility of decoded structures.

For a latent ``z`` the decoder gives each segment ``k`` a rotation vector ``r_k`` and a translation
(:mod:`cryodomain.model.deformation`). Read per particle and segment:

* ``angle_deg``, ``axis``: the rotation ``exp(r_k)`` as an angle in [0, 180] degrees about a unit axis
  (the axis is 0 where the angle is 0);
* ``translation_A``: the translation of the same rigid motion written about the segment's centre
  ``c_k`` in the base model, ``x -> R_k (x - c_k) + c_k + t``: what the segment's centre would move
  by if every residue belonged to it fully (``t_k`` itself when the model rotates segments about
  their centres, ``rotate_about: segment``);
* ``displacement_A``: how far the segment's centre really moves, ``|c'_k - c_k|``, with ``c_k`` and
  ``c'_k`` the membership-weighted centres of the residues (CA / C1') before and after the
  deformation. Memberships are soft, so a residue shared between segments moves with a blend
  of their motions and ``c'_k`` includes that.

Centres weight residues by their segmentation means ``w_ik`` (as the model's pivots do), not by
their electrons. Rotations are about the model frame's origin, the box centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import roma
import torch
from scipy.stats import rankdata
from torch import Tensor

from cryodomain import plots
from cryodomain.io.atomic import save_csv
from cryodomain.io.structure import AtomicModel
from cryodomain.io.structure_writer import write_structure
from cryodomain.model.cryosphere import CryoSphere
from cryodomain.progress import progress_bar
from cryodomain.workflows.trained_run import TrainedRun


@dataclass(frozen=True)
class SegmentMotions:
    """Motion of every segment in every decoded structure. N structures, K segments.

    Attributes:
        angle_deg: ``(N, K)`` rotation angle in [0, 180] degrees.
        axis: ``(N, K, 3)`` unit rotation axis (0 where the angle is 0).
        translation_A: ``(N, K, 3)`` Å translation of the rigid motion about the segment's centre.
        displacement_A: ``(N, K)`` Å distance moved by the segment's membership-weighted centre.
    """

    angle_deg: np.ndarray
    axis: np.ndarray
    translation_A: np.ndarray
    displacement_A: np.ndarray

    @property
    def n_structures(self) -> int:
        return int(self.angle_deg.shape[0])

    @property
    def n_segments(self) -> int:
        return int(self.angle_deg.shape[1])

    def subset(self, rows: np.ndarray) -> SegmentMotions:
        """The motions of structures ``rows`` ``(M,)`` (e.g. the particles of a traversal)."""
        return SegmentMotions(self.angle_deg[rows], self.axis[rows], self.translation_A[rows], self.displacement_A[rows])

    def table(self, particles: np.ndarray | None = None) -> pd.DataFrame:
        """One row per structure and segment, structure-major (``N * K`` rows).

        Columns: particle, segment, angle_deg, axis_x/y/z, translation_x/y/z_A, displacement_A.

        Args:
            particles: ``(N,)`` particle index of each structure (default ``0..N-1``).
        """
        n, k = self.angle_deg.shape
        particles = np.arange(n) if particles is None else np.asarray(particles, dtype=np.int64)
        columns = {"particle": np.repeat(particles, k), "segment": np.tile(np.arange(k), n), "angle_deg": self.angle_deg.reshape(-1)}
        for i, name in enumerate("xyz"):
            columns[f"axis_{name}"] = self.axis[..., i].reshape(-1)
        for i, name in enumerate("xyz"):
            columns[f"translation_{name}_A"] = self.translation_A[..., i].reshape(-1)
        columns["displacement_A"] = self.displacement_A.reshape(-1)
        return pd.DataFrame(columns)


def motion_arrays(memberships: Tensor, rotvecs: Tensor, translations: Tensor, base: Tensor, deformed: Tensor, *, about_segment: bool) -> dict[str, Tensor]:
    """Angle, axis, translation about the centre and centre displacement of each segment.

    Args:
        memberships: ``(B, R, K)`` memberships ``w_ik >= 0``.
        rotvecs: ``(B, K, 3)`` segment rotation vectors ``r_k``, radians.
        translations: ``(B, K, 3)`` Å decoder translations ``t_k``: about the segment centres
            (``about_segment``) or about the origin.
        base: ``(R, 3)`` Å base residue positions.
        deformed: ``(B, R, 3)`` Å the same residues after the deformation.
        about_segment: the model rotates segments about their centres (``rotate_about: segment``).

    Returns:
        ``angle_deg`` ``(B, K)``, ``axis`` ``(B, K, 3)``, ``translation_A`` ``(B, K, 3)``,
        ``displacement_A`` ``(B, K)``.
    """
    # Membership-weighted centres before and after (an empty segment's centre is 0).
    weight = memberships.sum(dim=1).clamp_min(1e-6).unsqueeze(-1)  # (B, K, 1)
    centres = torch.matmul(memberships.transpose(1, 2), base) / weight
    moved = torch.matmul(memberships.transpose(1, 2), deformed) / weight
    # About the centre: R (x - c) + c + t  ==  R x + t_origin  gives  t = t_origin + R c - c.
    if about_segment:
        about_centre = translations
    else:
        rotated = (roma.rotvec_to_rotmat(rotvecs) * centres.unsqueeze(-2)).sum(dim=-1)
        about_centre = translations + rotated - centres
    # A rotation vector longer than pi is the rotation by 2 pi - angle about the opposite axis.
    length = rotvecs.norm(dim=-1)
    axis = torch.where(length.unsqueeze(-1) > 0, rotvecs / length.clamp_min(1e-12).unsqueeze(-1), torch.zeros_like(rotvecs))
    angle = torch.remainder(length, 2 * torch.pi)
    flip = angle > torch.pi
    angle = torch.where(flip, 2 * torch.pi - angle, angle)
    axis = torch.where(flip.unsqueeze(-1), -axis, axis)
    return {
        "angle_deg": torch.rad2deg(angle),
        "axis": axis,
        "translation_A": about_centre,
        "displacement_A": (moved - centres).norm(dim=-1),
    }


def segment_motions(run: TrainedRun | CryoSphere, z: np.ndarray, *, batch_size: int = 256, progress: bool = False) -> SegmentMotions:
    """The motion of every segment at each latent, decoded with the segmentation means.

    Args:
        run: a trained run (or its model).
        z: ``(N, D)`` latents, e.g. the particles' latent means.
        batch_size: latents decoded at once.
        progress: show a progress bar.

    Returns:
        ``(N, K)`` arrays (see :class:`SegmentMotions`), float64.
    """
    model = run.model if isinstance(run, TrainedRun) else run
    device = model.base_coords.device
    parts: dict[str, list[np.ndarray]] = {"angle_deg": [], "axis": [], "translation_A": [], "displacement_A": []}
    with torch.no_grad():
        for start in progress_bar(range(0, len(z), batch_size), "segment motions", enabled=progress):
            batch = torch.as_tensor(np.asarray(z[start : start + batch_size]), dtype=torch.float32, device=device)
            deformation = model.decode(batch, sample_segmentation=False)
            arrays = motion_arrays(
                deformation.memberships,
                deformation.segment_rotvecs,
                deformation.segment_translations,
                model.base_coords,
                deformation.coords,
                about_segment=model.rotate_about == "segment",
            )
            for name, value in arrays.items():
                parts[name].append(value.cpu().numpy().astype(np.float64))
    k = model.segmentation.n_segments
    empty = {"angle_deg": (0, k), "axis": (0, k, 3), "translation_A": (0, k, 3), "displacement_A": (0, k)}
    return SegmentMotions(**{name: np.concatenate(values) if values else np.zeros(empty[name]) for name, values in parts.items()})


def residue_rmsf(run: TrainedRun | CryoSphere, z: np.ndarray, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Root-mean-square fluctuation of every residue (CA / C1') over the structures decoded at ``z``.

    ``RMSF_i = sqrt(mean_n |x_ni - mean_n x_ni|^2)``: the spread around the mean decoded structure,
    without superposition (the model frame is fixed by the particle poses). Streamed: memory is
    ``R x 3`` whatever ``N`` is.

    Args:
        run: a trained run (or its model).
        z: ``(N, D)`` latents, N >= 1.
        batch_size: latents decoded at once.
        progress: show a progress bar.

    Returns:
        ``(R,)`` float64 Å.
    """
    model = run.model if isinstance(run, TrainedRun) else run
    device = model.base_coords.device
    base = model.base_coords.double()
    # Sums of the offsets from the base model: small numbers, so E[d^2] - E[d]^2 loses nothing.
    total = torch.zeros_like(base)
    squares = torch.zeros(base.shape[0], dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in progress_bar(range(0, len(z), batch_size), "flexibility", enabled=progress):
            batch = torch.as_tensor(np.asarray(z[start : start + batch_size]), dtype=torch.float32, device=device)
            offsets = model.decode(batch, sample_segmentation=False).coords.double() - base
            total += offsets.sum(dim=0)
            squares += offsets.square().sum(dim=(0, 2))
    n = len(z)
    variance = squares / n - (total / n).square().sum(dim=-1)
    return variance.clamp_min(0.0).sqrt().cpu().numpy()


def correlations(values: np.ndarray, coordinates: np.ndarray, *, ranked: bool = False) -> np.ndarray:
    """Pearson (or with ``ranked`` Spearman) correlation of every column of ``values`` ``(N, K)``
    with every column of ``coordinates`` ``(N, C)``: ``(K, C)``, NaN where a column is constant."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(coordinates, dtype=np.float64)
    if ranked:
        # Spearman's rho is Pearson's r of the ranks (ties get their mean rank).
        a, b = rankdata(a, axis=0), rankdata(b, axis=0)
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    norms = np.outer(np.sqrt((a**2).sum(axis=0)), np.sqrt((b**2).sum(axis=0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 1e-12 * max(norms.max(initial=0.0), 1.0), (a.T @ b) / norms, np.nan)


def motion_pc_table(motions: SegmentMotions, projections: np.ndarray) -> pd.DataFrame:
    """How strongly each segment's motion follows each latent PC.

    Args:
        motions: of the N particles.
        projections: ``(N, C)`` their coordinates along the PCs.

    Returns:
        One row per segment, quantity (``angle_deg``, ``displacement_A``) and PC: columns segment,
        quantity, pc (1-based), pearson, spearman.
    """
    rows = []
    for quantity in ("angle_deg", "displacement_A"):
        values = getattr(motions, quantity)
        pearson, spearman = correlations(values, projections), correlations(values, projections, ranked=True)
        for (k, c), value in np.ndenumerate(pearson):
            rows.append({"segment": k, "quantity": quantity, "pc": c + 1, "pearson": round(value, 6), "spearman": round(spearman[k, c], 6)})
    return pd.DataFrame(rows, columns=["segment", "quantity", "pc", "pearson", "spearman"])


def traversal_table(motions: SegmentMotions, indices: np.ndarray, coordinate: np.ndarray) -> pd.DataFrame:
    """Each segment's angle and displacement along a PC traversal.

    Args:
        motions: of all particles.
        indices: ``(M,)`` particle of each traversal point.
        coordinate: ``(M,)`` those particles' coordinate along the PC.

    Returns:
        ``M * K`` rows: point (1-based, as the models of the traversal file), particle,
        pc_coordinate, segment, angle_deg, displacement_A.
    """
    along = motions.subset(np.asarray(indices))
    k = along.n_segments
    return pd.DataFrame(
        {
            "point": np.repeat(np.arange(1, len(indices) + 1), k),
            "particle": np.repeat(np.asarray(indices, dtype=np.int64), k),
            "pc_coordinate": np.repeat(np.asarray(coordinate, dtype=np.float64), k),
            "segment": np.tile(np.arange(k), len(indices)),
            "angle_deg": along.angle_deg.reshape(-1),
            "displacement_A": along.displacement_A.reshape(-1),
        }
    )


def write_motion_files(out: Path, motions: SegmentMotions, projections: np.ndarray, traversals: list[np.ndarray]) -> list[Path]:
    """The motion outputs of ``analyze``: motions.csv/png, motions_vs_pc.csv/png, pcK/motions.csv.

    Args:
        out: the analysis folder.
        motions: of all N particles (particle order).
        projections: ``(N, C)`` PC coordinates of the particles.
        traversals: per traversed PC, ``(M,)`` the particles of its traversal.

    Returns:
        The written paths (the pictures last).
    """
    written = [out / "motions.csv", out / "motions_vs_pc.csv"]
    save_csv(written[0], motions.table())
    n_pcs = max(len(traversals), 1)
    table = motion_pc_table(motions, projections[:, :n_pcs])
    save_csv(written[1], table)
    for pc, indices in enumerate(traversals):
        path = out / f"pc{pc + 1}" / "motions.csv"
        save_csv(path, traversal_table(motions, indices, projections[indices, pc]))
        written.append(path)
    plots.segment_motions(out / "motions.png", motions.angle_deg, motions.displacement_A)

    def grid(quantity: str) -> np.ndarray:
        rows = table[table["quantity"] == quantity]
        return rows.pivot(index="segment", columns="pc", values="spearman").to_numpy()

    plots.motion_pc_correlation(out / "motions_vs_pc.png", grid("angle_deg"), grid("displacement_A"))
    return written + [out / "motions.png", out / "motions_vs_pc.png"]


def write_flexibility(path: Path, structure: AtomicModel, rmsf_A: np.ndarray) -> Path:
    """The base model with each residue's RMSF (Å) in the B-factor column of all its atoms, and the
    same numbers as ``flexibility.csv`` beside it (chain, residue_number, insertion_code,
    residue_name, rmsf_A). Returns the table's path."""
    write_structure(path, structure, structure.atom_coords, full_atom=True, bfactors=np.asarray(rmsf_A, dtype=np.float64))
    table = pd.DataFrame(
        {
            "chain": structure.chain_ids,
            "residue_number": structure.residue_numbers,
            "insertion_code": structure.insertion_codes,
            "residue_name": structure.residue_names,
            "rmsf_A": np.round(np.asarray(rmsf_A, dtype=np.float64), 4),
        }
    )
    csv = path.with_suffix(".csv")
    save_csv(csv, table)
    return csv
