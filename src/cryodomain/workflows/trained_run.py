"""A trained run, loaded once, typed: what ``structures``, ``analyze`` and ``evaluate`` work from."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from cryodomain.errors import input_error
from cryodomain.model.cryosphere import CryoSphere
from cryodomain.progress import progress_bar
from cryodomain.workflows.config import RunConfig
from cryodomain.workflows.distributed import Processes, gather_in_order, share
from cryodomain.workflows.inputs import TrainingData, build_model, load_training_data
from cryodomain.workflows.objective import StepContext, build_context, encoder_inputs
from cryodomain.workflows.run_folder import load_checkpoint

# Kept checkpoints named in full up to this many; more are shortened to both ends.
LISTED_CHECKPOINTS = 12


def kept_checkpoints(run_dir: Path) -> str:
    """The checkpoints a run folder holds, for messages: ``"kept: epoch_0010.pt, ..., epoch_0100.pt
    in checkpoints/, last.pt"`` (empty when none); a run keeps every ``optim.checkpoint_every``-th epoch."""
    epochs = [path.name for path in sorted((run_dir / "checkpoints").glob("epoch_*.pt"))]
    if len(epochs) > LISTED_CHECKPOINTS:
        epochs = [*epochs[:3], "...", *epochs[-3:]]
    names = [f"{', '.join(epochs)} in checkpoints/"] if epochs else []
    names += ["last.pt"] if (run_dir / "last.pt").exists() else []
    return f"kept: {', '.join(names)}" if names else ""


@dataclass(frozen=True)
class LatentPosterior:
    """The encoder's Gaussian posterior ``q(z | image)`` of M images: ``means``, ``stds`` ``(M, D)`` float32."""

    means: np.ndarray
    stds: np.ndarray


@dataclass(frozen=True)
class TrainedRun:
    """A run's model at one checkpoint, with the configuration, inputs and data scale it was trained with.

    Attributes:
        run_dir: the run folder.
        checkpoint: the checkpoint loaded.
        model: the model in eval mode, on the device it was loaded to.
        config: the run's validated configuration.
        data: the run's inputs, read and checked again.
        scale: the dataset-wide image scale of training.
        epoch: completed epochs at that checkpoint.
    """

    run_dir: Path
    checkpoint: Path
    model: CryoSphere
    config: RunConfig
    data: TrainingData
    scale: float
    epoch: int

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> TrainedRun:
        """Rebuild a trained model, its configuration and its data from a run folder.

        Args:
            run_dir: the run folder.
            checkpoint: a checkpoint of it (default ``last.pt``).
            device: where the model goes.

        Raises:
            InputError: no checkpoint (naming those the run kept), an unreadable one, or inputs
                that no longer check out.
        """
        run_dir = Path(run_dir)
        path = Path(checkpoint) if checkpoint is not None else run_dir / "last.pt"
        if not path.exists():
            kept = kept_checkpoints(run_dir)
            fix = f"pass --checkpoint with one the run kept ({kept})" if kept else "train first, or pass --checkpoint"
            raise input_error(path, None, "no checkpoint found", fix)
        state = load_checkpoint(path, device)
        config = RunConfig.model_validate(state["config"])
        data = load_training_data(state["particles"], state["structure"], config, state.get("downsample_box"))
        return cls.from_state(run_dir, path, state, data, device)

    @classmethod
    def from_state(cls, run_dir: Path, checkpoint: Path, state: dict, data: TrainingData, device: str | torch.device = "cpu") -> TrainedRun:
        """The run of a checkpoint already read, on inputs already read (the same the run trained on)."""
        config = RunConfig.model_validate(state["config"])
        model = build_model(data, config).to(device)
        model.load_state_dict(state["model"])
        model.eval()
        return cls(Path(run_dir), Path(checkpoint), model, config, data, float(state["scale"]), int(state["epoch"]))

    @property
    def device(self) -> torch.device:
        return self.model.base_coords.device

    @cached_property
    def context(self) -> StepContext:
        """The forward model's constants as in training (image frame, low-pass, mask, scale)."""
        return build_context(self.model, self.data, self.config, self.scale, self.device)

    def latent_means(self, batch_size: int = 256, progress: bool = True, processes: Processes = Processes()) -> np.ndarray:
        """Latent mean of every image, in particle order: ``(N, D)`` float32 (see :meth:`latent_posterior`)."""
        return self.latent_posterior(batch_size, progress, processes).means

    def latent_posterior(self, batch_size: int = 256, progress: bool = True, processes: Processes = Processes()) -> LatentPosterior:
        """The encoder's posterior of every image, in particle order.

        With several processes (torchrun), each encodes a contiguous share of the particles and
        every process gets the whole arrays back, in particle order.
        """
        mine = share(len(self.data.table), processes)
        mine_posterior = self.latent_posterior_of(np.arange(mine.start, mine.stop), batch_size, progress and processes.is_main)
        return LatentPosterior(gather_in_order(mine_posterior.means, processes), gather_in_order(mine_posterior.stds, processes))

    def latent_means_of(self, indices: np.ndarray, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Latent means of the particles ``indices`` ``(M,)``, in that order: ``(M, D)`` float32."""
        return self.latent_posterior_of(indices, batch_size, progress).means

    def latent_posterior_of(self, indices: np.ndarray, batch_size: int = 256, progress: bool = False) -> LatentPosterior:
        """The posterior of the particles ``indices`` ``(M,)``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        shape = (len(indices), self.config.model.latent_dim)
        means, stds = np.empty(shape, dtype=np.float32), np.empty(shape, dtype=np.float32)
        with torch.no_grad():
            for start in progress_bar(range(0, len(indices), batch_size), "latents", enabled=progress):
                batch = self.data.dataset[indices[start : start + batch_size].tolist()]
                encoder_input, _, _ = encoder_inputs(self.model, batch, self.data.table, self.context)
                poses = batch["rotations"].to(self.device)
                mean, std = self.model.encode(encoder_input, batch["index"].to(self.device), poses)
                means[start : start + len(mean)] = mean.cpu().numpy()
                stds[start : start + len(mean)] = std.cpu().numpy()
        return LatentPosterior(means, stds)
