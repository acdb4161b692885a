"""Schedules for the loss weights (the betas of the KL, continuity, clash and L2 terms).

Each weight ``b`` of the loss follows one :class:`BetaSchedule`, evaluated at a (possibly
fractional) epoch so that it can be updated at every optimisation step:

* ``constant``: ``value``;
* ``linear``: ``value * min(epoch / M, 1)`` with ``M = ramp_epochs`` (default half of the epochs);
* ``cyclical``: ``M = n_cycles`` cycles of length ``total / M``; inside a cycle at fraction ``t``
  the weight is ``value * min(t / R, 1)`` with ``R = ramp_fraction``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

SCHEDULE_KINDS = ("constant", "linear", "cyclical")


@dataclass(frozen=True)
class BetaSchedule:
    """The weight of one loss term as a function of the epoch.

    Attributes:
        kind: ``"constant"``, ``"linear"`` or ``"cyclical"``.
        value: the plateau value of the weight.
        ramp_epochs: linear only: number of epochs of the ramp ``M`` (``None``: half of the epochs).
        n_cycles: cyclical only: number of cycles ``M`` over the whole run.
        ramp_fraction: cyclical only: fraction ``R`` of each cycle spent ramping up from 0.
    """

    kind: Literal["constant", "linear", "cyclical"]
    value: float
    ramp_epochs: int | None = None
    n_cycles: int = 5
    ramp_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if self.ramp_epochs is not None and self.ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be >= 0, got {self.ramp_epochs}")
        if self.n_cycles < 1:
            raise ValueError(f"n_cycles must be >= 1, got {self.n_cycles}")
        if not 0.0 <= self.ramp_fraction <= 1.0:
            raise ValueError(f"ramp_fraction must lie in [0, 1], got {self.ramp_fraction}")

    def __call__(self, epoch: float, total_epochs: int) -> float:
        """The weight at ``epoch``.

        Args:
            epoch: the current epoch, fractional inside an epoch (``step / steps_per_epoch``), >= 0.
            total_epochs: the number of epochs of the whole run (sets the default linear ramp and
                the cycle length).

        Returns:
            The weight, a Python float.
        """
        if self.kind == "constant":
            return float(self.value)
        if self.kind == "linear":
            ramp = self.ramp_epochs if self.ramp_epochs is not None else total_epochs / 2
            # A zero-length ramp means the plateau from the start.
            return float(self.value) if ramp <= 0 else float(self.value * min(epoch / ramp, 1.0))
        period = total_epochs / self.n_cycles
        if period <= 0 or self.ramp_fraction == 0.0:
            return float(self.value)
        phase = math.fmod(epoch, period) / period
        return float(self.value * min(phase / self.ramp_fraction, 1.0))
