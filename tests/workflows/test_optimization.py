"""The optimizer's learning rates over a run (workflows/optimization.py)."""

import pytest
import torch

from cryodomain.workflows.config import load_config
from cryodomain.workflows.optimization import segmentation_moves, set_learning_rates


def _optimizer() -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0, "name": name} for name in ("weights", "biases", "segmentation")]
    return torch.optim.Adam(groups)


def _rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {group["name"]: group["lr"] for group in optimizer.param_groups}


def test_segmentation_is_still_until_its_start_then_follows_the_schedule():
    config = load_config(None, {"optim.epochs": 10, "optim.segmentation_start": 0.3, "optim.lr_schedule": "constant"})
    optimizer = _optimizer()
    set_learning_rates(optimizer, config, 2.9)
    assert not segmentation_moves(config, 2.9)
    assert _rates(optimizer) == {"weights": config.optim.lr, "biases": config.optim.lr, "segmentation": 0.0}
    set_learning_rates(optimizer, config, 3.0)
    assert _rates(optimizer)["segmentation"] == pytest.approx(config.optim.segmentation_lr)


def test_configured_rates_when_no_epoch_is_given_and_by_default_from_the_start():
    config = load_config(None, {"optim.epochs": 10})
    assert config.optim.segmentation_start == 0.0 and segmentation_moves(config, 0.0)
    optimizer = _optimizer()
    set_learning_rates(optimizer, config)
    assert _rates(optimizer) == {"weights": config.optim.lr, "biases": config.optim.lr, "segmentation": config.optim.segmentation_lr}
    set_learning_rates(optimizer, config, 0.0)
    assert _rates(optimizer)["segmentation"] == pytest.approx(config.optim.segmentation_lr * 1e-3 / config.optim.warmup_epochs)
