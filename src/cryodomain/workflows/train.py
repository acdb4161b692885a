"""Training a cryoSPHERE model on particle images with known poses and CTF: the loop.

:func:`train_step` is one optimisation step (the benchmarks time it), :func:`train_epoch` one pass
over the data, :func:`train` a whole run with exact resume. The pieces it composes: the inputs and
preflight (:mod:`~cryodomain.workflows.inputs`), the objective (:mod:`~cryodomain.workflows.objective`),
the optimizer (:mod:`~cryodomain.workflows.optimization`) and the run folder
(:mod:`~cryodomain.workflows.run_folder`). docs/method.md, "Optimisation".
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from cryodomain.allocator import keep_freed_memory
from cryodomain.errors import InputError, input_error
from cryodomain.model.cryosphere import CryoSphere
from cryodomain.progress import Progress
from cryodomain.workflows.config import RunConfig, with_epochs_for
from cryodomain.workflows.conventions_check import check_conventions
from cryodomain.workflows.data import batch_bounds, batch_loader, check_pixels, dataset_scale
from cryodomain.workflows.distributed import Processes, barrier, reduce_sum, resolve_device, share, step_generator
from cryodomain.workflows.inputs import TrainingData, build_model, load_training_data
from cryodomain.workflows.objective import LOGGED_VALUES, TERM_NAMES, StepContext, betas_at, build_context, compute_losses, context_at, weighted_total
from cryodomain.workflows.optimization import build_optimizer, set_l2_weight, set_learning_rates
from cryodomain.workflows.run_folder import RunFolder, check_resumable, collect_log, keeps_epoch, load_checkpoint
from cryodomain.workflows.segment_search import describe, found_config, needs_search, search_config
from cryodomain.workflows.signals import StopSignals, interrupted

log = logging.getLogger(__name__)


class NonFiniteLoss(Exception):
    """A loss term was NaN or infinite at a step (``train`` turns it into an InputError)."""

    def __init__(self, values: dict[str, float], step: int):
        super().__init__(values, step)
        self.values, self.step = values, step


@dataclass
class Trainer:
    """What one optimisation step needs: the model, its optimizer and the forward model's constants.

    Attributes:
        model: the model being trained.
        optimizer: its optimizer (:func:`~cryodomain.workflows.optimization.build_optimizer`).
        context: constants of the forward model and the loss.
        data: the run's inputs.
        config: the run's configuration.
        forward: the module called for the pass (the DDP wrapper of ``model``, or ``model``).
        processes: this process among the training processes.
    """

    model: CryoSphere
    optimizer: torch.optim.Optimizer
    context: StepContext
    data: TrainingData
    config: RunConfig
    forward: torch.nn.Module
    processes: Processes = Processes()

    @classmethod
    def build(cls, data: TrainingData, config: RunConfig, scale: float, device: torch.device, processes: Processes = Processes()) -> Trainer:
        """A fresh model and optimizer for ``data`` (wrapped in DDP when there are several processes)."""
        model = build_model(data, config).to(device)
        optimizer = build_optimizer(model, config)
        forward: torch.nn.Module = model
        if processes.distributed:
            forward = DistributedDataParallel(model, device_ids=[processes.local_rank] if device.type == "cuda" else None)
        return cls(model, optimizer, build_context(model, data, config, scale, device), data, config, forward, processes)

    def __post_init__(self) -> None:
        # The context of the end of training; train_epoch swaps in each epoch's low-pass.
        self.base_context = self.context
        # Where each global batch of an epoch starts (the last one may hold up to 1.5 batches).
        self.batch_bounds = batch_bounds(len(self.data.table), self.config.optim.batch_size)

    @property
    def l2_by_weight_decay(self) -> bool:
        """The L2 gradient comes from Adam's weight decay, unless a gradient clip must bound it too."""
        return self.config.optim.grad_clip is None


