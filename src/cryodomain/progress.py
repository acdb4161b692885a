"""Progress of long work: a live tqdm bar on a terminal; in a log or a pipe, a logged line every
``LOG_INTERVAL_S`` seconds with the real count.

tqdm writing to a file redraws its bar as one line per refresh, and a bar iterated by tqdm only
syncs its count at its own intervals, so such a log fills with lines that all read ``0/157``.
Away from a terminal there is therefore no bar, only lines through :mod:`logging` (they land in the
run's log once, beside its other messages).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger(__name__)

# Seconds between two logged progress lines when stderr is not a terminal, and between two
# redraws of the bar when it is.
LOG_INTERVAL_S = 15.0
BAR_INTERVAL_S = 0.2


def interactive() -> bool:
    """stderr is a terminal (a live bar there), not a file or a pipe (logged lines there)."""
    return sys.stderr.isatty()


class Progress:
    """Where a loop of ``total`` steps stands, shown as a tqdm bar on a terminal and otherwise
    logged every ``LOG_INTERVAL_S`` seconds as ``"DESCRIPTION  57/157 steps  812.0 images/s  POSTFIX"``.

    Args:
        description: what the loop is (``"epoch 3/80"``); it leads every line.
        total: number of steps of the whole loop.
        initial: steps already done before this object (a loop resumed inside).
        items: what ``advance``'s ``items`` count, for the rate (``"images"``); "" for steps.
        enabled: False shows and logs nothing (``progress=False``, the other DDP processes).
    """

    def __init__(self, description: str, total: int | None, *, initial: int = 0, items: str = "", enabled: bool = True):
        self.description, self.total, self.step = description, total, initial
        self.item_unit = items
        self.items = 0.0
        self.started = self.last_logged = time.perf_counter()
        live = enabled and interactive()
        self.bar = None
        if live:
            self.bar = tqdm(
                total=total, initial=initial, desc=description, unit="step", leave=False, mininterval=BAR_INTERVAL_S, dynamic_ncols=True, file=sys.stderr
            )
        self.logs = enabled and not live

    def advance(self, items: float = 1.0, postfix: str = "") -> None:
        """One more step, of ``items`` items (images of a batch); ``postfix`` ends the line (``"loss 0.012"``)."""
        self.step += 1
        self.items += items
        if self.bar is not None:
            # The postfix waits for update()'s own refresh (a refresh per step is a line per step).
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update()
        elif self.logs and time.perf_counter() - self.last_logged >= LOG_INTERVAL_S:
            self.last_logged = time.perf_counter()
            log.info("%s", "  ".join(part for part in (self.description, self.counts(), postfix) if part))

    def rate(self) -> float:
        """Items per second since this object was made (not counting the steps of ``initial``)."""
        seconds = time.perf_counter() - self.started
        return self.items / seconds if seconds > 0 else 0.0

    def counts(self) -> str:
        """``"57/157 steps  812.0 images/s"``: steps done of the total, and the rate."""
        unit = f"{self.item_unit}/s" if self.item_unit else "steps/s"
        total = f"/{self.total}" if self.total is not None else ""
        return f"{self.step}{total} steps  {self.rate():.1f} {unit}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(iterable: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """The items of ``iterable``, with their :class:`Progress` (a bar on a terminal, logged lines elsewhere).

    Args:
        iterable: the steps (its ``len`` is the total unless ``total`` is given).
        description: what the loop is, e.g. ``"structures"``.
        enabled: False shows nothing.
        total: number of steps, for iterables without a length.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    progress = Progress(description, total, enabled=enabled)
    try:
        for item in iterable:
            yield item
            progress.advance()
    finally:
        progress.close()
