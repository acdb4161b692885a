"""ChimeraX command scripts (``.cxc``) and the segment attribute file of an analysis.

Written into ``OUT/chimerax/``:

* ``segments.defattr``: the learned segment of every residue as a residue attribute ``segment``
  (-1 outside every part), in ChimeraX's attribute assignment format: control lines
  ``attribute: segment``, ``match mode: 1-to-1``, ``recipient: residues``, then one data line
  ``<tab>/A:12<tab>0`` per residue;
* ``pcK.cxc``: the PC K traversal as a model series with a slider, coloured by segment, and its
  maps as a volume series with a slider when they were rendered;
* ``movie_pcK.cxc``: the same traversal played once while recording ``pcK.mp4`` beside the script;
* ``kmeans.cxc``: the k-means centres (and their maps) the same way;
* ``flexibility.cxc``: the base model coloured by per-residue RMSF.

ChimeraX changes to a command script's folder while it runs it (``open_command_script``), so
every path in a script is relative to the script. Each script starts with ``close session``.
One-to-one matching needs one structure per assignment, so the attribute file is opened once per
model of a series (``open segments.defattr models #1.3``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryodomain import plots
from cryodomain.io.atomic import atomic_output
from cryodomain.io.structure import AtomicModel
from cryodomain.workflows.structure_quality import residue_specs

ATTRIBUTE = "segment"
DEFATTR_NAME = "segments.defattr"
OUTSIDE_COLOUR = "#bfbfbf"  # residues outside every segmented part
# Image frames per model when a series is played or recorded; the movie's frame rate.
PAUSE_FRAMES = 10
MOVIE_FRAMERATE = 25


@dataclass(frozen=True)
class Series:
    """Structures (one multi-model file) and optionally one map per model, shown as series.

    Attributes:
        structures: the multi-model PDB / mmCIF file.
        n_models: models in it.
        volumes: one map per model, in model order (all on one grid), or none.
        title: what the series is, for the script's comment and the slider.
    """

    structures: Path
    n_models: int
    volumes: list[Path] = field(default_factory=list)
    title: str = ""


def defattr_text(structure: AtomicModel, segment: np.ndarray) -> str:
    """The attribute assignment file of the segmentation: one line per residue.

    Args:
        structure: the base model (its chains, numbers and insertion codes name the residues).
        segment: ``(R,)`` int segment of each residue, -1 outside every part.
    """
    lines = [
        "# cryodomain: learned segment of each residue (-1: outside every segmented part)",
        f"attribute: {ATTRIBUTE}",
        "match mode: 1-to-1",
        "recipient: residues",
    ]
    lines += [f"\t{spec}\t{int(value)}" for spec, value in zip(residue_specs(structure).tolist(), np.asarray(segment).tolist())]
    return "\n".join(lines) + "\n"


def segment_palette(n_segments: int) -> str:
    """ChimeraX palette ``value,colour:...`` giving segment k the colour it has in segments.png."""
    stops = [f"-1,{OUTSIDE_COLOUR}"] + [f"{k},{colour}" for k, colour in enumerate(plots.segment_colours(n_segments))]
    return ":".join(stops)


def _relative(target: Path, script_dir: Path) -> str:
    """``target`` relative to the script's folder, with forward slashes, quoted if it holds a space."""
    path = Path(os.path.relpath(Path(target).resolve(), Path(script_dir).resolve())).as_posix()
    return f'"{path}"' if " " in path else path


def _structure_commands(series: Series, model: int, script_dir: Path, n_segments: int) -> list[str]:
    """Open a multi-model file as model ``#model`` (submodels ``#model.1..M``), coloured by segment,
    showing its first model only."""
    lines = [f"open {_relative(series.structures, script_dir)}"]
    if series.n_models == 1:
        lines.append(f"open {DEFATTR_NAME} models #{model}")
    else:
        lines += [f"open {DEFATTR_NAME} models #{model}.{index}" for index in range(1, series.n_models + 1)]
    lines.append(f"color byattribute r:{ATTRIBUTE} #{model} palette {segment_palette(n_segments)}")
    if series.n_models > 1:
        lines.append(f"hide #{model}.2-{series.n_models} models")
    return lines


