"""The optimizer of a run: Adam over network weights, biases and the segmentation.

The segmentation has its own learning rate (its parameters are in residue-index units); the L2
penalty of the network weights is applied as Adam's weight decay (docs/method.md, "Optimisation").
"""

from __future__ import annotations

import math

import torch

from cryodomain.model.cryosphere import CryoSphere
from cryodomain.model.losses import weights_and_biases
from cryodomain.workflows.config import RunConfig


def build_optimizer(model: CryoSphere, config: RunConfig) -> torch.optim.Optimizer:
    """Adam over three groups: network weights (L2 as weight decay), network biases, segmentation.

    The weight decay starts at 0; :func:`set_l2_weight` sets it from the schedule every step.
    """
    weights, biases = weights_and_biases(model.network_modules())
    # The fused kernel updates all parameters in one pass (6x faster than the default on the
    # encoder's first layer on CPU, benchmarks/RESULTS.md); the same update rule.
    fused = model.base_coords.device.type in ("cpu", "cuda")
    return torch.optim.Adam(
        [
            {"params": weights, "lr": config.optim.lr, "name": "weights"},
            {"params": biases, "lr": config.optim.lr, "name": "biases"},
            {"params": [p for p in model.segmentation.parameters() if p.requires_grad], "lr": config.optim.segmentation_lr, "name": "segmentation"},
        ],
        fused=fused or None,
    )


def set_l2_weight(optimizer: torch.optim.Optimizer, beta_l2: float) -> None:
    """Apply ``beta_l2 * sum w^2`` through Adam's weight decay: its gradient is ``2 beta_l2 w``.

    Adam (not AdamW) adds ``weight_decay * w`` to the gradient before its moments, which is
    exactly the gradient of the penalty. It would be added after gradient clipping, so runs with
    ``grad_clip`` keep the penalty in the loss's autograd instead (see :func:`train`).
    """
    for group in optimizer.param_groups:
        group["weight_decay"] = 2.0 * beta_l2 if group["name"] == "weights" else 0.0


def set_learning_rates(optimizer: torch.optim.Optimizer, config: RunConfig, epoch: float | None = None) -> None:
    """The configuration's learning rates on every group (the segmentation has its own), at
    (fractional) ``epoch`` of the run: times :func:`learning_rate_factor`, and 0 on the segmentation
    before :func:`segmentation_moves`. None: the configured rates themselves."""
    factor = 1.0 if epoch is None else learning_rate_factor(config, epoch)
    moving = epoch is None or segmentation_moves(config, epoch)
    for group in optimizer.param_groups:
        if group["name"] == "segmentation":
            group["lr"] = factor * config.optim.segmentation_lr if moving else 0.0
        else:
            group["lr"] = factor * config.optim.lr


def segmentation_moves(config: RunConfig, epoch: float) -> bool:
    """Whether the segmentation learns at (fractional) ``epoch``: after the first
    ``segmentation_start`` share of the epochs, so that the motions are found before the
    boundaries follow them."""
    return epoch >= config.optim.segmentation_start * (config.optim.epochs or 0)


def learning_rate_factor(config: RunConfig, epoch: float) -> float:
    """The factor on the configured learning rates at (fractional) ``epoch`` of the run.

    ``constant``: 1. ``cosine``: a linear warm-up from 0 over ``warmup_epochs``, then a cosine
    from 1 down to ``final_lr_fraction`` at the last epoch.
    """
    optim = config.optim
    if optim.lr_schedule == "constant":
        return 1.0
    if epoch < optim.warmup_epochs:
        return (epoch + 1e-3) / optim.warmup_epochs
    span = max(optim.epochs - optim.warmup_epochs, 1e-9)
    progress = min((epoch - optim.warmup_epochs) / span, 1.0)
    return optim.final_lr_fraction + (1.0 - optim.final_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
