"""Training a cryoSPHERE model on particle images with known poses and CTF.

One step: encode -> sample latent and segmentation -> decode segment motions -> deform the base
structure -> rotate by the particle pose -> project -> CTF -> correlation with the shifted image,
plus the KL, continuity, clash and L2 terms (METHOD.md). Adam with its own learning rate for the
segmentation. Every epoch ends with a checkpoint holding everything needed to resume exactly.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import pickle
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from cryodomain.allocator import keep_freed_memory
from cryodomain.errors import InputError, input_error
from cryodomain.io.atomic import atomic_output, remove_stale_temporaries
from cryodomain.io.particles import ParticleTable, read_particles
from cryodomain.io.structure import AtomicModel, read_atomic_model
from cryodomain.model.cryosphere import CryoSphere
from cryodomain.model.losses import (
    all_pairs,
    clash_loss,
    clash_pairs_light,
    continuity_loss,
    correlation_loss,
    l2_penalty,
    weights_and_biases,
    latent_kl,
)
from cryodomain.model.segmentation import SegmentPart, uniform_centres, uniform_widths
from cryodomain.physics.ctf import compute_ctf
from cryodomain.physics.fourier import apply_fourier_filter
from cryodomain.physics.render import (
    pixel_coordinates,
    project_gaussians,
    rotate_points,
)
from cryodomain.progress import progress_bar
from cryodomain.workflows.config import Part, RunConfig, save_config
from cryodomain.workflows.data import (
    ParticleBatches,
    Preprocessor,
    batch_loader,
    check_pixel_sample,
    check_pixels,
    ctf_parameters,
    dataset_scale,
)
from cryodomain.workflows.distributed import (
    Workers,
    barrier,
    gather_in_order,
    reduce_sum,
    share,
    step_generator,
)

log = logging.getLogger(__name__)

# Per-step terms reduced across processes; "total" is recomputed from them with the betas.
STEP_TERMS = ("correlation", "latent_kl", "centres_kl", "widths_kl", "proportions_kl", "continuity", "clash", "l2")
LOSS_TERMS = ("total", "correlation", "latent_kl", "centres_kl", "widths_kl", "proportions_kl", "continuity", "clash", "l2")
# Terms that average over the images of a batch (the others do not depend on the batch).
BATCH_MEAN_TERMS = ("latent_kl", "continuity", "clash")
WEIGHTED_TERMS = ("latent_kl", "centres_kl", "widths_kl", "proportions_kl", "continuity", "clash", "l2")
# Above this many residues the full clash loss would need R^2 pairs per image: use neighbour pairs.
FULL_CLASH_MAX_RESIDUES = 3000
# Files that mark a folder as holding a run (another run is not started there without --force).
RUN_FILES = ("last.pt", "config.yaml", "metrics.csv", "checkpoints")
# Stack headers often leave the pixel size unset: 0, or mrcfile's and some programs' default 1.
UNSET_HEADER_PIXEL_SIZES = (0.0, 1.0)
PIXEL_SIZE_TOLERANCE = 0.01  # relative


# ---------------------------------------------------------------------------------------------
# Inputs and preflight
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Everything read from the user's files, checked."""

    table: ParticleTable
    structure: AtomicModel
    box: int  # after optional downsampling
    pixel_size_A: float
    dataset: ParticleBatches


def resolve_parts(config: RunConfig, structure: AtomicModel) -> list[SegmentPart]:
    """Segment parts as residue index ranges of the structure (the whole model when none are given)."""
    if not config.model.parts:
        if config.model.n_segments > structure.n_residues:
            raise input_error(
                None, "model.n_segments", f"{config.model.n_segments} segments for {structure.n_residues} residues", "use fewer segments"
            )
        return [SegmentPart(np.arange(structure.n_residues), config.model.n_segments)]
    return [_resolve_part(index, part, structure) for index, part in enumerate(config.model.parts)]


