"""Progress bars for long work: lively on a terminal, a line every few seconds in a log file."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr (redrawn rarely when stderr is not a terminal)."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=description,
        total=total,
        unit="batch",
        disable=not enabled,
        leave=False,
        mininterval=0.2 if interactive else 15.0,
        dynamic_ncols=interactive,
    )
