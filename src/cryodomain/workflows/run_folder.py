"""The run folder, owned by one class: what may be written there, and every file training writes.

A run folder holds ``config.yaml`` (the resolved configuration), ``train.log``, ``metrics.csv``
(one row per epoch), ``tensorboard/`` (when installed), ``last.pt`` (the latest state: after every
epoch, and inside one when a signal stops the run) and ``checkpoints/epoch_NNNN.pt`` for every
``optim.checkpoint_every``-th epoch and the final one (about ten a run when it is not set; a
checkpoint is ~30 MB, one per epoch would fill gigabytes). Every write is atomic, so a killed
process leaves the previous files intact.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import logging.handlers
import math
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from cryodomain.errors import InputError, input_error
from cryodomain.io.atomic import atomic_output, remove_stale_temporaries
from cryodomain.workflows.config import RunConfig, save_config
from cryodomain.workflows.objective import LOGGED_VALUES, WEIGHTED_TERMS

log = logging.getLogger(__name__)

# Files that mark a folder as holding a run (another run is not started there without --force).
RUN_FILES = ("last.pt", "config.yaml", "metrics.csv", "checkpoints", "search")
# The first phase of a run that searches its segments (workflows/segment_search.py): a run folder
# of its own inside the run's.
SEARCH_FOLDER = "search"
# Entries every checkpoint holds (see cryodomain.workflows.train.checkpoint_state).
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "config", "scale", "particles", "structure")
# The run's log: "time  message" lines.
LOG_FORMAT = logging.Formatter("%(asctime)s  %(message)s", "%Y-%m-%d %H:%M:%S")
# About this many epoch checkpoints a run keeps when optim.checkpoint_every is not set.
KEPT_CHECKPOINTS = 10


def checkpoint_interval(epochs: int, every: int | None = None) -> int:
    """Epochs between two kept ``checkpoints/epoch_NNNN.pt``: ``every`` (``optim.checkpoint_every``),
    else ``ceil(epochs / KEPT_CHECKPOINTS)`` (30 for 300 epochs, 1 for up to 10)."""
    return every if every is not None else max(1, math.ceil(epochs / KEPT_CHECKPOINTS))


def keeps_epoch(epoch: int, epochs: int, every: int | None = None) -> bool:
    """Whether completed epoch ``epoch`` (1-based) of a run of ``epochs`` keeps its epoch file:
    every :func:`checkpoint_interval`-th epoch and the final one (so at most ten by default)."""
    return epoch == epochs or epoch % checkpoint_interval(epochs, every) == 0


class MetricsLog:
    """``metrics.csv``: one row per epoch with the epoch mean of every loss term and the betas."""

    def __init__(self, path: Path):
        self.path = path
        self.columns = ["epoch", *LOGGED_VALUES, *(f"beta_{term.name}" for term in WEIGHTED_TERMS), "seconds"]

    def truncate(self, last_epoch: int) -> None:
        """Keep rows up to ``last_epoch`` (a resumed run rewrites what came after its checkpoint)."""
        rows = [row for row in self.read() if int(row["epoch"]) <= last_epoch]
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


class RunFolder:
    """The folder of one training run and everything written in it.

    Args:
        path: the folder (``-o`` of ``cryodomain train``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.last = self.path / "last.pt"
        self.checkpoints = self.path / "checkpoints"
        self.metrics = MetricsLog(self.path / "metrics.csv")

    def check_available(self, *, resume: bool, force: bool) -> None:
        """Refuse to start a new run in a folder that holds another one, unless resuming or forced.

        Raises:
            InputError: the folder is a file, or holds a run and neither flag is given.
        """
        if self.path.exists() and not self.path.is_dir():
            raise input_error(self.path, "-o", "is a file, not a folder", "choose a folder for the run")
        if resume or force:
            return
        held = [name for name in RUN_FILES if (self.path / name).exists()]
        if held:
            raise input_error(
                self.path,
                None,
                f"already holds a run ({', '.join(held)})",
                "pass --resume to continue it, --force to start over, or choose another -o",
            )

    def clear(self) -> None:
        """Delete the outputs of a previous run (``--force``); other files stay."""
        for name in ("last.pt", "metrics.csv", "config.yaml", "train.log"):
            (self.path / name).unlink(missing_ok=True)
        for stale in sorted(self.checkpoints.glob("epoch_*.pt")):
            stale.unlink()
        shutil.rmtree(self.path / "tensorboard", ignore_errors=True)
        shutil.rmtree(self.path / SEARCH_FOLDER, ignore_errors=True)

    @property
    def search(self) -> RunFolder:
        """The folder of the segment search's first phase."""
        return RunFolder(self.path / SEARCH_FOLDER)

    def prepare(self, config: RunConfig, start_epoch: int) -> None:
        """Create the folder, drop a killed process's temporaries, write ``config.yaml`` and keep the
        metrics of the epochs up to ``start_epoch``."""
        self.path.mkdir(parents=True, exist_ok=True)
        # Temporaries of a killed process never hold anything that a final file does not.
        for folder in (self.path, self.checkpoints):
            if folder.is_dir():
                remove_stale_temporaries(folder)
        save_config(config, self.path / "config.yaml")
        self.metrics.truncate(start_epoch)

    @contextlib.contextmanager
    def log_file(self, *, append: bool, earlier: logging.handlers.MemoryHandler | None = None, enabled: bool = True) -> Iterator[None]:
        """Within ``with``: the root logger also writes to ``train.log`` (appended to on resume).

        Args:
            append: continue the existing log (a resumed run).
            earlier: records collected before the folder could be written (the preflight), written
                first.
            enabled: False for the processes other than the main one (they write nothing).
        """
        handler: logging.Handler = logging.NullHandler()
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.path / "train.log", mode="a" if append else "w")
            handler.setFormatter(LOG_FORMAT)
        if earlier is not None:
            earlier.setTarget(handler)
            earlier.close()
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()

    def tensorboard(self):
        """A TensorBoard ``SummaryWriter`` on ``tensorboard/``, or None when it is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.path / "tensorboard"))

    def save_checkpoint(self, state: dict, epoch: int, *, mid_epoch: bool = False, keep: bool = True) -> Path:
        """Write ``last.pt``, and ``checkpoints/epoch_NNNN.pt`` before it when kept, atomically
        (and flushed to disk).

        Args:
            state: the checkpoint (see :func:`cryodomain.workflows.train.checkpoint_state`).
            epoch: number of completed epochs.
            mid_epoch: a stop inside epoch ``epoch + 1``: only ``last.pt`` is written.
            keep: also keep the epoch file (see :func:`keeps_epoch`); else only ``last.pt``.

        Returns:
            The epoch file, or ``last.pt`` when only that is written.

        Raises:
            InputError: the disk is full (or not writable); the previous ``last.pt`` stays intact.
        """
        # Serialise once in memory: both files get the same bytes, and a full disk surfaces as a
        # plain OSError of the write (torch.save to a file reports it as an opaque RuntimeError).
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getbuffer()
        # The epoch file first: a failure leaves last.pt at the previous checkpoint, as the message says.
        targets = [self.checkpoints / f"epoch_{epoch:04d}.pt", self.last] if keep and not mid_epoch else [self.last]
        for target in targets:
            try:
                with atomic_output(target, fsync=True) as tmp:
                    tmp.write_bytes(payload)
            except InputError as error:
                cause = error.__cause__
                reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(error)
                raise input_error(
                    target,
                    None,
                    f"checkpoint not saved ({reason})",
                    f"training stopped; {self.last} still holds the previous checkpoint: free disk space and rerun with --resume",
                ) from cause
        return targets[0]


@contextlib.contextmanager
def collect_log() -> Iterator[logging.handlers.MemoryHandler]:
    """Within ``with``: keep the root logger's records in memory (for :meth:`RunFolder.log_file`)."""
    root = logging.getLogger()
    collected = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    root.addHandler(collected)
    try:
        yield collected
    finally:
        root.removeHandler(collected)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :meth:`RunFolder.save_checkpoint`; InputError when it is not one."""
    path = Path(path)
    fix = "use another checkpoint of the run (checkpoints/epoch_NNNN.pt), or start over with --force"
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise input_error(path, None, f"cannot be read as a checkpoint ({reason})", fix) from error
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise input_error(path, None, f"is a torch file but not a cryodomain checkpoint (no {', '.join(missing)})", fix)
    return state


def check_resumable(state: dict, inputs: dict, path: Path) -> None:
    """The checkpoint must come from a run with the same model and data shape as this one.

    Args:
        state: the checkpoint.
        inputs: this run's checkpoint entries (:func:`cryodomain.workflows.train.run_inputs`).
        path: the checkpoint's path, for the message.
    """
    saved_model = state["config"]["model"]
    for key, value in inputs["config"]["model"].items():
        if saved_model.get(key) != value:
            raise input_error(
                path,
                f"model.{key}",
                f"the run was trained with {saved_model.get(key)!r}, this configuration says {value!r}",
                "resume with the run's own config.yaml, or start a new run (another -o, or --force)",
            )
    if state.get("position") is not None:
        # The saved position inside the epoch counts batches of the run's own size and order.
        for key in ("batch_size", "seed"):
            saved, now = state["config"]["optim"][key], inputs["config"]["optim"][key]
            if saved != now:
                raise input_error(
                    path,
                    f"optim.{key}",
                    f"the run stopped inside an epoch with {saved}, this configuration says {now}",
                    "resume with the run's own config.yaml",
                )
    for key, what in (("n_particles", "particles"), ("n_residues", "residues"), ("box", "box (px)")):
        if key in state and state[key] != inputs[key]:
            raise input_error(
                path,
                key,
                f"the run was trained on {state[key]} {what}, these inputs have {inputs[key]}",
                "resume with the run's own particles and structure, or start a new run (another -o, or --force)",
            )
