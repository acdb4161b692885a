"""Accuracy of a trained run on simulated data: per-image CA RMSD to the true structures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.workflows.structures import write_coordinates
from cryodomain.workflows.train import latent_means, load_run, resolve_device


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
        raise input_error(path, "coords", f"{coords.shape[1]} residues but the run's model has {n_residues}", "use the same residues in simulation and training")
    return coords, conformation


def summary(values: np.ndarray) -> dict[str, float]:
    return {
        "median": float(np.median(values)),
        "mean": float(np.mean(values)),
        "p90": float(np.percentile(values, 90)),
    }


def write_report(out_dir: Path, rmsd: np.ndarray, baseline: np.ndarray, conformation: np.ndarray) -> dict:
    """``rmsd.csv`` (one row per image) and ``summary.json``; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "rmsd.csv") as tmp:
        rows = np.column_stack([np.arange(len(rmsd)), conformation, rmsd, baseline])
        np.savetxt(tmp, rows, delimiter=",", fmt=["%d", "%d", "%.4f", "%.4f"], header="image,conformation,rmsd_A,baseline_rmsd_A", comments="")
    result = {
        "n_images": int(len(rmsd)),
        "rmsd_A": summary(rmsd),
        "baseline_rmsd_A": summary(baseline),
        "by_conformation": {
            str(c): {"n_images": int((conformation == c).sum()), "rmsd_A": summary(rmsd[conformation == c]), "baseline_rmsd_A": summary(baseline[conformation == c])}
            for c in np.unique(conformation)
        },
    }
    with atomic_output(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate_run(run: str | Path, truth: str | Path, out: Path, checkpoint: str | None = None, device: str = "auto") -> dict:
    """Decode every particle of a run, score it against the simulation truth, write the report in ``out``."""
    model, state, data = load_run(run, checkpoint, resolve_device(device))
    truth_coords, conformation = load_truth(truth, len(data.table), data.structure.n_residues)
    z = latent_means(model, data, state)
    predicted = write_coordinates(out / "coords.npy", model, z)
    rmsd = per_image_rmsd(predicted, truth_coords, conformation)
    baseline = per_image_rmsd(data.structure.coords, truth_coords, conformation)
    return write_report(out, rmsd, baseline, conformation)