def _resolve_part(index: int, part: Part, structure: AtomicModel) -> SegmentPart:
    field = f"model.parts[{index}]"
    in_chain = structure.chain_ids == part.chain
    if not in_chain.any():
        chains = ", ".join(dict.fromkeys(structure.chain_ids.tolist()))
        raise input_error(structure.source, f"{field}.chain", f"no chain {part.chain!r} (chains: {chains})", "use one of the listed chains")
    selected = in_chain.copy()
    if part.first_residue is not None:
        selected &= structure.residue_numbers >= part.first_residue
    if part.last_residue is not None:
        selected &= structure.residue_numbers <= part.last_residue
    indices = np.flatnonzero(selected)
    if indices.size == 0:
        raise input_error(structure.source, field, f"no residues of chain {part.chain} in {part.first_residue}..{part.last_residue}", "check the residue range")
    if part.n_segments > indices.size:
        raise input_error(None, f"{field}.n_segments", f"{part.n_segments} segments for {indices.size} residues", "use fewer segments")

    def values(source, name):
        if source == "uniform" or source is None:
            return None
        value = getattr(source, name)
        return None if value is None else np.asarray(value, dtype=np.float64)

    prior = part.prior
    return SegmentPart(
        residue_indices=indices,
        n_segments=part.n_segments,
        init_centres=values(part.init, "centres"),
        init_centre_std=part.init.centre_std,
        init_widths=values(part.init, "widths"),
        init_width_std=part.init.width_std,
        init_proportions=values(part.init, "proportions"),
        init_proportion_std=part.init.proportion_std,
        # The "uniform" prior is the default start values, whatever the custom start values are.
        prior_centres=values(prior, "centres") if prior != "uniform" else uniform_centres(indices.size, part.n_segments),
        prior_centre_std=prior.centre_std if prior != "uniform" else 10.0,
        prior_widths=values(prior, "widths") if prior != "uniform" else uniform_widths(indices.size, part.n_segments),
        prior_width_std=prior.width_std if prior != "uniform" else 10.0,
        prior_proportions=values(prior, "proportions") if prior != "uniform" else np.zeros(part.n_segments),
        prior_proportion_std=prior.proportion_std if prior != "uniform" else 1.0,
    )


def load_training_data(particles: str | Path, structure_path: str | Path, config: RunConfig, downsample_box: int | None = None) -> TrainingData:
    """Read and check particles and structure; logs one summary block."""
    table = read_particles(particles, datadir=config.data.datadir)
    structure = read_atomic_model(structure_path)
    source = Path(particles).name
    if len(table) == 0:
        raise input_error(particles, None, "holds no particles", "check the file")
    boxes = np.unique(table.image_size)
    if boxes.size > 1:
        raise input_error(particles, "rlnImageSize", f"optics groups have different boxes {boxes.tolist()}", "train on one box size (re-extract or split the star file)")
    pixel_sizes = np.unique(np.round(table.pixel_size_A, 4))
    if pixel_sizes.size > 1:
        raise input_error(particles, "rlnImagePixelSize", f"optics groups have different pixel sizes {pixel_sizes.tolist()}", "train on one pixel size")
    dataset = ParticleBatches(table, box=downsample_box)
    height, width = dataset.images.image_shape
    if height != width:
        raise input_error(particles, "images", f"images are {width} x {height} pixels, not square", "re-extract square particles")
    box = int(boxes[0])
    if height != box:
        raise input_error(particles, "rlnImageSize", f"metadata says {box} px but the stack holds {height} px images", "fix rlnImageSize in the optics table")
    pixel_size = float(pixel_sizes[0])
    if downsample_box is not None:
        if downsample_box > box or downsample_box < 16:
            raise input_error(None, "--downsample", f"{downsample_box} px is not between 16 and the box {box}", "pick a smaller box")
        pixel_size = pixel_size * box / downsample_box
        box = downsample_box
    if config.optim.batch_size > len(table):
        raise input_error(None, "optim.batch_size", f"{config.optim.batch_size} is larger than the {len(table)} particles", "use a smaller batch")
    _check_header_pixel_sizes(particles, table, dataset)
    check_pixel_sample(dataset, config.data.normalization_sample, config.optim.seed)
    resolve_parts(config, structure)  # the segmentation's chains and ranges exist in the model

    half_width = box // 2 * pixel_size
    radius = np.linalg.norm(structure.coords, axis=1)
    outside = int((np.abs(structure.coords[:, :2]).max(axis=1) > half_width - config.model.sigma_A).sum())
    centroid = structure.coords.mean(axis=0)
    lines = [
        f"particles      {len(table)} from {source} ({len(table.optics_group_names)} optics group(s))",
        f"images         {box} x {box} px at {pixel_size:.4g} Å/px (box {2 * half_width:.0f} Å)",
        f"structure      {structure.n_residues} residues, {structure.n_atoms} atoms from {Path(structure_path).name}",
        f"model extent   {radius.max():.1f} Å from the box centre; residue centroid at ({centroid[0]:.1f}, {centroid[1]:.1f}, {centroid[2]:.1f}) Å",
    ]
    log.info("preflight:\n  " + "\n  ".join(lines))
    if np.linalg.norm(centroid) > 0.25 * half_width:
        raise input_error(
            structure_path,
            "coordinates",
            f"the model is not in the box-centred frame ({outside} residues outside the {2 * half_width:.0f} Å box, centroid {np.linalg.norm(centroid):.0f} Å from the origin)",
            "run `cryodomain center MODEL CONSENSUS_MAP -o DIR` and train on the centred model",
        )
    if outside:
        raise input_error(
            structure_path,
            "coordinates",
            f"{outside} residues lie outside the {2 * half_width:.0f} Å box (the model is centred but larger than the box)",
            "use particles extracted in a larger box, or a model of the part inside the box",
        )
    return TrainingData(table, structure, box, pixel_size, dataset)