def train_step(
    trainer: Trainer, batch: dict[str, torch.Tensor], epoch: int, step: int, betas: dict[str, float], *, stop: StopSignals | None = None
) -> tuple[dict[str, float], float, bool]:
    """One optimisation step on this process's share of global batch ``step`` of ``epoch``.

    The step's noise is drawn for the whole global batch and sliced, so any number of processes
    follows the same trajectory. All terms are reduced across processes in one all-reduce.

    Args:
        trainer: the model, optimizer and constants.
        batch: this process's share of the global batch (:class:`ParticleBatches` item).
        epoch, step: 0-based position (seeds the step's noise).
        betas: the loss weights of this epoch.
        stop: this process's signal watch: a SIGINT/SIGTERM received by the end of the forward pass
            is shared with every process.

    Returns:
        ``(values, images, stop_requested)``: the global-batch mean of every term and the total,
        the number of images of the global batch, and whether any process asked to stop.

    Raises:
        InputError: an image with NaN/inf or blank pixels.
        NonFiniteLoss: a non-finite loss term (with the values and the step); no update is made.
    """
    config, processes = trainer.config, trainer.processes
    check_pixels(batch, trainer.data.table)
    global_size = int(trainer.batch_bounds[step + 1] - trainer.batch_bounds[step])
    rows = share(global_size, processes)
    device = trainer.context.frame.grid.device
    generator = step_generator(config.optim.seed, epoch, step, device)
    noise = (
        torch.randn((global_size, config.model.latent_dim), generator=generator, device=device)[rows],
        torch.randn((3, global_size, trainer.model.segmentation.n_segments), generator=generator, device=device)[:, rows],
    )
    size = len(batch["index"])
    terms = compute_losses(
        trainer.model,
        batch,
        trainer.data.table,
        trainer.context,
        betas,
        noise=noise,
        batch_weight=size * processes.world_size / global_size,
        forward=trainer.forward,
        l2_gradient=not trainer.l2_by_weight_decay,
    )
    # One device sync (and one all-reduce across processes) per step for all the terms.
    local = torch.stack([terms[name].detach().double() * size for name in TERM_NAMES])
    stop_received = stop is not None and stop.received is not None
    flags = torch.tensor([size, stop_received], dtype=torch.float64, device=local.device)
    reduced = reduce_sum(torch.cat([local, flags]), processes).tolist()
    step_images, stop_requested = reduced[-2], reduced[-1] > 0
    values = dict(zip(TERM_NAMES, (value / step_images for value in reduced[: len(TERM_NAMES)])))
    values["total"] = weighted_total(values, betas, trainer.context.n_pixels)
    if not all(math.isfinite(value) for value in values.values()):
        raise NonFiniteLoss(values, step)
    trainer.optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    if config.optim.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), config.optim.grad_clip)
    trainer.optimizer.step()
    return values, step_images, stop_requested


@dataclass
class EpochProgress:
    """Where a run stands inside an epoch (saved in a mid-epoch checkpoint)."""

    step: int = 0
    sums: dict[str, float] | None = None  # image-weighted sums of every logged value
    n_seen: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"step": self.step, "sums": dict(self.sums or {}), "n_seen": self.n_seen, "seconds": self.seconds}


def train_epoch(
    trainer: Trainer, epoch: int, stop: StopSignals, *, start: EpochProgress | None = None, rng_after_loader=None, progress: bool = True
) -> tuple[dict[str, float], EpochProgress | None, bool]:
    """Steps over the batches of ``epoch`` (from ``start.step`` when resuming inside it).

    Returns:
        ``(means, stopped_at, stop_requested)``: the epoch mean of every logged value (and the
        betas and seconds), where the run stopped when a process received a signal before the last
        step (else None), and whether any process asked to stop during the last step.
    """
    config, processes = trainer.config, trainer.processes
    trainer.context = context_at(trainer.base_context, config, epoch)
    start = start or EpochProgress(sums={name: 0.0 for name in LOGGED_VALUES})
    started = time.perf_counter() - start.seconds
    betas = betas_at(config, epoch)
    # (set to 0 otherwise: a checkpoint's optimizer state may carry a weight decay)
    set_l2_weight(trainer.optimizer, betas["l2"] if trainer.l2_by_weight_decay else 0.0)
    sums, n_seen = dict(start.sums), start.n_seen
    device = trainer.context.frame.grid.device
    loader = batch_loader(
        trainer.data.dataset,
        config.optim.batch_size,
        shuffle=True,
        seed=config.optim.seed,
        epoch=epoch,
        num_workers=config.optim.num_workers,
        pin_memory=device.type == "cuda",
        start_batch=start.step,
        processes=processes,
    )
    n_steps = start.step + len(loader)
    # Creating the iterator draws from the torch RNG (DataLoader's base seed); a run resumed inside
    # an epoch restores its RNG after that draw, as it was after the step.
    batches = iter(loader)
    if rng_after_loader is not None:
        set_rng_state(rng_after_loader)
    description = f"epoch {epoch + 1}/{config.optim.epochs}"
    # A bar on a terminal; in a log, a line every LOG_INTERVAL_S (the epoch's own line closes it).
    shown = Progress(description, n_steps, initial=start.step, items="images", enabled=progress and processes.is_main)
    trainer.model.train()
    stop_requested = False
    try:
        for step, batch in enumerate(batches, start=start.step):
            set_learning_rates(trainer.optimizer, config, epoch + step / n_steps)
            values, step_images, stop_requested = train_step(trainer, batch, epoch, step, betas, stop=stop)
            n_seen += step_images
            for name in LOGGED_VALUES:
                sums[name] += values[name] * step_images
            shown.advance(step_images, f"loss {sums['total'] / n_seen:.5f}")
            if stop_requested and step + 1 < n_steps:
                return {}, EpochProgress(step + 1, sums, n_seen, time.perf_counter() - started), True
    finally:
        shown.close()
    means = {name: sums[name] / n_seen for name in LOGGED_VALUES}
    means.update({f"beta_{name}": value for name, value in betas.items()})
    means["seconds"] = round(time.perf_counter() - started, 3)
    if processes.is_main:
        # The epoch's one line, bar or no bar: the steps, the rate and the epoch means.
        log.info("%s  %s  loss %.6f  correlation %.6f  (%.1f s)", description, shown.counts(), means["total"], means["correlation"], means["seconds"])
    return means, None, stop_requested


