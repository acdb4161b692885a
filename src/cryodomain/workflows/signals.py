"""Stopping a run cleanly: SIGINT/SIGTERM finish the step, the loop saves a checkpoint and stops."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)


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


def interrupted(signal_number: int, last_checkpoint: Path, where: str) -> TrainingInterrupted:
    """The exception raised after the checkpoint of a stop by ``signal_number`` was written."""
    name = signal.Signals(signal_number).name
    return TrainingInterrupted(f"stopped by {name} after {where}; progress saved in {last_checkpoint}: continue with --resume", signal_number)