def _check_header_pixel_sizes(particles: str | Path, table: ParticleTable, dataset: ParticleBatches) -> None:
    """The pixel size written in the stack headers (when set) must agree with the metadata's."""
    header = dataset.images.header_pixel_size_A
    is_set = ~np.isin(np.round(header, 6), UNSET_HEADER_PIXEL_SIZES)
    disagree = is_set & (np.abs(header - table.pixel_size_A) > PIXEL_SIZE_TOLERANCE * table.pixel_size_A)
    if disagree.any():
        row = int(np.flatnonzero(disagree)[0])
        raise input_error(
            table.image_paths[row],
            "pixel size",
            f"the stack header says {header[row]:.4g} Å/px but {Path(particles).name} says {table.pixel_size_A[row]:.4g} Å/px",
            "correct the pixel size in the particle file (or in the stack header) so both describe the images",
        )


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


@dataclass
class StepContext:
    """Constants of the forward model, built once per run on the training device."""

    preprocess: Preprocessor
    grid: torch.Tensor  # (N,) pixel coordinates, Å
    sigma_A: float
    continuity_pairs: torch.Tensor  # (P, 2)
    clash_pairs: torch.Tensor | None  # (Q, 2)
    clash_cutoff_A: float
    n_pixels: int
    # bfloat16 autocast for the encoder and decoder MLPs on CUDA; rendering, CTF and losses stay float32.
    mixed_precision: bool = False


def build_context(model: CryoSphere, data: TrainingData, config: RunConfig, scale: float, device: torch.device) -> StepContext:
    preprocess = Preprocessor.build(
        data.box,
        data.pixel_size_A,
        scale,
        lowpass_A=config.data.lowpass_A,
        mask_radius_fraction=config.data.mask_radius_fraction,
        invert_contrast=config.data.invert_contrast,
        device=device,
    )
    base = model.base_coords
    continuity = torch.as_tensor(data.structure.consecutive_pairs(), device=device, dtype=torch.long)
    mode = config.loss.clash_mode
    if mode == "full" and data.structure.n_residues > FULL_CLASH_MAX_RESIDUES:
        log.info("clash loss: %d residues is above %d, using neighbour pairs (light) instead of all pairs", data.structure.n_residues, FULL_CLASH_MAX_RESIDUES)
        mode = "light"
    clash_pairs = None
    if mode == "full":
        clash_pairs = all_pairs(data.structure.n_residues, device=device)
    elif mode == "light":
        clash_pairs = clash_pairs_light(base).to(device)
    return StepContext(
        preprocess=preprocess,
        grid=pixel_coordinates(data.box, data.pixel_size_A, device=device),
        sigma_A=config.model.sigma_A,
        continuity_pairs=continuity,
        clash_pairs=clash_pairs,
        clash_cutoff_A=config.loss.clash_cutoff_A,
        n_pixels=data.box * data.box,
        mixed_precision=config.optim.mixed_precision and device.type == "cuda",
    )


def render(model_coords: torch.Tensor, amplitudes: torch.Tensor, rotations: torch.Tensor, ctf: torch.Tensor, context: StepContext) -> torch.Tensor:
    """Model images ``(B, N, N)``: pose, projection and CTF (and the data's low-pass and mask)."""
    view = rotate_points(rotations, model_coords)
    projections = project_gaussians(view, amplitudes, context.sigma_A, context.grid)
    fourier_filter = ctf if context.preprocess.lowpass is None else ctf * context.preprocess.lowpass
    images = apply_fourier_filter(projections, fourier_filter)
    if context.preprocess.mask is not None:
        images = images * context.preprocess.mask
    return images


