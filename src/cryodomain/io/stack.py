"""MRC image stacks: header reading, lazy memory-mapped image access and atomic writing.

Images are arrays indexed ``[y, x]`` as stored in MRC files (see :mod:`cryodomain.io.poses`). A
stack file is never loaded whole: files are opened with :func:`mrcfile.mmap` and only the requested
images are copied out. A single 2-D ``.mrc`` image counts as a stack of one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.mrcmemmap import MrcMemmap
from mrcfile.utils import data_dtype_from_header

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output

logger = logging.getLogger(__name__)

# Enough to keep every stack of a typical dataset open, few enough to stay under the usual limit of
# 1024 file descriptors when particles come from thousands of per-micrograph stacks.
DEFAULT_MAX_OPEN_FILES = 256


@dataclass(frozen=True)
class StackHeader:
    """What an MRC header says about an image stack.

    Attributes:
        n_images: number of images (``nz``; 1 for a 2-D image).
        height: image rows ``ny`` in pixels.
        width: image columns ``nx`` in pixels.
        pixel_size_A: ``voxel_size.x`` in Å, 0 when the header leaves it unset.
    """

    n_images: int
    height: int
    width: int
    pixel_size_A: float


def read_stack_header(path: str | Path) -> StackHeader:
    """Read the header of an MRC stack without touching the image data.

    Args:
        path: ``.mrcs`` / ``.mrc`` file.

    Returns:
        The stack's :class:`StackHeader`.

    Raises:
        InputError: the file is missing or not a readable MRC file.
    """
    if Path(path).is_dir():
        raise input_error(path, None, "is a folder, not an MRC image stack", "check the image paths")
    try:
        with mrcfile.open(path, mode="r", header_only=True) as mrc:
            header = mrc.header
            stack_header = StackHeader(
                n_images=int(header.nz),
                height=int(header.ny),
                width=int(header.nx),
                pixel_size_A=float(mrc.voxel_size.x),
            )
            # An interrupted copy or download leaves a file shorter than its header promises.
            expected_bytes = (
                header.nbytes
                + int(header.nsymbt)
                + (stack_header.n_images * stack_header.height * stack_header.width * data_dtype_from_header(header).itemsize)
            )
    except (OSError, ValueError) as error:
        raise input_error(path, None, f"cannot read as an MRC image stack ({error})", "check the file is an MRC stack") from error
    size = Path(path).stat().st_size
    if size < expected_bytes:
        raise input_error(
            path,
            None,
            f"file is truncated ({size} bytes, the header describes {expected_bytes})",
            "copy or re-extract the stack again",
        )
    return stack_header


def _open_stack(path: str) -> tuple[MrcMemmap, np.ndarray]:
    """Memory-map an MRC stack; return the open file and its data as ``(n, H, W)``.

    A 2-D image becomes ``(1, H, W)``.
    """
    try:
        mrc = mrcfile.mmap(path, mode="r")
    except (OSError, ValueError) as error:
        raise input_error(path, None, f"cannot read as an MRC image stack ({error})", "check the file is an MRC stack") from error
    data = mrc.data
    if data is None or data.ndim not in (2, 3):
        mrc.close()
        raise input_error(path, None, "holds no 2-D images", "give an MRC image stack (.mrcs) or a 2-D .mrc image")
    return mrc, (data[np.newaxis] if data.ndim == 2 else data)


class ParticleImages:
    """Images addressed by (path, index) pairs, read lazily from memory-mapped MRC stacks.

    Every stack is checked when the object is built (it exists, is MRC, every index lies inside it
    and all images share one shape); image data are only read by :meth:`read`. Open files are kept
    in a small least-recently-used cache, so datasets split over thousands of stacks do not run out
    of file descriptors. The object pickles without its open files (for DataLoader workers).

    Args:
        image_paths: ``(N,)`` str, path of the stack holding each image.
        image_indices: ``(N,)`` int, 0-based index of each image in its stack.
        max_open_files: how many stacks to keep memory-mapped at once.

    Attributes:
        image_shape: ``(H, W)`` pixels, shared by all images.
        header_pixel_size_A: ``(N,)`` float64, the pixel size in the header of each image's stack
            (0 where the header leaves it unset).
    """

    def __init__(self, image_paths: np.ndarray, image_indices: np.ndarray, max_open_files: int = DEFAULT_MAX_OPEN_FILES):
        self.image_paths = np.asarray(image_paths, dtype=str)
        self.image_indices = np.asarray(image_indices, dtype=np.int64)
        if self.image_paths.shape != self.image_indices.shape or self.image_paths.ndim != 1:
            raise ValueError(f"image_paths {self.image_paths.shape} and image_indices {self.image_indices.shape} must be equal 1-D shapes")
        if len(self.image_paths) == 0:
            raise ValueError("ParticleImages needs at least one image")
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.max_open_files = max_open_files
        self._open_files: OrderedDict[str, tuple[MrcMemmap, np.ndarray]] = OrderedDict()

        # Integer codes per distinct path let read() group rows by file without string comparisons.
        self._unique_paths, self._path_codes = np.unique(self.image_paths, return_inverse=True)
        self.image_shape, stack_pixel_sizes = self._check_stacks()
        self.header_pixel_size_A = stack_pixel_sizes[self._path_codes]

    def _check_stacks(self) -> tuple[tuple[int, int], np.ndarray]:
        """Validate every stack's header against the indices pointing into it.

        Returns:
            ``(H, W)`` and the header pixel size of each distinct stack, ``(n_stacks,)`` Å.
        """
        image_shape: tuple[int, int] | None = None
        first_path = ""
        pixel_sizes = np.zeros(len(self._unique_paths))
        for code, path in enumerate(self._unique_paths):
            header = read_stack_header(path)
            pixel_sizes[code] = header.pixel_size_A
            shape = (header.height, header.width)
            if image_shape is None:
                image_shape, first_path = shape, path
            elif shape != image_shape:
                raise input_error(
                    path,
                    None,
                    f"images are {shape[0]}x{shape[1]} pixels but {first_path} holds {image_shape[0]}x{image_shape[1]}",
                    "use particles of one box size (one optics group) or re-extract them",
                )
            indices = self.image_indices[self._path_codes == code]
            bad = indices[(indices < 0) | (indices >= header.n_images)]
            if bad.size:
                raise input_error(
                    path,
                    None,
                    f"image index {int(bad[0])} (0-based) is outside the stack of {header.n_images} images",
                    "check the particle file points at the right stacks",
                )
        assert image_shape is not None
        return image_shape, pixel_sizes

    def __len__(self) -> int:
        return len(self.image_paths)

    def _stack_data(self, path: str) -> np.ndarray:
        """The ``(n, H, W)`` memory-mapped data of one stack, opening it if needed (LRU cache)."""
        if path in self._open_files:
            self._open_files.move_to_end(path)
            return self._open_files[path][1]
        while len(self._open_files) >= self.max_open_files:
            _, (old_mrc, _) = self._open_files.popitem(last=False)
            old_mrc.close()
        mrc, data = _open_stack(path)
        self._open_files[path] = (mrc, data)
        return data

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Copy the images at the given row positions.

        Args:
            positions: ``(B,)`` int, rows of ``image_paths`` / ``image_indices`` (any order, repeats allowed).

        Returns:
            ``(B, H, W)`` float32 images in the order of ``positions``.
        """
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        images = np.empty((len(positions), *self.image_shape), dtype=np.float32)
        codes = self._path_codes[positions]
        for code in np.unique(codes):
            in_file = np.flatnonzero(codes == code)
            indices = self.image_indices[positions[in_file]]
            # One sorted fancy index per file reads the memory map front to back.
            unique_indices, inverse = np.unique(indices, return_inverse=True)
            block = self._stack_data(str(self._unique_paths[code]))[unique_indices]
            images[in_file] = block[inverse]
        return images

    def close(self) -> None:
        """Close every open stack (the object stays usable; files reopen on demand)."""
        while self._open_files:
            _, (mrc, _) = self._open_files.popitem(last=False)
            mrc.close()

    def __enter__(self) -> ParticleImages:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # Memory maps do not pickle; a copy reopens its files lazily.
        state = self.__dict__.copy()
        state["_open_files"] = OrderedDict()
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn mrcfile down already
            pass


def write_stack(path: str | Path, images: np.ndarray, pixel_size_A: float) -> None:
    """Write images as an MRC image stack, atomically (temporary file, then :func:`os.replace`).

    Args:
        path: output ``.mrcs`` file.
        images: ``(n, H, W)`` images, stored as float32.
        pixel_size_A: pixel size in Å written to the header's voxel size.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images must be (n, H, W), got shape {images.shape}")
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(images)
            mrc.set_image_stack()
            mrc.voxel_size = float(pixel_size_A)
            # mrcfile's default label carries the time of writing; a fixed one keeps outputs reproducible.
            mrc.header.label[0] = b"cryodomain particle stack".ljust(80)
    logger.debug("wrote %d images of %dx%d to %s", images.shape[0], images.shape[1], images.shape[2], path)
