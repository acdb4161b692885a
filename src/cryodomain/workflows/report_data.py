"""What the HTML report shows, read from a run folder and its analysis folder (files only).

Nothing here needs the model: the report of a run analysed elsewhere can be rebuilt from the two
folders. The run folder gives config.yaml, train.log (the preflight), metrics.csv and the inputs
named in last.pt; the analysis folder gives what ``cryodomain analyze`` wrote (layout in the README);
an evaluation folder gives ``cryodomain evaluate``'s summary.json.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cryodomain.errors import input_error
from cryodomain.io.structure import read_all_models
from cryodomain.workflows.run_folder import RUN_FILES, MetricsLog, load_checkpoint

# "2026-01-02 03:04:05  message": train.log's entries; indented lines continue the entry above.
_LOG_ENTRY = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}  (.*)$")
# The line each epoch logs, e.g. "epoch 3/40  61/61 steps  412.0 images/s  loss ...".
_EPOCH_LINE = re.compile(r"^epoch \d+/\d+\s+\d+/\d+ steps\s+([0-9.]+) images/s")
_ANALYZE_FIX = "run `cryodomain analyze RUN -o DIR` first, or pass --analysis DIR"


@dataclass(frozen=True)
class RunSummary:
    """The run as the report's first section shows it.

    Attributes:
        name: the run folder's name.
        facts: ``(label, value)`` rows: inputs, particles, box, pixel size, model, training, device.
        config_text: config.yaml as written.
        preflight: train.log's entries before the first epoch (the preflight and its warnings).
        conventions: the convention self-test: ``(reading, median correlation, note)`` rows.
    """

    name: str
    facts: list[tuple[str, str]]
    config_text: str
    preflight: list[str]
    conventions: list[tuple[str, str, str]]


@dataclass(frozen=True)
class Trajectory:
    """One PC traversal as drawn by the 3-D viewer. M frames, R residues.

    Attributes:
        pc: 1-based principal component.
        coords: ``(M, R, 3)`` float32 Å trace atoms (CA; P of nucleotides, else C1').
        particles: ``(M,)`` the real particle decoded at each frame.
        coordinate: ``(M,)`` its coordinate along the PC.
    """

    pc: int
    coords: np.ndarray
    particles: np.ndarray
    coordinate: np.ndarray


@dataclass(frozen=True)
class ReportData:
    """Everything the report draws. N particles, K segments, R residues, C computed PCs.

    Attributes:
        run: the run section.
        metrics: metrics.csv (one row per epoch), or None when it is missing.
        projections: ``(N, C)`` latent PCA coordinates.
        explained_variance_ratio: ``(C,)``.
        umap: ``(N, 2)`` UMAP embedding, or None when analyze did not compute it.
        labels: ``(N,)`` k-means cluster of each particle.
        centres: ``(L,)`` particle nearest each k-means centre.
        segments: segments.csv (one row per residue: chain, residue_number, ..., segment, probability).
        rmsf_A: ``(R,)`` flexibility per residue (flexibility.csv), or None.
        angle_deg: ``(N, K)`` segment rotation angles.
        displacement_A: ``(N, K)`` segment centre displacements, Å.
        motion_vs_pc: motions_vs_pc.csv.
        trajectories: one per traversed PC.
        images_png: images.png (observed vs model images), or None.
        evaluation: summary.json of ``cryodomain evaluate``, or None.
        evaluation_path: where it was read.
    """

    run: RunSummary
    metrics: pd.DataFrame | None
    projections: np.ndarray
    explained_variance_ratio: np.ndarray
    umap: np.ndarray | None
    labels: np.ndarray
    centres: np.ndarray
    segments: pd.DataFrame
    rmsf_A: np.ndarray | None
    angle_deg: np.ndarray
    displacement_A: np.ndarray
    motion_vs_pc: pd.DataFrame
    trajectories: list[Trajectory]
    images_png: bytes | None
    evaluation: dict | None
    evaluation_path: Path | None

    @property
    def n_particles(self) -> int:
        return int(self.projections.shape[0])

    @property
    def n_segments(self) -> int:
        return int(self.angle_deg.shape[1])

    def images_base64(self) -> str | None:
        return base64.b64encode(self.images_png).decode("ascii") if self.images_png is not None else None


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------


def log_entries(path: Path) -> list[str]:
    """train.log as a list of messages (timestamps dropped, continuation lines kept); [] when missing."""
    if not path.exists():
        return []
    entries: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _LOG_ENTRY.match(line)
        if match:
            entries.append(match.group(1))
        elif entries:
            entries[-1] += "\n" + line
    return entries


def preflight_entries(entries: list[str]) -> list[str]:
    """The entries before the first epoch line: reading the inputs, the preflight, its warnings."""
    for index, entry in enumerate(entries):
        if _EPOCH_LINE.match(entry) or entry.startswith(("resuming after", "no checkpoint in")):
            return entries[:index]
    return list(entries)


def convention_rows(entries: list[str]) -> list[tuple[str, str, str]]:
    """The convention self-test's rows ``(reading, median correlation, note)`` from its log entry."""
    for entry in entries:
        if entry.startswith("preflight: conventions"):
            rows = []
            for line in entry.splitlines()[1:]:
                # "  transposed rotations   +0.443, better on 0% of the images"
                match = re.match(r"^\s+(.+?)\s{2,}([+-]?\d+\.\d+)(?:,\s*(.*))?$", line)
                if match:
                    rows.append((match.group(1), match.group(2), match.group(3) or ""))
            return rows
    return []


def _device(entries: list[str], config: dict) -> str:
    """The device train.log names, else the configured one."""
    named = [entry.split(":", 1)[1].strip() for entry in entries if entry.startswith("device:")]
    return named[-1] if named else f"{config.get('optim', {}).get('device', 'auto')} (as configured; train.log names none)"


def _duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.2 h``."""
    if not np.isfinite(seconds) or seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _model_text(model: dict) -> str:
    parts = f"{model.get('n_segments')} segments" if model.get("parts") is None else f"segments in parts {model.get('parts')}"
    return (
        f"{parts}, latent dimension {model.get('latent_dim')}, encoder {model.get('encoder_hidden')} ({model.get('encoder_input')} input), "
        f"decoder {model.get('decoder_hidden')}, Gaussian sigma {model.get('sigma_A')} Å, rotations about the {model.get('rotate_about')}"
    )


def read_run(run_dir: Path, metrics: pd.DataFrame | None) -> RunSummary:
    """The run section: the inputs (from last.pt), the configuration, the preflight and training time.

    Raises:
        InputError: ``run_dir`` is not a training run folder.
    """
    if not run_dir.is_dir() or not any((run_dir / name).exists() for name in RUN_FILES):
        raise input_error(run_dir, None, "is not a training run folder (no last.pt, config.yaml or metrics.csv)", "give the -o folder of `cryodomain train`")
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.exists() else ""
    config = (yaml.safe_load(config_text) or {}) if config_text else {}
    entries = log_entries(run_dir / "train.log")
    state = load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").exists() else {}
    config = state.get("config", config)
    facts: list[tuple[str, str]] = []
    for label, key in (("particles file", "particles"), ("structure", "structure"), ("image folder", "datadir")):
        if state.get(key):
            facts.append((label, str(state[key])))
    if "n_particles" in state:
        facts.append(("particles", f"{state['n_particles']:,}"))
    if "box" in state:
        box, apix = int(state["box"]), float(state["pixel_size_A"])
        resampled = f" (Fourier-cropped to {state['downsample_box']} px)" if state.get("downsample_box") else ""
        facts += [("box", f"{box} px{resampled}, {box * apix:.0f} Å"), ("pixel size", f"{apix:.4g} Å")]
    if "n_residues" in state:
        facts.append(("residues", f"{state['n_residues']:,}"))
    if config.get("model"):
        facts.append(("model", _model_text(config["model"])))
    if metrics is not None and len(metrics):
        planned = config.get("optim", {}).get("epochs")
        seconds = float(metrics["seconds"].sum()) if "seconds" in metrics else float("nan")
        facts.append(("epochs", f"{int(metrics['epoch'].iloc[-1])} of {planned}" if planned else f"{int(metrics['epoch'].iloc[-1])}"))
        facts.append(("training time", f"{_duration(seconds)} ({seconds / len(metrics):.1f} s per epoch)"))
    rates = [float(match.group(1)) for entry in entries if (match := _EPOCH_LINE.match(entry))]
    if rates:
        facts.append(("throughput", f"{np.median(rates):.0f} images/s (median over epochs)"))
    facts.append(("device", _device(entries, config)))
    preflight = preflight_entries(entries)
    return RunSummary(run_dir.resolve().name, facts, config_text, preflight, convention_rows(preflight))


def read_metrics(run_dir: Path) -> pd.DataFrame | None:
    """metrics.csv as numbers, or None when missing or empty."""
    rows = MetricsLog(run_dir / "metrics.csv").read()
    return pd.DataFrame(rows).astype(float) if rows else None


# ---------------------------------------------------------------------------------------------
# The analysis folder
# ---------------------------------------------------------------------------------------------


def _required(path: Path) -> Path:
    if not path.exists():
        raise input_error(path, None, "not found: the report needs the analysis of the run", _ANALYZE_FIX)
    return path


def _rows_match(path: Path, rows: int, n_particles: int) -> None:
    if rows != n_particles:
        raise input_error(
            path,
            None,
            f"holds {rows} particles but z.npy holds {n_particles}",
            "the folder mixes two analyses: run `cryodomain analyze` again into an empty folder",
        )


def motion_arrays(path: Path, n_particles: int) -> tuple[np.ndarray, np.ndarray]:
    """motions.csv as ``(N, K)`` rotation angles (degrees) and displacements (Å), particle order."""
    table = pd.read_csv(_required(path), usecols=["particle", "segment", "angle_deg", "displacement_A"])
    n_segments = int(table["segment"].max()) + 1 if len(table) else 0
    particles = table["particle"].to_numpy()
    _rows_match(path, int(particles.max()) + 1 if len(table) else 0, n_particles)
    angle = np.full((n_particles, n_segments), np.nan)
    displacement = np.full((n_particles, n_segments), np.nan)
    angle[particles, table["segment"]] = table["angle_deg"]
    displacement[particles, table["segment"]] = table["displacement_A"]
    return angle, displacement


def trace_coordinates(path: Path, segments: pd.DataFrame) -> np.ndarray:
    """``(M, R, 3)`` float32 Å: each model's trace atom per residue of ``segments``, in its order.

    The CA of amino acids; the P of nucleotides where the file holds it (full-atom), else C1'.
    """
    models = read_all_models(_required(path))
    keys = list(zip(segments["chain"].astype(str), segments["residue_number"].astype(int), segments["insertion_code"].fillna("").astype(str)))
    first = models[0]
    position = {key: index for index, key in enumerate(zip(first.chain_ids.tolist(), first.residue_numbers.tolist(), first.insertion_codes.tolist()))}
    missing = [key for key in keys if key not in position]
    if missing:
        chain, number, icode = missing[0]
        raise input_error(path, f"chain {chain} residue {number}{icode}", "is in segments.csv but not in the trajectory", _ANALYZE_FIX)
    order = np.array([position[key] for key in keys])
    frames = []
    for model in models:
        coords = model.coords.copy()
        # Nucleotides only: a phosphorylated amino acid (SEP, TPO) has a P too.
        phosphates = np.flatnonzero((model.atom_names == "P") & model.is_nucleotide[model.atom_residue_index])
        coords[model.atom_residue_index[phosphates]] = model.atom_coords[phosphates]
        frames.append(coords[order])
    return np.stack(frames).astype(np.float32)


def read_trajectories(out: Path, segments: pd.DataFrame, projections: np.ndarray) -> list[Trajectory]:
    """Every ``pcK/trajectory.pdb`` (or ``.cif``) with the particles it was decoded at."""
    trajectories = []
    for pc in range(1, projections.shape[1] + 1):
        directory = out / f"pc{pc}"
        files = [directory / f"trajectory{suffix}" for suffix in (".pdb", ".cif")]
        path = next((file for file in files if file.exists()), None)
        if path is None:
            break
        particles = np.loadtxt(_required(directory / "indices.txt"), dtype=np.int64, ndmin=1)
        coords = trace_coordinates(path, segments)
        if len(coords) != len(particles):
            raise input_error(path, None, f"holds {len(coords)} models but indices.txt names {len(particles)} particles", _ANALYZE_FIX)
        trajectories.append(Trajectory(pc, coords, particles, projections[particles, pc - 1]))
    return trajectories


def read_evaluation(path: Path | None) -> dict | None:
    """summary.json of ``cryodomain evaluate`` in folder ``path`` (None: no evaluation).

    Raises:
        InputError: the folder has no readable summary.json.
    """
    if path is None:
        return None
    file = path / "summary.json" if path.is_dir() or not path.suffix else path
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise input_error(file, "--evaluation", "not found", "give the -o folder of `cryodomain evaluate`") from None
    except json.JSONDecodeError as error:
        raise input_error(file, None, f"is not JSON ({error.msg}, line {error.lineno})", "run `cryodomain evaluate` again") from None
    if not isinstance(summary, dict) or "rmsd_A" not in summary or "references" not in summary:
        raise input_error(file, "rmsd_A", "missing: not a summary of `cryodomain evaluate`", "give the -o folder of `cryodomain evaluate`")
    return summary


def read_report_data(run_dir: str | Path, analysis_dir: str | Path, evaluation_dir: str | Path | None = None) -> ReportData:
    """Read what the report shows.

    Args:
        run_dir: the training run folder.
        analysis_dir: the folder ``cryodomain analyze`` wrote.
        evaluation_dir: the folder ``cryodomain evaluate`` wrote (or its summary.json), or None.

    Raises:
        InputError: a file the report needs is missing, or the analysis files disagree.
    """
    run_dir, out = Path(run_dir), Path(analysis_dir)
    metrics = read_metrics(run_dir)
    run = read_run(run_dir, metrics)
    if not out.is_dir():
        raise input_error(out, "--analysis", "is not a folder", _ANALYZE_FIX)
    projections = np.load(_required(out / "pca_projections.npy"))
    if projections.ndim == 1:
        projections = projections[:, None]
    n = len(projections)
    variance = pd.read_csv(_required(out / "pca_explained_variance.csv"))
    labels = np.load(_required(out / "kmeans" / "labels.npy"))
    _rows_match(out / "kmeans" / "labels.npy", len(labels), n)
    umap = np.load(out / "umap.npy") if (out / "umap.npy").exists() else None
    if umap is not None:
        _rows_match(out / "umap.npy", len(umap), n)
    segments = pd.read_csv(_required(out / "segments.csv"), keep_default_na=False, dtype={"chain": str, "insertion_code": str})
    flexibility = out / "flexibility.csv"
    rmsf = pd.read_csv(flexibility)["rmsf_A"].to_numpy() if flexibility.exists() else None
    if rmsf is not None and len(rmsf) != len(segments):
        raise input_error(flexibility, None, f"holds {len(rmsf)} residues but segments.csv holds {len(segments)}", _ANALYZE_FIX)
    angle, displacement = motion_arrays(out / "motions.csv", n)
    centres_file = out / "kmeans" / "centers_indices.txt"
    return ReportData(
        run=run,
        metrics=metrics,
        projections=projections,
        explained_variance_ratio=variance["explained_variance_ratio"].to_numpy(),
        umap=umap,
        labels=labels.astype(np.int64),
        centres=np.loadtxt(centres_file, dtype=np.int64, ndmin=1) if centres_file.exists() else np.zeros(0, dtype=np.int64),
        segments=segments,
        rmsf_A=rmsf,
        angle_deg=angle,
        displacement_A=displacement,
        motion_vs_pc=pd.read_csv(_required(out / "motions_vs_pc.csv")),
        trajectories=read_trajectories(out, segments, projections),
        images_png=(out / "images.png").read_bytes() if (out / "images.png").exists() else None,
        evaluation=read_evaluation(Path(evaluation_dir) if evaluation_dir is not None else None),
        evaluation_path=Path(evaluation_dir) if evaluation_dir is not None else None,
    )