def weighted_total(values: dict[str, float], betas: dict[str, float], n_pixels: int) -> float:
    """The total loss from the (batch-mean) terms: correlation + sum of beta * term (KL terms / P)."""
    total = values["correlation"]
    for name in WEIGHTED_TERMS:
        total += betas[name] * values[name] / (n_pixels if name.endswith("_kl") else 1.0)
    return total


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
        model: the model (its buffers and regularised parameters).
        batch: a batch from :class:`ParticleBatches`.
        table: the particle table (CTF parameters).
        context: constants of the forward model.
        betas: the weight of every regulariser at this epoch.
        noise: ``(B, D)`` latent and ``(3, B, K)`` segmentation standard normal draws (drawn from
            the global RNG when None).
        batch_weight: factor on the batch-averaged terms in ``total``: a process holding ``b`` of
            the ``G`` images of a global batch among ``W`` processes uses ``b W / G``, so that
            DDP's gradient average equals the gradient of the global batch mean.
        forward: the module to call for the pass (the DDP wrapper of ``model``, or ``model``).
        l2_gradient: differentiate the L2 term through autograd. The training loop passes False
            and lets Adam's ``weight_decay`` add its gradient (:func:`set_l2_weight`): the same
            update without squaring the encoder's weights and back again every step (a fifth of
            the step at box 128).
    """
    device = context.grid.device
    images = batch["images"].to(device, non_blocking=True)
    rotations = batch["rotations"].to(device, non_blocking=True)
    shifts = batch["shifts_A"].to(device, non_blocking=True)
    encoder_input, target = context.preprocess(images, shifts)
    latent_noise, segmentation_noise = noise if noise is not None else (None, None)
    mean, std, deformation = (forward or model)(
        encoder_input, batch["index"].to(device), latent_noise, segmentation_noise, context.mixed_precision
    )
    ctf = compute_ctf(context.preprocess.freqs, ctf_parameters(table, batch["index"].numpy(), device=device))
    predicted = render(deformation.coords, model.amplitudes, rotations, ctf, context)

    segmentation_kl = model.segmentation.kl_divergence()
    terms = {
        "correlation": correlation_loss(predicted, target),
        "latent_kl": latent_kl(mean, std),
        "centres_kl": segmentation_kl["centres"],
        "widths_kl": segmentation_kl["widths"],
        "proportions_kl": segmentation_kl["proportions"],
        "continuity": continuity_loss(deformation.coords, model.base_coords, context.continuity_pairs),
        "clash": clash_loss(deformation.coords, context.clash_pairs, context.clash_cutoff_A)
        if context.clash_pairs is not None
        else torch.zeros((), device=device),
    }
    with torch.set_grad_enabled(l2_gradient and torch.is_grad_enabled()):
        terms["l2"] = l2_penalty(model.network_modules())
    kl_weight = 1.0 / context.n_pixels  # METHOD.md: the KL terms are divided by the number of pixels
    total = batch_weight * terms["correlation"]
    for name in WEIGHTED_TERMS:
        weight = betas[name] * (kl_weight if name.endswith("_kl") else 1.0)
        if name in BATCH_MEAN_TERMS:
            weight = weight * batch_weight
        total = total + weight * terms[name]
    terms["total"] = total
    return terms


# ---------------------------------------------------------------------------------------------
# Checkpoints and the loop
# ---------------------------------------------------------------------------------------------


def build_model(data: TrainingData, config: RunConfig) -> CryoSphere:
    return CryoSphere(
        data.structure.coords,
        data.structure.amplitudes,
        resolve_parts(config, data.structure),
        data.box,
        len(data.table),
        latent_dim=config.model.latent_dim,
        encoder_hidden=config.model.encoder_hidden,
        decoder_hidden=config.model.decoder_hidden,
        tau=config.model.tau,
        amortized=config.model.amortized,
    )


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
            {"params": list(model.segmentation.parameters()), "lr": config.optim.segmentation_lr, "name": "segmentation"},
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


def set_learning_rates(optimizer: torch.optim.Optimizer, config: RunConfig) -> None:
    """The configuration's learning rates on every group (the segmentation has its own)."""
    for group in optimizer.param_groups:
        group["lr"] = config.optim.segmentation_lr if group["name"] == "segmentation" else config.optim.lr


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise input_error(None, "--device", "cuda was requested but no CUDA device is available", "use --device cpu or auto")
    return torch.device(name)


