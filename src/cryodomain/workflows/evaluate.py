"""Accuracy of a trained run on simulated data, with the references that make it readable.

Per image: the CA RMSD (no superposition: the poses are given) of the decoded structure to its
truth, beside three references (:mod:`cryodomain.workflows.references`): the unmoved base model
(baseline), the best single structure (the image-weighted mean of the true conformations), and
the piecewise-rigid limit (the best contiguous segmentation of the base into the run's K
segments, each moved exactly onto every true conformation). On a subsample of images: Fourier
shell correlation between maps rendered from the decoded and the true structures (CryoBench's
per-image FSC), with the same references.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.physics.render import render_volume
from cryodomain.workflows.distributed import resolve_device
from cryodomain.workflows.references import (
    RigidLimit,
    best_single_structure,
    fourier_shell_correlation,
    fsc_auc,
    fsc_resolution,
    move_segments,
    piecewise_rigid_limit,
)
from cryodomain.workflows.reweighting import ANCHORS
from cryodomain.workflows.structures import DEFAULT_ESTIMATE, write_particle_structures
from cryodomain.workflows.trained_run import TrainedRun

# More conformations than this are shown in contiguous bins in the printed table.
MAX_TABLE_ROWS = 10
# The references scored per image, in column order (besides the run itself).
REFERENCES = ("baseline", "best_single", "rigid_limit")


def _decode_run(run: str | Path, out: Path, checkpoint: str | None, device: str, estimate: str, n_anchors: int) -> tuple[TrainedRun, np.ndarray]:
    """Load a run and decode every particle's structure as ``cryodomain structures --estimate``
    does: ``(run, coords (M, R, 3) Å)``, also in ``out/coords.npy``."""
    trained = TrainedRun.load(run, checkpoint, resolve_device(device))
    return trained, write_particle_structures(out / "coords.npy", trained, estimate, n_anchors=n_anchors)


def per_image_rmsd(predicted: np.ndarray, truth_coords: np.ndarray, conformation: np.ndarray) -> np.ndarray:
    """RMSD without superposition (poses are given) between each predicted structure and its truth.

    Args:
        predicted: ``(M, R, 3)`` Å (or ``(R, 3)``: one structure for every image, e.g. the base model).
        truth_coords: ``(C, R, 3)`` Å, one per conformation.
        conformation: ``(M,)`` conformation index of each image.

    Returns:
        ``(M,)`` Å.
    """
    truth = truth_coords[conformation]
    difference = np.asarray(predicted, dtype=np.float64) - truth
    return np.sqrt((difference**2).sum(-1).mean(-1))


def load_truth(path: str | Path, n_images: int, n_residues: int) -> tuple[np.ndarray, np.ndarray]:
    """``(coords (C, R, 3), conformation (M,))`` from a simulate ``truth.npz``, checked against the run."""
    path = Path(path)
    try:
        truth = np.load(path)
        coords, conformation = truth["coords"], truth["conformation"]
    except (OSError, ValueError, KeyError) as error:
        raise input_error(path, "coords/conformation", f"not a readable truth file ({error})", "pass the truth.npz written by cryodomain simulate") from None
    if len(conformation) != n_images:
        raise input_error(path, "conformation", f"{len(conformation)} images but the run has {n_images}", "pass the truth of the simulation the run trained on")
    if coords.shape[1] != n_residues:
        raise input_error(
            path, "coords", f"{coords.shape[1]} residues but the run's model has {n_residues}", "use the same residues in simulation and training"
        )
    if conformation.size and (conformation.min() < 0 or conformation.max() >= len(coords)):
        raise input_error(path, "conformation", f"indices outside [0, {len(coords)})", "pass the truth.npz written by cryodomain simulate")
    return coords, conformation


def summary(values: np.ndarray) -> dict[str, float | None]:
    """Median, mean and 90th percentile (None for no values)."""
    if len(values) == 0:
        return {"median": None, "mean": None, "p90": None}
    return {"median": float(np.median(values)), "mean": float(np.mean(values)), "p90": float(np.percentile(values, 90))}


def conformation_bins(n_conformations: int, max_bins: int = MAX_TABLE_ROWS) -> list[tuple[int, int]]:
    """Contiguous bins ``(first, last)`` (inclusive) of conformation indices, at most ``max_bins``.

    One bin per conformation when there are no more than ``max_bins``.
    """
    groups = np.array_split(np.arange(n_conformations), min(n_conformations, max_bins))
    return [(int(group[0]), int(group[-1])) for group in groups if len(group)]


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def binned_table(rmsd: dict[str, np.ndarray], conformation: np.ndarray, n_conformations: int) -> list[dict]:
    """Median per-image RMSD of the run and each reference per bin of conformations.

    Args:
        rmsd: ``{"run": (M,), "baseline": (M,), ...}`` Å.
        conformation: ``(M,)``.
        n_conformations: C.

    Returns:
        One row per bin: ``{"conformations": [first, last], "n_images", "<name>_median_A", ...}``.
    """
    rows = []
    for first, last in conformation_bins(n_conformations):
        inside = (conformation >= first) & (conformation <= last)
        row = {"conformations": [first, last], "n_images": int(inside.sum())}
        row.update({f"{name}_median_A": _median(values[inside]) for name, values in rmsd.items()})
        rows.append(row)
    return rows


def _residue_rendering(model, data, sigma_A: float | torch.Tensor) -> tuple[np.ndarray, float | torch.Tensor]:
    """Amplitudes ``(R,)`` and width for maps of residue coordinates: the training model's own,
    unless it has Gaussians apart from its residues (``gaussian_at: split``); then each residue's
    electrons and the mean width."""
    if not model.has_gaussian_residue:
        return model.amplitudes.cpu().numpy(), sigma_A
    return data.structure.amplitudes, float(torch.as_tensor(sigma_A).float().mean())


def map_agreement(
    predicted: np.ndarray,
    truth_coords: np.ndarray,
    conformation: np.ndarray,
    references: dict[str, np.ndarray],
    amplitudes: np.ndarray,
    sigma_A: float | torch.Tensor,
    box: int,
    pixel_size_A: float,
    *,
    n_images: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Per-image FSC between maps of the decoded and the true structures, on a seeded subsample.

    Every map is rendered from residue coordinates with the model's amplitudes and the run's
    Gaussian width, box and pixel size (:func:`render_volume`). The references are scored the same
    way against the same true maps.

    Args:
        predicted: ``(M, R, 3)`` decoded structures, Å.
        truth_coords: ``(C, R, 3)`` Å.
        conformation: ``(M,)``.
        references: name -> ``(C, R, 3)`` structure of that reference for each conformation, Å.
        amplitudes: ``(R,)``.
        sigma_A, box, pixel_size_A: rendering.
        n_images: subsample size (all images if fewer).
        seed: of the subsample.
        device: where the maps are rendered.

    Returns:
        ``{"images" (S,), "frequencies" (F,) 1/Å, "fsc": name -> (S, F)}`` with name ``"run"``
        and each reference.
    """
    sample = np.sort(np.random.default_rng(seed).choice(len(conformation), size=min(n_images, len(conformation)), replace=False))
    weights = torch.as_tensor(np.asarray(amplitudes), dtype=torch.float32, device=device)

    def render(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            points = torch.from_numpy(np.array(points, dtype=np.float32)).to(device)
            return render_volume(points, weights, sigma_A, box, pixel_size_A).cpu().numpy()

    curves: dict[str, np.ndarray] = {}
    frequencies = np.arange(box // 2 + 1) / (box * pixel_size_A)
    for c in np.unique(conformation[sample]):
        rows = np.flatnonzero(conformation[sample] == c)
        truth_map = render(truth_coords[c])
        for name, structures in {"run": None, **references}.items():
            if name not in curves:
                curves[name] = np.zeros((len(sample), len(frequencies)))
            if structures is None:  # one map per image
                for row in rows:
                    frequencies, curves[name][row] = fourier_shell_correlation(render(predicted[sample[row]]), truth_map, pixel_size_A)
            else:  # one map per conformation
                frequencies, curve = fourier_shell_correlation(render(structures[c]), truth_map, pixel_size_A)
                curves[name][rows] = curve
    return {"images": sample, "frequencies": frequencies, "fsc": curves}


def _map_summary(agreement: dict, pixel_size_A: float) -> dict:
    """AUC and resolution at FSC 0.5 per image (summarised) and of the mean curve, per name."""
    frequencies = agreement["frequencies"]
    result: dict = {"n_images": int(len(agreement["images"])), "nyquist_A": 2.0 * pixel_size_A}
    for name, curves in agreement["fsc"].items():
        mean_curve = curves.mean(0)
        result[name] = {
            "auc": summary(fsc_auc(frequencies, curves, pixel_size_A)),
            "resolution_A_at_fsc_0.5": summary(fsc_resolution(frequencies, curves)),
            "mean_curve_auc": float(fsc_auc(frequencies, mean_curve, pixel_size_A)),
            "mean_curve_resolution_A": float(fsc_resolution(frequencies, mean_curve)),
        }
    return result


def _write_csv(path: Path, columns: dict[str, np.ndarray], formats: list[str]) -> None:
    with atomic_output(path) as tmp:
        np.savetxt(tmp, np.column_stack(list(columns.values())), delimiter=",", fmt=formats, header=",".join(columns), comments="")


def write_report(
    out_dir: Path,
    rmsd: dict[str, np.ndarray],
    conformation: np.ndarray,
    n_conformations: int,
    limit: RigidLimit,
    agreement: dict | None,
    pixel_size_A: float,
    estimate: str = DEFAULT_ESTIMATE,
    anchors: int | None = ANCHORS,
) -> dict:
    """``rmsd.csv``, ``summary.json`` and, with map agreement, ``fsc.csv`` and ``map_agreement.csv``.

    Args:
        out_dir: output directory.
        rmsd: ``{"run", "baseline", "best_single", "rigid_limit"}`` -> ``(M,)`` per-image RMSD, Å.
        conformation: ``(M,)``.
        n_conformations: C.
        limit: the piecewise-rigid limit.
        agreement: from :func:`map_agreement`, or None.
        pixel_size_A: of the maps.
        estimate, anchors: how the run's per-particle structures were estimated (recorded;
            ``anchors`` None but for ``"reweighted"``).

    Returns:
        The summary written to ``summary.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = {"image": np.arange(len(conformation)), "conformation": conformation, "rmsd_A": rmsd["run"]}
    columns.update({f"{name}_rmsd_A": rmsd[name] for name in REFERENCES})
    _write_csv(out_dir / "rmsd.csv", columns, ["%d", "%d"] + ["%.4f"] * (len(columns) - 2))
    result: dict = {
        "n_images": int(len(conformation)),
        "n_conformations": int(n_conformations),
        "estimate": estimate,
        **({"anchors": anchors} if anchors is not None else {}),
        "rmsd_A": summary(rmsd["run"]),
        "references": {
            "baseline": {"description": "the unmoved base model", "rmsd_A": summary(rmsd["baseline"])},
            "best_single": {"description": "image-weighted mean of the true conformations", "rmsd_A": summary(rmsd["best_single"])},
            "rigid_limit": {
                "description": "best shared contiguous segmentation of the base, exact rigid fit per conformation and segment",
                "n_segments": limit.n_segments,
                "boundaries": [int(b) for b in limit.boundaries],
                "candidate_step": limit.candidate_step,
                "exact": limit.exact,
                "rmsd_A": summary(rmsd["rigid_limit"]),
            },
        },
        "by_conformation_bin": binned_table(rmsd, conformation, n_conformations),
        "by_conformation": {
            str(c): {"n_images": int((conformation == c).sum())}
            | {("rmsd_A" if name == "run" else f"{name}_rmsd_A"): summary(values[conformation == c]) for name, values in rmsd.items()}
            for c in np.unique(conformation)
        },
    }
    if not limit.exact:
        result["references"]["rigid_limit"]["note"] = f"boundaries searched every {limit.candidate_step} residues: an upper bound of the limit"
    if agreement is not None:
        result["map_agreement"] = _map_summary(agreement, pixel_size_A)
        frequencies = agreement["frequencies"]
        resolution = np.divide(1.0, frequencies, out=np.full_like(frequencies, np.inf), where=frequencies > 0)
        curves = {f"fsc_{name}": c.mean(0) for name, c in agreement["fsc"].items()}
        _write_csv(out_dir / "fsc.csv", {"frequency_per_A": frequencies, "resolution_A": resolution, **curves}, ["%.6f", "%.3f"] + ["%.5f"] * len(curves))
        images = agreement["images"]
        per_image: dict[str, np.ndarray] = {"image": images, "conformation": conformation[images]}
        for name, c in agreement["fsc"].items():
            per_image[f"auc_{name}"] = fsc_auc(frequencies, c, pixel_size_A)
            per_image[f"resolution_A_{name}"] = fsc_resolution(frequencies, c)
        _write_csv(out_dir / "map_agreement.csv", per_image, ["%d", "%d"] + ["%.4f"] * (len(per_image) - 2))
    with atomic_output(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate_run(
    run: str | Path,
    truth: str | Path,
    out: Path,
    checkpoint: str | None = None,
    device: str = "auto",
    *,
    map_images: int = 100,
    seed: int = 0,
    estimate: str = DEFAULT_ESTIMATE,
    n_anchors: int = ANCHORS,
) -> dict:
    """Decode every particle of a run (by ``estimate`` with ``n_anchors``, see :data:`~cryodomain.workflows.structures.ESTIMATES`),
    score it and the references against the simulation truth.

    Writes the report in ``out`` (see :func:`write_report`); ``map_images=0`` skips the maps.
    Returns the summary.
    """
    out = Path(out)
    trained, predicted = _decode_run(run, out, checkpoint, device, estimate, n_anchors)
    model, data = trained.model, trained.data
    truth_coords, conformation = load_truth(truth, len(data.table), data.structure.n_residues)
    truth_coords = np.asarray(truth_coords, dtype=np.float64)
    base = np.asarray(data.structure.coords, dtype=np.float64)
    n_conformations = len(truth_coords)
    single = best_single_structure(truth_coords, conformation)
    limit = piecewise_rigid_limit(base, truth_coords, np.bincount(conformation, minlength=n_conformations), int(model.segmentation.n_segments))
    rmsd = {
        "run": per_image_rmsd(predicted, truth_coords, conformation),
        "baseline": per_image_rmsd(base, truth_coords, conformation),
        "best_single": per_image_rmsd(single, truth_coords, conformation),
        "rigid_limit": limit.rmsd_A[conformation],
    }
    agreement = None
    if map_images > 0:
        references = {
            "baseline": np.broadcast_to(base, truth_coords.shape),
            "best_single": np.broadcast_to(single, truth_coords.shape),
            "rigid_limit": move_segments(base, limit.boundaries, limit.rotations, limit.translations),
        }
        agreement = map_agreement(
            predicted,
            truth_coords,
            conformation,
            references,
            *_residue_rendering(model, data, trained.context.sigma_A),
            data.box,
            data.pixel_size_A,
            n_images=map_images,
            seed=seed,
            device=model.base_coords.device,
        )
    anchors = n_anchors if estimate == "reweighted" else None
    return write_report(out, rmsd, conformation, n_conformations, limit, agreement, data.pixel_size_A, estimate, anchors)
