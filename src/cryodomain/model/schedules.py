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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt


class BetaSchedule(BaseModel):
    """The weight of one loss term as a function of the epoch; validated when made (and when read
    from a configuration, whose ``loss`` section holds one per term).

    Attributes:
        kind: ``"constant"``, ``"linear"`` or ``"cyclical"``.
        value: the plateau value of the weight, >= 0.
        ramp_epochs: linear only: number of epochs of the ramp ``M`` (``None``: half of the epochs;
            0: the plateau from the start).
        n_cycles: cyclical only: number of cycles ``M`` over the whole run.
        ramp_fraction: cyclical only: fraction ``R`` of each cycle spent ramping up from 0, in (0, 1].
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["constant", "linear", "cyclical"] = "constant"
    value: float = Field(ge=0.0)
    ramp_epochs: NonNegativeInt | None = None
    n_cycles: PositiveInt = 5
    ramp_fraction: float = Field(0.5, gt=0.0, le=1.0)

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
        if period <= 0:
            return float(self.value)
        phase = math.fmod(epoch, period) / period
        return float(self.value * min(phase / self.ramp_fraction, 1.0))