def save_checkpoint(
    run_dir: Path, epoch: int, model: CryoSphere, optimizer: torch.optim.Optimizer, extra: dict, *, position: dict | None = None
) -> Path:
    """Write ``checkpoints/epoch_NNNN.pt`` and ``last.pt`` atomically (and flushed to disk).

    Args:
        run_dir: the run folder.
        epoch: number of completed epochs.
        model, optimizer: their state is saved with the torch (and CUDA) random state.
        extra: more entries of the checkpoint (the run's inputs and scale).
        position: for a stop inside epoch ``epoch + 1``: ``{"step": steps done in it, "sums": loss
            sums, "n_seen": images seen, "seconds": time spent}``; then only ``last.pt`` is written.

    Returns:
        The epoch file (``last.pt`` for a mid-epoch checkpoint).

    Raises:
        InputError: the disk is full (or not writable); the previous ``last.pt`` stays intact.
    """
    state = {
        "epoch": epoch,
        "position": position,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        **extra,
    }
    # Serialise once in memory: both files get the same bytes, and a full disk surfaces as a plain
    # OSError of the write (torch.save to a file reports it as an opaque RuntimeError).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    targets = [run_dir / "last.pt"] if position is not None else [run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt", run_dir / "last.pt"]
    for target in targets:
        try:
            with atomic_output(target, fsync=True) as tmp:
                tmp.write_bytes(payload)
        except InputError as error:
            cause = error.__cause__
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(error)
            raise input_error(
                target, None, f"checkpoint not saved ({reason})",
                f"training stopped; {run_dir / 'last.pt'} still holds the previous checkpoint: free disk space and rerun with --resume",
            ) from cause
    return targets[0]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError when it is not one."""
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise input_error(
            path, None, f"cannot be read as a checkpoint ({str(error).splitlines()[0] if str(error) else type(error).__name__})",
            "use another checkpoint of the run (checkpoints/epoch_NNNN.pt), or start over with --force",
        ) from error


def check_run_dir(run_dir: str | Path, *, resume: bool, force: bool) -> None:
    """Refuse to start a new run in a folder that holds another one, unless resuming or forced.

    Raises:
        InputError: ``run_dir`` is a file, or holds a run and neither flag is given.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise input_error(run_dir, "-o", "is a file, not a folder", "choose a folder for the run")
    if resume or force:
        return
    held = [name for name in RUN_FILES if (run_dir / name).exists()]
    if held:
        raise input_error(
            run_dir, None, f"already holds a run ({', '.join(held)})",
            "pass --resume to continue it, --force to start over, or choose another -o",
        )


