"""The training objective: the model's image of a batch, and one table of loss terms.

:data:`LOSS_TERMS` says, for every term, whether it has a weight schedule, whether it enters the
total divided by the pixel count, and whether it averages over the images of a batch. The total,
the reduction across processes, ``metrics.csv`` and ``analyze``'s curves all read that table; adding
a term means a row here and its value in :func:`compute_losses`. The terms: docs/method.md, "Loss".
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from cryodomain.io.particles import ParticleTable
from cryodomain.model.cryosphere import CryoSphere, Deformation
from cryodomain.model.losses import (
    all_pairs,
    clash_loss,
    clash_pairs_light,
    continuity_loss,
    correlation_loss,
    l2_penalty,
    latent_kl,
)
from cryodomain.physics.ctf import compute_ctf
from cryodomain.physics.imaging import ImageFrame, form_images
from cryodomain.workflows.config import RunConfig
from cryodomain.workflows.data import Preprocessor, ctf_parameters
from cryodomain.workflows.inputs import TrainingData, residue_gaussians

log = logging.getLogger(__name__)

# Above this many residues the full clash loss would need R^2 pairs per image: use neighbour pairs.
FULL_CLASH_MAX_RESIDUES = 3000


@dataclass(frozen=True)
class LossTerm:
    """One term of the loss.

    Attributes:
        name: its name in the configuration (``loss.<name>``), ``metrics.csv`` and TensorBoard.
        weighted: has a weight schedule ``beta`` (every term but the correlation).
        per_pixel: enters the total divided by the number of pixels (the KL terms: the correlation
            is a per-pixel mean, so the ELBO's KL is scaled alike).
        batch_mean: averages over the images of a batch (the others do not depend on the batch).
    """

    name: str
    weighted: bool
    per_pixel: bool
    batch_mean: bool


LOSS_TERMS: tuple[LossTerm, ...] = (
    LossTerm("correlation", weighted=False, per_pixel=False, batch_mean=True),
    LossTerm("latent_kl", weighted=True, per_pixel=True, batch_mean=True),
    LossTerm("centres_kl", weighted=True, per_pixel=True, batch_mean=False),
    LossTerm("widths_kl", weighted=True, per_pixel=True, batch_mean=False),
    LossTerm("proportions_kl", weighted=True, per_pixel=True, batch_mean=False),
    LossTerm("continuity", weighted=True, per_pixel=False, batch_mean=True),
    LossTerm("clash", weighted=True, per_pixel=False, batch_mean=True),
    LossTerm("l2", weighted=True, per_pixel=False, batch_mean=False),
)
TERM_NAMES = tuple(term.name for term in LOSS_TERMS)
WEIGHTED_TERMS = tuple(term for term in LOSS_TERMS if term.weighted)
# Every value logged per epoch: the terms and their weighted total.
LOGGED_VALUES = ("total", *TERM_NAMES)


def term_weight(term: LossTerm, beta: float, n_pixels: int) -> float:
    """The factor of ``term`` in the total: ``beta``, divided by ``n_pixels`` for per-pixel terms."""
    return beta * (1.0 / n_pixels if term.per_pixel else 1.0)


def betas_at(config: RunConfig, epoch: int) -> dict[str, float]:
    """The weight of every weighted term at ``epoch`` from the configuration's schedules."""
    epochs = config.optim.epochs
    return {term.name: getattr(config.loss, term.name)(epoch, epochs) for term in WEIGHTED_TERMS}


def weighted_total(values: dict[str, float], betas: dict[str, float], n_pixels: int) -> float:
    """The total loss from (batch- or epoch-mean) term values: correlation + sum of weighted terms."""
    total = values["correlation"]
    for term in WEIGHTED_TERMS:
        total += betas[term.name] * values[term.name] / (n_pixels if term.per_pixel else 1.0)
    return total


@dataclass(frozen=True)
class StepContext:
    """Constants of the forward model and the loss, built once per run on the training device."""

    preprocess: Preprocessor
    sigma_A: float | torch.Tensor  # one width for all, or (R,) (inputs.residue_gaussians)
    continuity_pairs: torch.Tensor  # (P, 2)
    clash_pairs: torch.Tensor | None  # (Q, 2)
    clash_cutoff_A: float
    # bfloat16 autocast for the encoder and decoder MLPs on CUDA; rendering, CTF and losses stay float32.
    mixed_precision: bool = False
    # The encoder sees the residual against the base model's image (model.encoder_input).
    encoder_residual: bool = False

    @property
    def frame(self) -> ImageFrame:
        return self.preprocess.frame

    @property
    def n_pixels(self) -> int:
        return self.frame.n_pixels


def lowpass_at(config: RunConfig, epoch: float | None = None) -> float | None:
    """The low-pass resolution (Å) at ``epoch``, or at the end of training when None.

    Coarse to fine when ``data.lowpass_final_A`` is set: linear in frequency from ``lowpass_A`` to
    it over the first ``lowpass_fraction`` of the epochs (a final resolution not finer than
    ``lowpass_A`` keeps ``lowpass_A``).
    """
    start, final = config.data.lowpass_A, config.data.lowpass_final_A
    if start is None or final is None or final >= start:
        return start
    progress = 1.0 if epoch is None else min(epoch / (config.data.lowpass_fraction * config.optim.epochs), 1.0)
    return 1.0 / ((1.0 - progress) / start + progress / final)


def context_at(context: StepContext, config: RunConfig, epoch: int) -> StepContext:
    """``context`` (built with the final low-pass) with the low-pass filter of ``epoch`` (the same
    object when that is the final one)."""
    resolution = lowpass_at(config, epoch)
    if resolution == lowpass_at(config):
        return context
    frame = context.frame.with_lowpass(resolution)
    return dataclasses.replace(context, preprocess=dataclasses.replace(context.preprocess, frame=frame))


def build_context(model: CryoSphere, data: TrainingData, config: RunConfig, scale: float, device: torch.device) -> StepContext:
    """The run's :class:`StepContext` at the end of training: image frame with the configured (final)
    low-pass and mask, data scale, continuity pairs, and clash pairs (all, neighbours, or none)."""
    frame = ImageFrame.build(
        data.box,
        data.pixel_size_A,
        lowpass_A=lowpass_at(config),
        mask_radius_fraction=config.data.mask_radius_fraction,
        device=device,
    )
    preprocess = Preprocessor(frame, scale, -1.0 if config.data.invert_contrast else 1.0, config.data.centre_encoder_input)
    continuity = torch.as_tensor(data.structure.consecutive_pairs(), device=device, dtype=torch.long)
    widths = residue_gaussians(data.structure, config).widths
    mode = config.loss.clash_mode
    if mode == "full" and data.structure.n_residues > FULL_CLASH_MAX_RESIDUES:
        log.info("clash loss: %d residues is above %d, using neighbour pairs (light) instead of all pairs", data.structure.n_residues, FULL_CLASH_MAX_RESIDUES)
        mode = "light"
    clash_pairs = None
    if mode == "full":
        clash_pairs = all_pairs(data.structure.n_residues, device=device)
    elif mode == "light":
        clash_pairs = clash_pairs_light(model.base_coords).to(device)
    return StepContext(
        preprocess=preprocess,
        sigma_A=widths if isinstance(widths, float) else torch.as_tensor(widths, dtype=torch.float32, device=device),
        continuity_pairs=continuity,
        clash_pairs=clash_pairs,
        clash_cutoff_A=config.loss.clash_cutoff_A,
        mixed_precision=config.optim.mixed_precision and device.type == "cuda",
        encoder_residual=config.model.encoder_input == "residual",
    )


@dataclass(frozen=True)
class ModelImages:
    """The model's view of a batch of B images of N x N pixels, D latent dimensions.

    Attributes:
        mean, std: ``(B, D)`` the encoder's latent distribution.
        deformation: the decoded structures.
        predicted: ``(B, N, N)`` the model's images (pose, projection, CTF, low-pass, mask).
        target: ``(B, N, N)`` the experimental images as the loss compares them.
    """

    mean: torch.Tensor
    std: torch.Tensor
    deformation: Deformation
    predicted: torch.Tensor
    target: torch.Tensor


def encoder_inputs(
    model: CryoSphere, batch: dict[str, torch.Tensor], table: ParticleTable, context: StepContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the encoder sees and what the loss compares, for a batch of B images of N x N pixels.

    Returns:
        ``(encoder_input, target, ctf)``: ``(B, N, N)``, ``(B, N, N)`` and the ``(B, N, N // 2 + 1)``
        CTF. With ``context.encoder_residual`` the encoder input is the target minus the base
        model's image at the image's pose and CTF (least-squares scaled per image): what is left
        to explain by the motion.
    """
    device = context.frame.grid.device
    images = batch["images"].to(device, non_blocking=True)
    shifts = batch["shifts_A"].to(device, non_blocking=True)
    encoder_input, target = context.preprocess(images, shifts)
    ctf = compute_ctf(context.frame.freqs, ctf_parameters(table, batch["index"].numpy(), device=device))
    if context.encoder_residual:
        rotations = batch["rotations"].to(device, non_blocking=True)
        with torch.no_grad():
            base = form_images(model.base_gaussians, model.amplitudes, rotations, context.sigma_A, context.frame, ctf)
            scale = (base * target).sum(dim=(-2, -1), keepdim=True) / base.square().sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
            encoder_input = target - scale * base
    return encoder_input, target, ctf


def model_images(
    model: CryoSphere,
    batch: dict[str, torch.Tensor],
    table: ParticleTable,
    context: StepContext,
    *,
    sample: bool = True,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    forward: torch.nn.Module | None = None,
) -> ModelImages:
    """Encode -> (sample) -> deform -> image, for a batch of :class:`ParticleBatches`.

    Args:
        model: the model (its amplitudes).
        batch: a batch from :class:`~cryodomain.workflows.data.ParticleBatches`.
        table: the particle table (CTF parameters).
        context: constants of the forward model.
        sample: draw the latent and the segmentation (training); else decode the latent mean with
            the segmentation means (analysis).
        noise: ``(B, D)`` latent and ``(3, B, K)`` segmentation standard normal draws (drawn from
            the global RNG when None).
        forward: the module to call for the pass (the DDP wrapper of ``model``, or ``model``).
    """
    device = context.frame.grid.device
    rotations = batch["rotations"].to(device, non_blocking=True)
    encoder_input, target, ctf = encoder_inputs(model, batch, table, context)
    latent_noise, segmentation_noise = noise if noise is not None else (None, None)
    mean, std, deformation = (forward or model)(
        encoder_input, batch["index"].to(device), latent_noise, segmentation_noise, context.mixed_precision and sample, sample=sample, poses=rotations
    )
    predicted = form_images(deformation.render_coords, model.amplitudes, rotations, context.sigma_A, context.frame, ctf)
    return ModelImages(mean, std, deformation, predicted, target)


def compute_losses(
    model: CryoSphere,
    batch: dict[str, torch.Tensor],
    table: ParticleTable,
    context: StepContext,
    betas: dict[str, float],
    *,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_weight: float = 1.0,
    forward: torch.nn.Module | None = None,
    l2_gradient: bool = True,
) -> dict[str, torch.Tensor]:
    """All loss terms of one batch (unweighted) and their weighted ``total``.

    Args:
        model, batch, table, context, noise, forward: see :func:`model_images`.
        betas: the weight of every weighted term at this epoch.
        batch_weight: factor on the batch-averaged terms in ``total``: a process holding ``b`` of
            the ``G`` images of a global batch among ``W`` processes uses ``b W / G``, so that
            DDP's gradient average equals the gradient of the global batch mean.
        l2_gradient: differentiate the L2 term through autograd. The training loop passes False
            and lets Adam's ``weight_decay`` add its gradient (``train.set_l2_weight``): the same
            update without squaring the encoder's weights and back again every step.

    Returns:
        ``{name: scalar}`` for every name of :data:`LOSS_TERMS`, and ``"total"``.
    """
    seen = model_images(model, batch, table, context, noise=noise, forward=forward)
    coords = seen.deformation.coords
    segmentation_kl = model.segmentation.kl_divergence()
    terms = {
        "correlation": correlation_loss(seen.predicted, seen.target),
        "latent_kl": latent_kl(seen.mean, seen.std),
        "centres_kl": segmentation_kl["centres"],
        "widths_kl": segmentation_kl["widths"],
        "proportions_kl": segmentation_kl["proportions"],
        "continuity": continuity_loss(coords, model.base_coords, context.continuity_pairs),
        "clash": clash_loss(coords, context.clash_pairs, context.clash_cutoff_A) if context.clash_pairs is not None else torch.zeros((), device=coords.device),
    }
    with torch.set_grad_enabled(l2_gradient and torch.is_grad_enabled()):
        terms["l2"] = l2_penalty(model.network_modules())
    total = batch_weight * terms["correlation"]
    for term in WEIGHTED_TERMS:
        weight = term_weight(term, betas[term.name], context.n_pixels)
        if term.batch_mean:
            weight = weight * batch_weight
        total = total + weight * terms[term.name]
    terms["total"] = total
    return terms