def run_inputs(particles: str | Path, structure_path: str | Path, config: RunConfig, data: TrainingData, downsample_box: int | None) -> dict:
    """The checkpoint entries naming the run's inputs (what :class:`TrainedRun` reloads)."""
    return {
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


def checkpoint_state(trainer: Trainer, epoch: int, inputs: dict, position: EpochProgress | None = None) -> dict:
    """Everything needed to resume exactly: model, optimizer, position, RNG, inputs and scale."""
    return {
        "epoch": epoch,
        "position": position.as_dict() if position is not None else None,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        **inputs,
    }


def train(
    particles: str | Path,
    structure_path: str | Path,
    run_dir: str | Path,
    config: RunConfig,
    *,
    resume: bool = False,
    force: bool = False,
    downsample_box: int | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    data: TrainingData | None = None,
    processes: Processes = Processes(),
) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the path of the last checkpoint.

    Every input is read and checked before anything is written (a bad input leaves no folder and
    ``force`` deletes nothing). Every epoch ends with ``last.pt``, every ``optim.checkpoint_every``-th
    and the final one also with ``checkpoints/epoch_NNNN.pt`` (about ten a run by default; see
    :func:`~cryodomain.workflows.run_folder.keeps_epoch`). SIGINT/SIGTERM finish the
    current step, save ``last.pt`` with the position inside the epoch and raise
    :class:`~cryodomain.workflows.signals.TrainingInterrupted`; ``resume`` then continues from that
    step, so an interrupted and resumed run ends with the same bits as an uninterrupted one (CPU).
    A run killed outright resumes from its last complete epoch, with the same result.

    Args:
        particles, structure_path: the inputs (see :func:`~cryodomain.workflows.inputs.load_training_data`).
        run_dir: the run folder (see :class:`~cryodomain.workflows.run_folder.RunFolder`).
        config: the run's configuration.
        resume: continue from ``run_dir/last.pt`` when it exists (else start at the first epoch).
        force: start over in a folder that holds another run.
        downsample_box: Fourier-crop the images to this box.
        progress: show progress: a bar on a terminal, else a logged line every 15 s inside an epoch
            (each epoch logs its own line, with the steps, images/s and losses, either way).
        stop_after_epoch: stop after this epoch (its checkpoint written), as an interruption would.
        data: the inputs already read and checked (else read here).
        processes: this process among the DDP processes; only the main process writes.

    Raises:
        InputError: bad inputs, a folder holding another run, a checkpoint of another run, a
            non-finite loss (naming the term and step; the last good checkpoint is kept), or a full disk.
        TrainingInterrupted: on SIGINT/SIGTERM, after the checkpoint is written.
    """
    folder = RunFolder(run_dir)
    # Every process checks the same inputs before anything is written, so a bad input stops all
    # of them alike (none waits for another that has failed).
    folder.check_available(resume=resume, force=force)
    with collect_log() as preflight:
        if data is None:
            data = load_training_data(particles, structure_path, config, downsample_box)
        if config.optim.epochs is None:
            config = with_epochs_for(config, len(data.table))
            log.info("optim.epochs not set: %d epochs for %d particles", config.optim.epochs, len(data.table))
        # The last check: inputs read with a wrong convention would train for hours on nothing.
        check_conventions(data, config, particles)
    barrier(processes)
    if processes.is_main and force and not resume:
        folder.clear()
    with folder.log_file(append=resume, earlier=preflight, enabled=processes.is_main):
        barrier(processes)
        # A run resumed from a main-phase checkpoint written without a search has none.
        if needs_search(config) and not (resume and folder.last.exists() and not folder.search.path.exists()):
            log.info(describe(config))
            search = folder.search
            first = _train(
                search, particles, structure_path, search_config(config, data), data, resume and search.last.exists(), downsample_box, progress, None, processes
            )
            config = found_config(config, first, data, run_device(config, processes))
        return _train(folder, particles, structure_path, config, data, resume, downsample_box, progress, stop_after_epoch, processes)


def run_device(config: RunConfig, processes: Processes) -> torch.device:
    """Where this process trains: ``optim.device``, and its own GPU under torchrun."""
    device = resolve_device(config.optim.device)
    if device.type == "cuda" and processes.distributed:
        device = torch.device("cuda", processes.local_rank)
    return device


def _train(
    folder: RunFolder,
    particles,
    structure_path,
    config: RunConfig,
    data: TrainingData,
    resume: bool,
    downsample_box,
    progress: bool,
    stop_after_epoch,
    processes: Processes,
) -> Path:
    keep_freed_memory()
    torch.manual_seed(config.optim.seed)
    device = run_device(config, processes)
    if processes.is_main:
        # Where the run trains, for train.log's reader and the report.
        name = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
        log.info("device: %s%s", name, f", {processes.world_size} processes" if processes.distributed else "")
    inputs = run_inputs(particles, structure_path, config, data, downsample_box)
    state = None
    if resume and folder.last.exists():
        state = load_checkpoint(folder.last, device)
        check_resumable(state, inputs, folder.last)
    elif resume:
        log.info("no checkpoint in %s yet: starting from the first epoch", folder.path)
    scale = state["scale"] if state is not None else dataset_scale(data.dataset, config.data.normalization_sample, config.optim.seed)
    inputs["scale"] = scale
    trainer = Trainer.build(data, config, scale, device, processes)

    start_epoch, position, saved_rng, saved_epoch = 0, None, None, None
    if state is not None:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        # The configuration's learning rates win (lowering them is the cure for a diverged run).
        set_learning_rates(trainer.optimizer, config)
        start_epoch = saved_epoch = state["epoch"]
        position = EpochProgress(**state["position"]) if state.get("position") else None
        saved_rng = (state["torch_rng"], state.get("cuda_rng"))
        if position is None:
            set_rng_state(saved_rng)
        where = f"epoch {start_epoch}" + (f" and step {position.step} of epoch {start_epoch + 1}" if position else "")
        log.info("resuming after %s from %s", where, folder.last)

    writer = None
    if processes.is_main:
        folder.prepare(config, start_epoch)
        writer = folder.tensorboard()
    epochs = config.optim.epochs
    try:
        with StopSignals() as stop:
            for epoch in range(start_epoch, epochs):
                resumed_inside = position is not None and epoch == start_epoch
                try:
                    row, stopped_at, stop_requested = train_epoch(
                        trainer,
                        epoch,
                        stop,
                        start=position if resumed_inside else None,
                        rng_after_loader=saved_rng if resumed_inside else None,
                        progress=progress,
                    )
                except NonFiniteLoss as error:
                    raise _diverged(folder, error.values, epoch, error.step, saved_epoch) from None
                if stopped_at is not None:
                    if processes.is_main:
                        folder.save_checkpoint(checkpoint_state(trainer, epoch, inputs, stopped_at), epoch, mid_epoch=True)
                    barrier(processes)
                    raise interrupted(stop.received or signal.SIGTERM, folder.last, f"step {stopped_at.step} of epoch {epoch + 1}")
                row = {"epoch": epoch + 1, **row}
                if processes.is_main:
                    folder.metrics.append(row)
                    if writer is not None:
                        for name in LOGGED_VALUES:
                            writer.add_scalar(f"loss/{name}", row[name], epoch + 1)
                    keep = keeps_epoch(epoch + 1, epochs, config.optim.checkpoint_every)
                    folder.save_checkpoint(checkpoint_state(trainer, epoch + 1, inputs), epoch + 1, keep=keep)
                barrier(processes)
                saved_epoch = epoch + 1
                if stop_requested and epoch + 1 < epochs:
                    raise interrupted(stop.received or signal.SIGTERM, folder.last, f"epoch {epoch + 1}")
                if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                    break
    finally:
        if writer is not None:
            writer.close()
    return folder.last


def set_rng_state(saved: tuple[torch.Tensor, list | None]) -> None:
    """Restore the torch (and CUDA) random state saved in a checkpoint."""
    torch_rng, cuda_rng = saved
    # RNG states must be CPU byte tensors; torch.load(map_location="cuda") moves them to the GPU.
    torch.set_rng_state(torch_rng.cpu())
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda_rng])


def _diverged(folder: RunFolder, values: dict[str, float], epoch: int, step: int, saved_epoch: int | None) -> InputError:
    """The error for a non-finite loss: names the term (a weighted one before ``total``) and the step."""
    bad = [name for name in TERM_NAMES if not math.isfinite(values[name])] or ["total"]
    kept = f"the last good checkpoint is {folder.last} (epoch {saved_epoch})" if saved_epoch is not None else "no checkpoint was written yet"
    return input_error(
        folder.path,
        f"loss term {bad[0]}",
        f"is {values[bad[0]]} at epoch {epoch + 1}, step {step + 1}",
        f"training stopped and {kept}; lower optim.lr or set optim.grad_clip in a --config file, then rerun with --resume",
    )
