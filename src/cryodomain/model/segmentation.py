"""Variational soft segmentation of the residues into segments that move as near-rigid bodies.

Each segment ``k`` has Gaussian variational parameters (mean ``m``, std ``s``) for its centre
``c_k`` (in local residue index), its width ``v_k`` and its proportion logit ``p_k``. A sample is
drawn by reparameterisation,

    c_k = m_c + s_c e,   v_k = ELU(m_v + s_v e') + 1,   pi = softmax(m_p + s_p e''),

and residue ``i`` (local index inside its part) belongs to segment ``k`` with

    w_ik = softmax_k( [ -(i - c_k)^2 / (2 v_k^2) + log pi_k ] / tau ).

The model can be split into several *parts* (:class:`SegmentPart`), each a contiguous residue
range of one chain with its own number of segments, start values and prior. Softmaxes run over the
segments of the residue's own part; residues outside every part have all-zero memberships and do
not move.

Numerical safety (the published code yields NaN when a width collapses): the std parameters are
stored directly (so the published learning rates keep their meaning) and used as
``sqrt(raw^2 + floor^2)``, which is smooth and never below ``floor``; the sampled width is clamped
to a positive floor before the division; log-proportions come from a log-softmax, never log(0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cryodomain.errors import input_error
from cryodomain.model.losses import gaussian_kl

# Default stds of the segmentation's start values and prior (residue-index units; logits for the
# proportions), stated once: the configuration and the uniform prior use these.
DEFAULT_CENTRE_STD = 10.0
DEFAULT_WIDTH_STD = 10.0
DEFAULT_PROPORTION_STD = 1.0
# Smallest std of any variational Gaussian (residue-index units for centres and widths).
STD_FLOOR = 1e-3
# Smallest sampled width v_k, in residues; far below one residue, where memberships are one-hot anyway.
WIDTH_FLOOR = 1e-2


def uniform_centres(n_residues: int, n_segments: int) -> np.ndarray:
    """Evenly spaced centres ``(k + 1/2) R_p / K`` in local residue index, ``(K,)`` float64."""
    return (np.arange(n_segments, dtype=np.float64) + 0.5) * n_residues / n_segments


def uniform_widths(n_residues: int, n_segments: int) -> np.ndarray:
    """Widths ``R_p / K`` (residues), ``(K,)`` float64."""
    return np.full(n_segments, n_residues / n_segments, dtype=np.float64)


def _per_segment(values: np.ndarray | None, default: np.ndarray, field: str) -> np.ndarray:
    """``values`` as a ``(K,)`` float64 array, or ``default`` when not given."""
    if values is None:
        return default
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape != default.shape:
        raise input_error(
            None,
            f"segmentation {field}",
            f"has {array.size} values but the part has {default.size} segments",
            "give one value per segment",
        )
    if not np.all(np.isfinite(array)):
        raise input_error(None, f"segmentation {field}", "contains non-finite values", "give finite numbers")
    return array


def _positive(value: float, field: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise input_error(None, f"segmentation {field}", f"must be a positive number, got {value}", "use a std > 0")
    return float(value)


@dataclass(frozen=True)
class SegmentPart:
    """One segmented residue range: a contiguous run of residues of one chain, with K segments.

    Start values and prior are per segment, in the part's *local* residue index ``0..R_p-1``.
    Any ``prior_*`` left as ``None`` takes the corresponding start value, so by default the prior
    equals the start values, which by default are the "uniform" ones of docs/method.md, 5.4 (centres
    ``(k + 1/2) R_p / K`` std 10, widths ``R_p / K`` std 10, logits 0 std 1). To keep a uniform prior
    with custom start values, pass :func:`uniform_centres` / :func:`uniform_widths` / zeros as prior.

    Attributes:
        residue_indices: ``(R_p,)`` int64 positions of the part's residues in the model's arrays.
        n_segments: ``K`` of this part.
        init_centres: ``(K,)`` start means of the centres (local residue index).
        init_centre_std: start std of the centres.
        init_widths: ``(K,)`` start means of the widths (residues).
        init_width_std: start std of the widths.
        init_proportions: ``(K,)`` start means of the proportion logits.
        init_proportion_std: start std of the proportion logits.
        prior_centres, prior_centre_std, prior_widths, prior_width_std, prior_proportions,
        prior_proportion_std: the prior, same meaning; ``None`` = the start value.
    """

    residue_indices: np.ndarray
    n_segments: int
    init_centres: np.ndarray | None = None
    init_centre_std: float = DEFAULT_CENTRE_STD
    init_widths: np.ndarray | None = None
    init_width_std: float = DEFAULT_WIDTH_STD
    init_proportions: np.ndarray | None = None
    init_proportion_std: float = DEFAULT_PROPORTION_STD
    prior_centres: np.ndarray | None = None
    prior_centre_std: float | None = None
    prior_widths: np.ndarray | None = None
    prior_width_std: float | None = None
    prior_proportions: np.ndarray | None = None
    prior_proportion_std: float | None = None

    def __post_init__(self) -> None:
        indices = np.asarray(self.residue_indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            raise input_error(None, "segmentation part", "selects no residues", "check the residue range and chain")
        if int(self.n_segments) < 1:
            raise input_error(None, "segmentation n_segments", f"must be >= 1, got {self.n_segments}", "use K >= 1")
        object.__setattr__(self, "residue_indices", indices)
        object.__setattr__(self, "n_segments", int(self.n_segments))
        self.resolved()  # report bad start values or prior when the part is made

    @property
    def n_residues(self) -> int:
        """``R_p``, the number of residues of the part."""
        return int(self.residue_indices.size)

    def resolved(self) -> dict[str, np.ndarray]:
        """Start values and prior with defaults filled in and checked.

        Returns:
            Arrays ``(K,)`` float64 keyed ``{init,prior}_{centre,width,proportion}_{mean,std}``.
        """
        k, r = self.n_segments, self.n_residues
        init = {
            "centre_mean": _per_segment(self.init_centres, uniform_centres(r, k), "init_centres"),
            "centre_std": np.full(k, _positive(self.init_centre_std, "init_centre_std")),
            "width_mean": _per_segment(self.init_widths, uniform_widths(r, k), "init_widths"),
            "width_std": np.full(k, _positive(self.init_width_std, "init_width_std")),
            "proportion_mean": _per_segment(self.init_proportions, np.zeros(k), "init_proportions"),
            "proportion_std": np.full(k, _positive(self.init_proportion_std, "init_proportion_std")),
        }
        prior_means = {
            "centre_mean": self.prior_centres,
            "width_mean": self.prior_widths,
            "proportion_mean": self.prior_proportions,
        }
        prior_stds = {
            "centre_std": self.prior_centre_std,
            "width_std": self.prior_width_std,
            "proportion_std": self.prior_proportion_std,
        }
        prior = {}
        for key, value in prior_means.items():
            prior[key] = _per_segment(value, init[key], f"prior_{key}")
        for key, value in prior_stds.items():
            prior[key] = init[key] if value is None else np.full(k, _positive(value, f"prior_{key}"))
        resolved = {f"init_{key}": value for key, value in init.items()}
        resolved.update({f"prior_{key}": value for key, value in prior.items()})
        return resolved


def _std_to_raw(std: np.ndarray) -> np.ndarray:
    """Inverse of the smooth floor, so that a stored raw value gives back exactly ``std``."""
    return np.sqrt(np.maximum(std**2 - STD_FLOOR**2, 0.0))


class Segmentation(nn.Module):
    """Learnable soft segmentation of ``n_residues`` residues into parts and segments.

    Segments are numbered part after part: part 0's segments first, then part 1's, and so on;
    :attr:`segment_part` says which part each segment belongs to.

    Args:
        parts: the segmented residue ranges; they must not overlap.
        n_residues: ``R``, the number of residues of the model.
        tau: softmax temperature of the memberships (smaller = closer to one-hot).
    """

    def __init__(self, parts: Sequence[SegmentPart], n_residues: int, tau: float = 0.05) -> None:
        super().__init__()
        if not parts:
            raise input_error(None, "segmentation parts", "none given", "give at least one part")
        if not tau > 0:
            raise input_error(None, "segmentation tau", f"must be > 0, got {tau}", "use e.g. 0.05")
        self.tau = float(tau)
        self.n_residues = int(n_residues)
        self.n_parts = len(parts)

        residue_part = np.full(self.n_residues, -1, dtype=np.int64)
        residue_local_index = np.zeros(self.n_residues, dtype=np.float64)
        segment_part: list[int] = []
        values: dict[str, list[np.ndarray]] = {}
        for part_number, part in enumerate(parts):
            indices = part.residue_indices
            if indices.min() < 0 or indices.max() >= self.n_residues:
                raise input_error(
                    None,
                    f"segmentation part {part_number}",
                    f"residue positions outside [0, {self.n_residues})",
                    "check the residue range against the model",
                )
            if np.unique(indices).size != indices.size or np.any(residue_part[indices] >= 0):
                raise input_error(
                    None,
                    f"segmentation part {part_number}",
                    "overlaps another part or repeats residues",
                    "make the parts disjoint",
                )
            residue_part[indices] = part_number
            residue_local_index[indices] = np.arange(indices.size)
            segment_part.extend([part_number] * part.n_segments)
            for key, array in part.resolved().items():
                values.setdefault(key, []).append(array)
        self.n_segments = len(segment_part)

        def as_tensor(arrays: list[np.ndarray]) -> Tensor:
            return torch.as_tensor(np.concatenate(arrays), dtype=torch.float32)

        self.centre_mean = nn.Parameter(as_tensor(values["init_centre_mean"]))
        self.centre_std_raw = nn.Parameter(as_tensor([_std_to_raw(a) for a in values["init_centre_std"]]))
        self.width_mean = nn.Parameter(as_tensor(values["init_width_mean"]))
        self.width_std_raw = nn.Parameter(as_tensor([_std_to_raw(a) for a in values["init_width_std"]]))
        self.proportion_mean = nn.Parameter(as_tensor(values["init_proportion_mean"]))
        self.proportion_std_raw = nn.Parameter(as_tensor([_std_to_raw(a) for a in values["init_proportion_std"]]))
        for name in ("centre", "width", "proportion"):
            self.register_buffer(f"prior_{name}_mean", as_tensor(values[f"prior_{name}_mean"]))
            self.register_buffer(f"prior_{name}_std", as_tensor(values[f"prior_{name}_std"]))

        self.register_buffer("residue_part", torch.as_tensor(residue_part))
        self.register_buffer("residue_local_index", torch.as_tensor(residue_local_index, dtype=torch.float32))
        self.register_buffer("segment_part", torch.as_tensor(segment_part, dtype=torch.int64))
        # The common case (one part over the whole model) needs no masking of the memberships.
        self.covers_all_residues = bool(np.all(residue_part >= 0))

    @staticmethod
    def _floored_std(raw: Tensor) -> Tensor:
        """Smooth positive std ``sqrt(raw^2 + floor^2)`` (never 0, differentiable everywhere)."""
        return torch.sqrt(raw.square() + STD_FLOOR**2)

    @property
    def centre_std(self) -> Tensor:
        """``(K,)`` std of the centres."""
        return self._floored_std(self.centre_std_raw)

    @property
    def width_std(self) -> Tensor:
        """``(K,)`` std of the widths (before the ELU)."""
        return self._floored_std(self.width_std_raw)

    @property
    def proportion_std(self) -> Tensor:
        """``(K,)`` std of the proportion logits."""
        return self._floored_std(self.proportion_std_raw)

    def _log_proportions(self, logits: Tensor) -> Tensor:
        """Log-softmax of ``(B, K)`` logits over the segments of each part separately."""
        parts = torch.arange(self.n_parts, device=logits.device)
        in_part = parts[:, None] == self.segment_part[None, :]
        per_part = logits[:, None, :].masked_fill(~in_part, float("-inf"))
        log_normaliser = torch.logsumexp(per_part, dim=-1)
        return logits - log_normaliser[:, self.segment_part]

    def forward(self, n_samples: int, *, sample: bool = True, noise: Tensor | None = None) -> Tensor:
        """Memberships of every residue to every segment.

        Args:
            n_samples: ``B``, the number of segmentations to return (one per image).
            sample: ``True``: ``B`` independent reparameterised samples (training);
                ``False``: the segmentation at the variational means, repeated ``B`` times (analysis).
            noise: ``(3, B, K)`` standard normal draws for centres, widths and proportions; drawn
                here when None (passing them makes multi-process runs match one process).

        Returns:
            ``(B, R, K)`` memberships; each row of a residue in a part sums to 1 over that part's
            segments and is 0 elsewhere; rows of residues outside every part are 0.
        """
        shape = (n_samples, self.n_segments)
        if sample:
            if noise is None:
                noise = torch.randn((3, *shape), dtype=self.centre_mean.dtype, device=self.centre_mean.device)
            centres = self.centre_mean + self.centre_std * noise[0]
            width_arguments = self.width_mean + self.width_std * noise[1]
            logits = self.proportion_mean + self.proportion_std * noise[2]
        else:
            centres = self.centre_mean.expand(shape)
            width_arguments = self.width_mean.expand(shape)
            logits = self.proportion_mean.expand(shape)
        # ELU + 1 is positive but underflows to 0 for very negative arguments; keep it off zero.
        widths = (F.elu(width_arguments) + 1.0).clamp_min(WIDTH_FLOOR)
        log_proportions = self._log_proportions(logits)

        # scores = (log p_k - (i - c_k)^2 / (2 s_k^2)) / tau, with the per-segment factors folded
        # into one multiply-add over the (B, R, K) offsets (the largest tensors here).
        offsets = self.residue_local_index[None, :, None] - centres[:, None, :]
        curvature = (-0.5 / self.tau) / widths.square()  # (B, K)
        scores = torch.addcmul((log_proportions / self.tau)[:, None, :], offsets.square(), curvature[:, None, :])
        if self.n_parts == 1 and self.covers_all_residues:
            return torch.softmax(scores, dim=-1)
        inside = self.residue_part >= 0
        # A residue competes only among its own part's segments; rows outside parts are zeroed below.
        allowed = (self.residue_part[:, None] == self.segment_part[None, :]) | ~inside[:, None]
        memberships = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        return memberships * inside[:, None].to(memberships.dtype)

    def kl_divergence(self) -> dict[str, Tensor]:
        """KL of the variational Gaussians to the prior, summed over all segments of all parts.

        Returns:
            ``{"centres", "widths", "proportions"}``: scalars.
        """
        return {
            "centres": gaussian_kl(self.centre_mean, self.centre_std, self.prior_centre_mean, self.prior_centre_std),
            "widths": gaussian_kl(self.width_mean, self.width_std, self.prior_width_mean, self.prior_width_std),
            "proportions": gaussian_kl(self.proportion_mean, self.proportion_std, self.prior_proportion_mean, self.prior_proportion_std),
        }

    @torch.no_grad()
    def hard_assignment(self) -> tuple[np.ndarray, np.ndarray]:
        """The most likely segment of each residue, from the variational means.

        Returns:
            ``(segment, probability)``: ``(R,)`` int64 global segment index (-1 outside every part)
            and ``(R,)`` float64 membership of that segment (0 outside every part).
        """
        memberships = self.forward(1, sample=False)[0]
        probability, segment = memberships.max(dim=-1)
        outside = self.residue_part < 0
        segment = segment.masked_fill(outside, -1)
        probability = probability.masked_fill(outside, 0.0)
        return segment.cpu().numpy().astype(np.int64), probability.cpu().numpy().astype(np.float64)
