import csv
import logging

import numpy as np
import pytest
import torch
import yaml

from cryodomain.examples import STATE_A
from cryodomain.model.segmentation import Segmentation, SegmentPart
from cryodomain.workflows.config import START_VALUES, load_config
from cryodomain.workflows.inputs import load_training_data
from cryodomain.workflows.references import piecewise_rigid_limit
from cryodomain.workflows.segment_search import boundary_values, needs_search, search_config, search_epochs
from cryodomain.workflows.train import train
from cryodomain.workflows.trained_run import TrainedRun

SEARCH = {"model.search.enabled": True, "optim.epochs": 3, "model.search.images": 40}


def rows(path):
    return list(csv.DictReader(open(path)))


@pytest.mark.parametrize("boundaries", [[0, 7, 30, 31, 50], [0, 1, 2, 49, 50], [0, 25, 50]])
def test_boundary_values_put_each_segment_exactly_on_its_range(boundaries):
    values = boundary_values(np.array(boundaries), START_VALUES)
    k = len(boundaries) - 1
    part = SegmentPart(np.arange(50), k, init_centres=np.array(values.centres), init_widths=np.array(values.widths))
    segment, _ = Segmentation([part], 50, tau=0.05).hard_assignment()
    assert (np.flatnonzero(np.diff(segment)) + 1).tolist() == boundaries[1:-1]
    assert np.unique(segment).tolist() == list(range(k))


def test_the_rigid_limit_searches_only_the_candidates_given():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 3)) * 5
    moved = base.copy()
    moved[17:] += [3.0, 0.0, 0.0]  # the true boundary, 17, is not a candidate
    free = piecewise_rigid_limit(base, moved[None], np.ones(1), 2)
    assert free.boundaries.tolist() == [0, 17, 40] and free.exact
    restricted = piecewise_rigid_limit(base, moved[None], np.ones(1), 2, candidates=np.array([10, 20, 30]))
    assert restricted.boundaries.tolist() == [0, 20, 40] and restricted.candidate_step == 10 and not restricted.exact


def test_the_search_runs_only_when_enabled_without_start_centres_and_splits_the_epochs():
    assert not needs_search(load_config(None, {"optim.epochs": 10}))
    config = load_config(None, {"optim.epochs": 10, "model.search.enabled": True})
    assert needs_search(config) and search_epochs(config) == (3, 7)
    assert not needs_search(load_config(None, {"optim.epochs": 1, "model.search.enabled": True}))
    given = load_config(None, {"optim.epochs": 10, "model.search.enabled": True, "model.n_segments": 2, "model.init": {"centres": [1.0, 5.0]}})
    assert not needs_search(given)
    assert search_epochs(load_config(None, {"optim.epochs": 2, "model.search.enabled": True})) == (1, 1)


def test_the_first_phase_has_factor_times_the_segments_fixed_per_part(tiny_simulation, tiny_config_overrides):
    overrides = {**tiny_config_overrides, **SEARCH, "model.parts": [{"chain": "A", "n_segments": 2}, {"chain": "C", "n_segments": 4}]}
    config = load_config(None, overrides)
    data = load_training_data(tiny_simulation["star"], STATE_A, config)
    first = search_config(config, data)
    sizes = [int((data.structure.chain_ids == chain).sum()) for chain in ("A", "C")]
    assert [part.n_segments for part in first.model.parts] == [min(3 * 2, sizes[0]), min(3 * 4, sizes[1])]
    assert not first.model.learn_segmentation and first.optim.epochs == 1


def test_a_searched_run_trains_from_the_boundaries_of_its_first_phase_and_resumes_exactly(tmp_path, tiny_simulation, tiny_config_overrides, caplog):
    config = load_config(None, {**tiny_config_overrides, **SEARCH, "model.learn_segmentation": False})
    straight = tmp_path / "straight"
    with caplog.at_level(logging.INFO):
        train(tiny_simulation["star"], STATE_A, straight, config, progress=False)
    assert "segment search: 1 epochs with 3 x 3 fixed segments" in caplog.text and "boundaries" in caplog.text
    assert [r["epoch"] for r in rows(straight / "search" / "metrics.csv")] == ["1"]
    assert [r["epoch"] for r in rows(straight / "metrics.csv")] == ["1", "2"]
    saved = yaml.safe_load((straight / "config.yaml").read_text())["model"]
    assert saved["n_segments"] == 3 and saved["init"]["centres"] is not None
    # The first phase: 9 fixed segments; the main phase's boundaries are among the first phase's.
    first = TrainedRun.load(straight / "search")
    assert first.model.segmentation.n_segments == 9
    first_segment, _ = first.model.segmentation.hard_assignment()
    main = TrainedRun.load(straight)
    segment, _ = main.model.segmentation.hard_assignment()
    cuts = set((np.flatnonzero(np.diff(segment)) + 1).tolist())
    assert len(cuts) == 2 and cuts <= set((np.flatnonzero(np.diff(first_segment)) + 1).tolist())
    # Stopped after the main phase's first epoch, then resumed: the same bits.
    resumed = tmp_path / "resumed"
    train(tiny_simulation["star"], STATE_A, resumed, config, progress=False, stop_after_epoch=1)
    train(tiny_simulation["star"], STATE_A, resumed, config, progress=False, resume=True)
    a, b = (torch.load(d / "last.pt", weights_only=False)["model"] for d in (straight, resumed))
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    # --force starts over, the first phase included.
    train(tiny_simulation["star"], STATE_A, resumed, load_config(None, tiny_config_overrides), progress=False, force=True)
    assert not (resumed / "search").exists()