def clear_run(run_dir: str | Path) -> None:
    """Delete the outputs of a previous run in ``run_dir`` (``--force``); other files stay."""
    run_dir = Path(run_dir)
    for name in ("last.pt", "metrics.csv", "config.yaml"):
        (run_dir / name).unlink(missing_ok=True)
    for stale in sorted((run_dir / "checkpoints").glob("epoch_*.pt")):
        stale.unlink()
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def _check_resumable(state: dict, inputs: dict, path: Path) -> None:
    """The checkpoint must come from a run with the same model and data shape as this one."""
    saved_model = state["config"]["model"]
    for key, value in inputs["config"]["model"].items():
        if saved_model.get(key) != value:
            raise input_error(
                path, f"model.{key}", f"the run was trained with {saved_model.get(key)!r}, this configuration says {value!r}",
                "resume with the run's own config.yaml, or start a new run (another -o, or --force)",
            )
    if state.get("position") is not None:
        # The saved position inside the epoch counts batches of the run's own size and order.
        for key in ("batch_size", "seed"):
            saved, now = state["config"]["optim"][key], inputs["config"]["optim"][key]
            if saved != now:
                raise input_error(
                    path, f"optim.{key}", f"the run stopped inside an epoch with {saved}, this configuration says {now}",
                    "resume with the run's own config.yaml",
                )
    for key, what in (("n_particles", "particles"), ("n_residues", "residues"), ("box", "box (px)")):
        if key in state and state[key] != inputs[key]:
            raise input_error(
                path, key, f"the run was trained on {state[key]} {what}, these inputs have {inputs[key]}",
                "resume with the run's own particles and structure, or start a new run (another -o, or --force)",
            )


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving its progress in ``last.pt``.

    Attributes:
        signal_number: the signal received (the command exits with 128 + it).
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class StopSignals:
    """Within ``with``: SIGINT and SIGTERM only set :attr:`received`, so that the training loop
    finishes its step and saves a checkpoint. A second SIGINT interrupts at once (the files are
    still safe: every write is atomic). Outside the main thread nothing is installed."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signal_number: int, frame) -> None:
        if self.received is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal_number
        log.info("received %s: stopping after this step, saving a checkpoint", signal.Signals(signal_number).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def _diverged(run_dir: Path, values: dict[str, float], epoch: int, step: int, saved_epoch: int | None) -> InputError:
    """The error for a non-finite loss: names the term (a weighted one before ``total``) and the step."""
    bad = [name for name in LOSS_TERMS if name != "total" and not math.isfinite(values[name])] or ["total"]
    kept = f"the last good checkpoint is {run_dir / 'last.pt'} (epoch {saved_epoch})" if saved_epoch is not None else "no checkpoint was written yet"
    return input_error(
        run_dir, f"loss term {bad[0]}", f"is {values[bad[0]]} at epoch {epoch + 1}, step {step + 1}",
        f"training stopped and {kept}; lower optim.lr or set optim.grad_clip in a --config file, then rerun with --resume",
    )


def betas_at(config: RunConfig, epoch: int) -> dict[str, float]:
    epochs = config.optim.epochs
    return {name: getattr(config.loss, name).build()(epoch, epochs) for name in WEIGHTED_TERMS}


class MetricsLog:
    """``metrics.csv``: one row per epoch with the epoch mean of every loss term and the betas."""

    def __init__(self, path: Path):
        self.path = path
        self.columns = ["epoch", *LOSS_TERMS, *(f"beta_{n}" for n in WEIGHTED_TERMS), "seconds"]

    def truncate(self, last_epoch: int) -> None:
        """Keep rows up to ``last_epoch`` (a resumed run rewrites what came after its checkpoint)."""
        rows = self.read()
        rows = [row for row in rows if int(row["epoch"]) <= last_epoch]
        self._write(rows)

    def read(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def append(self, row: dict[str, float]) -> None:
        self._write(self.read() + [{key: row[key] for key in self.columns}])

    def _write(self, rows: list[dict]) -> None:
        with atomic_output(self.path) as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(rows)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def train(
    particles: str | Path,
    structure_path: str | Path,
    run_dir: str | Path,
    config: RunConfig,
    *,
    resume: bool = False,
    downsample_box: int | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    data: TrainingData | None = None,
    workers: Workers = Workers(),
) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the path of the last checkpoint.

    Every epoch ends with a checkpoint. SIGINT/SIGTERM finish the current step, save ``last.pt``
    with the position inside the epoch and raise :class:`TrainingInterrupted`; ``resume`` then
    continues from that step, so an interrupted and resumed run ends with the same bits as an
    uninterrupted one (CPU). A run killed outright resumes from its last complete epoch, with the
    same result. ``stop_after_epoch`` ends the run early after that epoch (its checkpoint
    written), as an interruption would.

    Args:
        particles, structure_path: the inputs (see :func:`load_training_data`).
        run_dir: the run folder.
        config: the run's configuration.
        resume: continue from ``run_dir/last.pt`` when it exists (else start at the first epoch).
        downsample_box: Fourier-crop the images to this box.
        progress: show progress bars.
        stop_after_epoch: stop after this epoch.
        data: the inputs already read and checked by :func:`load_training_data` (else read here).
        workers: this process among the DDP processes (see :mod:`cryodomain.workflows.distributed`);
            only the main process writes.

    Raises:
        InputError: bad inputs, a checkpoint of another run, a non-finite loss (naming the term
            and step; the last good checkpoint is kept), or a full disk.
        TrainingInterrupted: on SIGINT/SIGTERM, after the checkpoint is written.
    """
    run_dir = Path(run_dir)
    keep_freed_memory()
    torch.manual_seed(config.optim.seed)
    np.random.seed(config.optim.seed % 2**32)
    device = resolve_device(config.optim.device)
    if device.type == "cuda" and workers.distributed:
        device = torch.device("cuda", workers.local_rank)
    if data is None:
        data = load_training_data(particles, structure_path, config, downsample_box)
    model = build_model(data, config).to(device)
    optimizer = build_optimizer(model, config)
    forward: torch.nn.Module = model
    if workers.distributed:
        forward = DistributedDataParallel(model, device_ids=[workers.local_rank] if device.type == "cuda" else None)
    inputs = {
        "particles": str(Path(particles).resolve()),
        "structure": str(Path(structure_path).resolve()),
        "datadir": config.data.datadir,
        "box": data.box,
        "pixel_size_A": data.pixel_size_A,
        "downsample_box": downsample_box,
        "n_particles": len(data.table),
        "n_residues": data.structure.n_residues,
        "config": config.model_dump(mode="json"),
    }

    start_epoch, position, saved_rng = 0, None, None
    saved_epoch: int | None = None
    scale = None
    if resume and (run_dir / "last.pt").exists():
        state = load_checkpoint(run_dir / "last.pt", device)
        _check_resumable(state, inputs, run_dir / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        # The configuration's learning rates win (lowering them is the cure for a diverged run).
        set_learning_rates(optimizer, config)
        start_epoch = saved_epoch = state["epoch"]
        position = state.get("position")
        scale = state["scale"]
        saved_rng = (state["torch_rng"], state.get("cuda_rng"))
        if position is None:
            _set_rng_state(saved_rng)
        where = f"epoch {start_epoch}" + (f" and step {position['step']} of epoch {start_epoch + 1}" if position else "")
        log.info("resuming after %s from %s", where, run_dir / "last.pt")
    elif resume:
        log.info("no checkpoint in %s yet: starting from the first epoch", run_dir)
    if scale is None:
        scale = dataset_scale(data.dataset, config.data.normalization_sample, config.optim.seed)
    inputs["scale"] = scale
    context = build_context(model, data, config, scale, device)

    writer = None
    metrics = MetricsLog(run_dir / "metrics.csv")
    if workers.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Temporaries of a killed process never hold anything that a final file does not.
        for folder in (run_dir, run_dir / "checkpoints"):
            if folder.is_dir():
                remove_stale_temporaries(folder)
        save_config(config, run_dir / "config.yaml")
        metrics.truncate(start_epoch)
        writer = _tensorboard(run_dir)
    n_images, batch_size = len(data.table), config.optim.batch_size
    latent_dim, n_segments = config.model.latent_dim, model.segmentation.n_segments
    last_checkpoint = run_dir / "last.pt"
    epochs = config.optim.epochs
    # The L2 gradient comes from Adam's weight decay, unless a gradient clip must bound it too.
    l2_by_weight_decay = config.optim.grad_clip is None
    try:
        with StopSignals() as stop:
            for epoch in range(start_epoch, epochs):
                resumed_inside = position is not None and epoch == start_epoch
                first_step = position["step"] if resumed_inside else 0
                started = time.perf_counter() - (position["seconds"] if resumed_inside else 0.0)
                betas = betas_at(config, epoch)
                # (set to 0 otherwise: a checkpoint's optimizer state may carry a weight decay)
                set_l2_weight(optimizer, betas["l2"] if l2_by_weight_decay else 0.0)
                sums = dict(position["sums"]) if resumed_inside else {name: 0.0 for name in LOSS_TERMS}
                n_seen = position["n_seen"] if resumed_inside else 0
                loader = batch_loader(
                    data.dataset,
                    config.optim.batch_size,
                    shuffle=True,
                    seed=config.optim.seed,
                    epoch=epoch,
                    num_workers=config.optim.num_workers,
                    pin_memory=device.type == "cuda",
                    start_batch=first_step,
                    workers=workers,
                )
                n_steps = first_step + len(loader)
                # Creating the iterator draws from the torch RNG (DataLoader's base seed); a run
                # resumed inside an epoch restores its RNG after that draw, as it was after the step.
                batches = iter(loader)
                if resumed_inside:
                    _set_rng_state(saved_rng)
                bar = progress_bar(batches, f"epoch {epoch + 1}/{epochs}", enabled=progress and workers.is_main, total=len(loader))
                model.train()
                for step, batch in enumerate(bar, start=first_step):
                    check_pixels(batch, data.table)
                    # The step's noise is drawn for the whole global batch and sliced: the same for
                    # any number of processes.
                    global_size = min(batch_size, n_images - step * batch_size)
                    rows = share(global_size, workers)
                    generator = step_generator(config.optim.seed, epoch, step, device)
                    noise = (
                        torch.randn((global_size, latent_dim), generator=generator, device=device)[rows],
                        torch.randn((3, global_size, n_segments), generator=generator, device=device)[:, rows],
                    )
                    size = len(batch["index"])
                    terms = compute_losses(
                        model, batch, data.table, context, betas, noise=noise, batch_weight=size * workers.world_size / global_size,
                        forward=forward, l2_gradient=not l2_by_weight_decay,
                    )
                    # One device sync (and one all-reduce across processes) per step for all the terms.
                    local = torch.stack([terms[name].detach().double() * size for name in STEP_TERMS])
                    flags = torch.tensor([size, stop.received is not None], dtype=torch.float64, device=local.device)
                    reduced = reduce_sum(torch.cat([local, flags]), workers).tolist()
                    step_images, stop_requested = reduced[-2], reduced[-1] > 0
                    values = dict(zip(STEP_TERMS, (value / step_images for value in reduced[: len(STEP_TERMS)])))
                    values["total"] = weighted_total(values, betas, context.n_pixels)
                    if not all(math.isfinite(value) for value in values.values()):
                        raise _diverged(run_dir, values, epoch, step, saved_epoch)
                    optimizer.zero_grad(set_to_none=True)
                    terms["total"].backward()
                    if config.optim.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                    optimizer.step()
                    n_seen += step_images
                    for name in LOSS_TERMS:
                        sums[name] += values[name] * step_images
                    bar.set_postfix(loss=f"{sums['total'] / n_seen:.5f}")
                    if stop_requested and step + 1 < n_steps:
                        mid_epoch = {"step": step + 1, "sums": sums, "n_seen": n_seen, "seconds": time.perf_counter() - started}
                        if workers.is_main:
                            save_checkpoint(run_dir, epoch, model, optimizer, inputs, position=mid_epoch)
                        barrier(workers)
                        raise _interrupted(stop.received or signal.SIGTERM, run_dir, f"step {step + 1} of epoch {epoch + 1}")
                row = {"epoch": epoch + 1, **{name: sums[name] / n_seen for name in LOSS_TERMS}}
                row.update({f"beta_{name}": value for name, value in betas.items()})
                row["seconds"] = round(time.perf_counter() - started, 3)
                if workers.is_main:
                    metrics.append(row)
                    if writer is not None:
                        for name in LOSS_TERMS:
                            writer.add_scalar(f"loss/{name}", row[name], epoch + 1)
                    log.info("epoch %d/%d  loss %.6f  correlation %.6f  (%.1f s)", epoch + 1, epochs, row["total"], row["correlation"], row["seconds"])
                    save_checkpoint(run_dir, epoch + 1, model, optimizer, inputs)
                barrier(workers)
                saved_epoch = epoch + 1
                if stop_requested and epoch + 1 < epochs:
                    raise _interrupted(stop.received or signal.SIGTERM, run_dir, f"epoch {epoch + 1}")
                if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                    break
    finally:
        if writer is not None:
            writer.close()
    return last_checkpoint


def _set_rng_state(saved: tuple[torch.Tensor, list | None]) -> None:
    torch_rng, cuda_rng = saved
    # RNG states must be CPU byte tensors; torch.load(map_location="cuda") moves them to the GPU.
    torch.set_rng_state(torch_rng.cpu())
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda_rng])


