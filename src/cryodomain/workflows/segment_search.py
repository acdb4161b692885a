"""Finding the segments from the images before the main training (``model.search``, on by default).

The learned soft segmentation loses segments (a 16-segment run ended with 10 distinct ones) and puts
its boundaries near, not on, the domain boundaries (benchmarks/RESULTS.md, "Accuracy: the
segmentation"). So a run first trains for ``search.fraction`` of its epochs with ``search.factor``
x K fixed, evenly spaced segments per part, in ``RUN/search/`` (a run folder of its own, resumable
like any). It then decodes the latent means of ``search.images`` particles and cuts each part into
the K contiguous segments that best follow those decoded structures: the piecewise-rigid dynamic
programme of :mod:`~cryodomain.workflows.references`, with the decoded structures as the
conformations and the first phase's segment boundaries as the candidates (its segments move
rigidly, so the boundaries of the motions are among them). The main phase trains fresh networks
from these boundaries for the remaining epochs; its configuration holds them as start values, so
``RUN/config.yaml`` repeats the main phase exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cryodomain.workflows.config import Part, RunConfig, SegmentValues
from cryodomain.workflows.inputs import TrainingData, resolve_parts
from cryodomain.workflows.references import piecewise_rigid_limit
from cryodomain.workflows.run_folder import SEARCH_FOLDER, load_checkpoint
from cryodomain.workflows.trained_run import TrainedRun

log = logging.getLogger(__name__)

# Particles decoded for the search are drawn with this seed (the same on every resume).
SAMPLE_SEED = 0


def start_values(config: RunConfig) -> list[SegmentValues]:
    """The start values of each part (the whole model's when no parts are given)."""
    return [part.init for part in config.model.parts] if config.model.parts else [config.model.init]


def needs_search(config: RunConfig) -> bool:
    """Whether the run starts with a search: enabled, no start centres given, and >= 2 epochs."""
    epochs = config.optim.epochs or 0
    return config.model.search.enabled and epochs >= 2 and all(values.centres is None for values in start_values(config))


def search_epochs(config: RunConfig) -> tuple[int, int]:
    """Epochs of the search and of the main phase; they add up to ``optim.epochs`` (>= 2)."""
    epochs = int(config.optim.epochs)
    first = min(max(1, round(config.model.search.fraction * epochs)), epochs - 1)
    return first, epochs - first


def _with_parts(config: RunConfig, counts: list[int], values: list[SegmentValues], learn: bool, epochs: int) -> RunConfig:
    """``config`` with each part's number of segments and start values replaced, and ``epochs``."""
    model = config.model
    if model.parts:
        parts = [Part.model_validate({**part.model_dump(), "n_segments": k, "init": v.model_dump()}) for part, k, v in zip(model.parts, counts, values)]
        model = model.model_copy(update={"parts": parts, "learn_segmentation": learn})
    else:
        model = model.model_copy(update={"n_segments": counts[0], "init": values[0], "learn_segmentation": learn})
    optim = config.optim.model_copy(update={"epochs": epochs})
    return RunConfig.model_validate({**config.model_dump(), "model": model.model_dump(), "optim": optim.model_dump()})


def _segment_counts(config: RunConfig) -> list[int]:
    return [part.n_segments for part in config.model.parts] if config.model.parts else [config.model.n_segments]


def search_config(config: RunConfig, data: TrainingData) -> RunConfig:
    """The first phase: ``factor`` x K fixed, evenly spaced segments per part (at most one per
    residue), for :func:`search_epochs`'s first share of the epochs."""
    sizes = [part.n_residues for part in resolve_parts(config, data.structure)]
    counts = [min(config.model.search.factor * k, size) for k, size in zip(_segment_counts(config), sizes)]
    values = [values.model_copy(update={"centres": None, "widths": None, "proportions": None}) for values in start_values(config)]
    return _with_parts(config, counts, values, learn=False, epochs=search_epochs(config)[0])


def boundary_values(boundaries: np.ndarray, like: SegmentValues) -> SegmentValues:
    """Start values whose segments are exactly ``[b_k, b_{k+1})`` (local residue index).

    Centres at the middle residue ``(b_k + b_{k+1} - 1) / 2`` and widths equal to the lengths put
    the equal-score point of two neighbours half-way between their last and first residues:
    ``(b - 1/2 - c_k) / v_k = 1/2`` on both sides.
    """
    b = np.asarray(boundaries, dtype=np.float64)
    return like.model_copy(update={"centres": ((b[:-1] + b[1:] - 1) / 2).tolist(), "widths": np.diff(b).tolist(), "proportions": None})


def found_config(config: RunConfig, search_checkpoint: Path, data: TrainingData, device: torch.device) -> RunConfig:
    """The main phase's configuration: the boundaries found from the first phase's checkpoint.

    Args:
        config: the run's configuration (the search's start, with K per part).
        search_checkpoint: the first phase's final checkpoint.
        data: the run's inputs.
        device: where to decode.
    """
    run = TrainedRun.from_state(search_checkpoint.parent, search_checkpoint, load_checkpoint(search_checkpoint, device), data, device)
    n = len(data.table)
    sample = np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, min(config.model.search.images, n), replace=False))
    with torch.no_grad():
        z = torch.as_tensor(run.latent_means_of(sample), device=device)
        decoded = run.model.decode(z, sample_segmentation=False).coords.double().cpu().numpy()
    base = run.model.base_coords.double().cpu().numpy()
    segment, _ = run.model.segmentation.hard_assignment()
    values, found = [], []
    for part, k, start in zip(resolve_parts(run.config, data.structure), _segment_counts(config), start_values(config)):
        idx = part.residue_indices
        local = segment[idx]
        candidates = np.flatnonzero(local[1:] != local[:-1]) + 1
        limit = piecewise_rigid_limit(base[idx], decoded[:, idx], np.ones(len(sample)), k, candidates=candidates)
        values.append(boundary_values(limit.boundaries, start))
        found.append(limit.boundaries)
        log.info(
            "segment search: %d segments of %d residues, boundaries %s (residue indices); they follow the decoded motions of %d particles to %.2f Å",
            k,
            part.n_residues,
            " ".join(str(int(b)) for b in limit.boundaries[1:-1]),
            len(sample),
            float(np.median(limit.rmsd_A)),
        )
    return _with_parts(config, _segment_counts(config), values, learn=config.model.learn_segmentation, epochs=search_epochs(config)[1])


def describe(config: RunConfig) -> str:
    """One line for the log: what the search will do."""
    first, main = search_epochs(config)
    counts = _segment_counts(config)
    factor = config.model.search.factor
    return (
        f"segment search: {first} epochs with {factor} x {'+'.join(map(str, counts))} fixed segments in {SEARCH_FOLDER}/, "
        f"then {main} epochs from the {'+'.join(map(str, counts))} segments that follow its motions best"
    )
