"""Atomic file output: write to a temporary file beside the target, then rename.

A process killed at any moment leaves either the previous file or the complete new one under the
final name, never a partial file. A write that fails because the disk is full, the quota is
exhausted or the folder is not writable becomes a one-line :class:`~cryodomain.errors.InputError`
naming the file; the previous file stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cryodomain.errors import input_error

# Failures of the filesystem that the user fixes (space, quota, permissions), not bugs.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})

# Every temporary name made here matches this pattern (".<stem>.<8 random characters>.tmp<suffixes>").
TEMPORARY_GLOB = ".*.????????.tmp*"


def write_failure(path: str | Path, error: OSError) -> Exception:
    """The InputError for a failed write of ``path`` (disk full, read-only, no permission)."""
    return input_error(
        path,
        None,
        f"cannot write ({error.strerror or error})",
        "free disk space or choose a writable output folder; files already written are intact",
    )


@contextlib.contextmanager
def atomic_output(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success rename it to ``path``.

    The temporary name keeps the target's suffixes so libraries that pick a format from the
    extension (gemmi, matplotlib, mrcfile) behave as for the real name. On error the temporary
    file is removed and the target is untouched.

    Args:
        path: the final file name.
        fsync: flush the file to disk before the rename (checkpoints: survives a power cut too).

    Raises:
        InputError: the write failed for lack of space, quota or permission.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as error:
        if error.errno in WRITE_ERRNOS:
            raise write_failure(path, error) from error
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno in WRITE_ERRNOS:
            raise write_failure(path, error) from error
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files that :func:`atomic_output` left in ``folder`` when a process was killed.

    Returns:
        The removed paths.
    """
    removed = []
    for stale in Path(folder).glob(TEMPORARY_GLOB):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """``numpy.save`` of ``array`` to ``path``, atomically."""
    with atomic_output(path) as tmp:
        np.save(tmp, array)


def save_indices(path: str | Path, indices: np.ndarray) -> None:
    """One integer per line (e.g. 0-based particle indices), atomically."""
    with atomic_output(path) as tmp:
        np.savetxt(tmp, np.asarray(indices, dtype=np.int64), fmt="%d")


def save_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """A table as CSV without the index column, atomically."""
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