def _interrupted(signal_number: int, run_dir: Path, where: str) -> TrainingInterrupted:
    name = signal.Signals(signal_number).name
    return TrainingInterrupted(
        f"stopped by {name} after {where}; progress saved in {run_dir / 'last.pt'}: continue with --resume", signal_number
    )


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[CryoSphere, dict, TrainingData]:
    """Rebuild a trained model, its saved state and its data from a run directory."""
    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint is not None else run_dir / "last.pt"
    if not path.exists():
        raise input_error(path, None, "no checkpoint found", "train first, or pass --checkpoint")
    state = load_checkpoint(path, device)
    config = RunConfig.model_validate(state["config"])
    data = load_training_data(state["particles"], state["structure"], config, state.get("downsample_box"))
    model = build_model(data, config).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state, data


def latent_means(
    model: CryoSphere, data: TrainingData, state: dict, batch_size: int = 256, progress: bool = True, workers: Workers = Workers()
) -> np.ndarray:
    """Latent mean of every image, in particle order: ``(N, D)`` float32.

    With several processes (torchrun), each encodes a contiguous share of the particles and every
    process gets the whole array back, in particle order.
    """
    config = RunConfig.model_validate(state["config"])
    device = model.base_coords.device
    context_pre = Preprocessor.build(
        data.box,
        data.pixel_size_A,
        state["scale"],
        lowpass_A=config.data.lowpass_A,
        mask_radius_fraction=config.data.mask_radius_fraction,
        invert_contrast=config.data.invert_contrast,
        device=device,
    )
    mine = share(len(data.table), workers)
    out = np.empty((mine.stop - mine.start, config.model.latent_dim), dtype=np.float32)
    starts = range(mine.start, mine.stop, batch_size)
    with torch.no_grad():
        for start in progress_bar(starts, "latents", enabled=progress and workers.is_main):
            batch = data.dataset[list(range(start, min(start + batch_size, mine.stop)))]
            encoder_input, _ = context_pre(batch["images"].to(device), batch["shifts_A"].to(device))
            mean, _ = model.encode(encoder_input, batch["index"].to(device))
            out[start - mine.start : start - mine.start + len(mean)] = mean.cpu().numpy()
    return gather_in_order(out, workers)