def _volume_commands(series: Series, model: int, script_dir: Path) -> list[str]:
    """Open the maps of a series as one volume series ``#model`` with a slider."""
    if not series.volumes:
        return []
    names = " ".join(_relative(path, script_dir) for path in series.volumes)
    return [f"open {names} vseries true", f"volume #{model} style mesh", f"vseries slider #{model}"]


def _header(title: str, extra: str = "") -> list[str]:
    lines = [f"# cryodomain analyze: {title}", "# Open in ChimeraX (open THIS_FILE.cxc); paths are relative to this file's folder."]
    if extra:
        lines.append(f"# {extra}")
    return lines + ["close session"]


def series_script(series: Series, script_dir: Path, n_segments: int) -> str:
    """Structures as a model series with a slider, coloured by segment; their maps as a volume series."""
    lines = _header(series.title)
    lines += _structure_commands(series, 1, script_dir, n_segments)
    if series.n_models > 1:
        lines.append(f"mseries slider #1 pauseFrames {PAUSE_FRAMES}")
    lines += _volume_commands(series, 2, script_dir)
    return "\n".join(lines + ["view"]) + "\n"


def movie_script(series: Series, movie: str, script_dir: Path, n_segments: int) -> str:
    """Play a model series once while recording it; ``movie`` (``pcK.mp4``) is written beside the
    script, which is ``movie_pcK.cxc``."""
    lines = _header(f"movie of {series.title}", f"Without a window: chimerax --nogui --offscreen --exit movie_{Path(movie).stem}.cxc (OSMesa)")
    lines += _structure_commands(series, 1, script_dir, n_segments)
    lines += [
        "view",
        "movie record",
        f"mseries #1 pauseFrames {PAUSE_FRAMES}",
        f"wait {series.n_models * PAUSE_FRAMES}",
        f"movie encode {movie} framerate {MOVIE_FRAMERATE}",
    ]
    return "\n".join(lines) + "\n"


def flexibility_script(structure_file: Path, script_dir: Path) -> str:
    """The base model coloured by the RMSF in its B-factor column (blue: rigid, red: flexible)."""
    lines = _header("per-residue RMSF over all particles (Å, B-factor column)")
    lines += [f"open {_relative(structure_file, script_dir)}", "color bfactor #1 palette blue:white:red", "view"]
    return "\n".join(lines) + "\n"


def write_scripts(
    directory: Path,
    structure: AtomicModel,
    segment: np.ndarray,
    n_segments: int,
    pcs: list[Series],
    kmeans: Series | None = None,
    flexibility: Path | None = None,
) -> list[Path]:
    """Write the attribute file and the scripts into ``directory`` (``OUT/chimerax``).

    Args:
        directory: where the scripts go.
        structure: the base model.
        segment: ``(R,)`` int segment of each residue, -1 outside every part.
        n_segments: segments of the model (all parts).
        pcs: the traversal of PC1, PC2, ... in order.
        kmeans: the k-means centres.
        flexibility: the base model with the RMSF as B-factors.

    Returns:
        The written paths, the attribute file first.
    """
    directory = Path(directory)
    scripts: dict[str, str] = {}
    for number, series in enumerate(pcs, start=1):
        scripts[f"pc{number}.cxc"] = series_script(series, directory, n_segments)
        scripts[f"movie_pc{number}.cxc"] = movie_script(series, f"pc{number}.mp4", directory, n_segments)
    if kmeans is not None:
        scripts["kmeans.cxc"] = series_script(kmeans, directory, n_segments)
    if flexibility is not None:
        scripts["flexibility.cxc"] = flexibility_script(flexibility, directory)
    written = [directory / DEFATTR_NAME]
    with atomic_output(written[0]) as tmp:
        tmp.write_text(defattr_text(structure, segment))
    for name, text in scripts.items():
        with atomic_output(directory / name) as tmp:
            tmp.write_text(text)
        written.append(directory / name)
    return written
