"""The inputs of a training run, read and checked before anything is written (the preflight).

:func:`load_training_data` reads the particles and the atomic model, checks that they describe the
same images (box, pixel size, the model inside the box and centred) and logs one summary block;
:func:`build_model` makes the model these inputs and a configuration define.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryodomain.errors import input_error
from cryodomain.io.metadata import read_particles
from cryodomain.io.particles import ParticleTable
from cryodomain.io.structure import AtomicModel, group_centroids, group_spreads, read_atomic_model
from cryodomain.model.cryosphere import CryoSphere
from cryodomain.model.segmentation import (
    DEFAULT_CENTRE_STD,
    DEFAULT_PROPORTION_STD,
    DEFAULT_WIDTH_STD,
    SegmentPart,
    uniform_centres,
    uniform_widths,
)
from cryodomain.workflows.config import Part, RunConfig
from cryodomain.workflows.data import ParticleBatches, check_pixel_sample

log = logging.getLogger(__name__)

# Stack headers often leave the pixel size unset: 0, or mrcfile's and some programs' default 1.
UNSET_HEADER_PIXEL_SIZES = (0.0, 1.0)
PIXEL_SIZE_TOLERANCE = 0.01  # relative


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
            raise input_error(None, "model.n_segments", f"{config.model.n_segments} segments for {structure.n_residues} residues", "use fewer segments")
        whole = Part(chain="*", n_segments=config.model.n_segments, init=config.model.init)
        return [_segment_part(np.arange(structure.n_residues), whole)]
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
    return _segment_part(indices, part)


def _segment_part(indices: np.ndarray, part: Part) -> SegmentPart:
    """The model's segmentation of residues ``indices`` with ``part``'s segments, start values and prior."""

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
        prior_centre_std=prior.centre_std if prior != "uniform" else DEFAULT_CENTRE_STD,
        prior_widths=values(prior, "widths") if prior != "uniform" else uniform_widths(indices.size, part.n_segments),
        prior_width_std=prior.width_std if prior != "uniform" else DEFAULT_WIDTH_STD,
        prior_proportions=values(prior, "proportions") if prior != "uniform" else np.zeros(part.n_segments),
        prior_proportion_std=prior.proportion_std if prior != "uniform" else DEFAULT_PROPORTION_STD,
    )


def load_training_data(particles: str | Path, structure_path: str | Path, config: RunConfig, downsample_box: int | None = None) -> TrainingData:
    """Read and check particles and structure; logs one summary block."""
    table = read_particles(particles, datadir=config.data.datadir, particle_class=config.data.particle_class, passthrough=config.data.passthrough)
    structure = read_atomic_model(structure_path)
    source = Path(particles).name
    if len(table) == 0:
        raise input_error(particles, None, "holds no particles", "check the file")
    boxes = np.unique(table.image_size)
    if boxes.size > 1:
        raise input_error(
            particles, "rlnImageSize", f"optics groups have different boxes {boxes.tolist()}", "train on one box size (re-extract or split the star file)"
        )
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


@dataclass(frozen=True)
class ResidueGaussians:
    """The base model as the forward model renders it: G Gaussians, one or two per residue.

    Attributes:
        positions: ``(G, 3)`` Å, the CA / C1' or the electron centroid (``model.gaussian_at``).
        amplitudes: ``(G,)`` electrons, times ``sigma_A^2 / width^2`` with widths from the atoms
            (the projected Gaussian's integral, ``2 pi width^2 amplitude``, stays that of the atoms).
        widths: Å, ``model.sigma_A`` for all, or ``(G,)`` (``model.gaussian_width: atoms``).
        residue: ``(G,)`` int64, the residue each Gaussian moves with.
    """

    positions: np.ndarray
    amplitudes: np.ndarray
    widths: float | np.ndarray
    residue: np.ndarray

    @property
    def one_per_residue(self) -> bool:
        """Every residue has one Gaussian (``residue`` is sorted, so strictly increasing says it)."""
        return bool(np.all(np.diff(self.residue) > 0))


def residue_gaussians(structure: AtomicModel, config: RunConfig) -> ResidueGaussians:
    """Where, how heavy and how wide each Gaussian is, and whose residue it is (the one place that decides).

    ``gaussian_at: split`` gives a residue two Gaussians, its backbone and its side chain (for a
    nucleotide the sugar-phosphate and the base), each at its atoms' electron centroid with its
    electrons; a residue without side-chain atoms (glycine) keeps one.
    """
    sigma = float(config.model.sigma_A)
    if config.model.gaussian_at == "split":
        kept, atom_group = np.unique(2 * structure.atom_residue_index + structure.side_chain_atoms(), return_inverse=True)
        residue = (kept // 2).astype(np.int64)
        electrons = np.bincount(atom_group, weights=structure.atom_electrons, minlength=len(kept))
        positions = group_centroids(structure.atom_coords, structure.atom_electrons, atom_group, len(kept))
        spreads = group_spreads(structure.atom_coords, structure.atom_electrons, atom_group, positions)
    else:
        residue = np.arange(structure.n_residues, dtype=np.int64)
        positions = structure.electron_centroids() if config.model.gaussian_at == "centroid" else structure.coords
        electrons = structure.amplitudes
        spreads = structure.residue_spreads(positions) if config.model.gaussian_width == "atoms" else None
    if config.model.gaussian_width == "sigma":
        return ResidueGaussians(positions, electrons, sigma, residue)
    widths = np.sqrt(sigma**2 + spreads)
    return ResidueGaussians(positions, electrons * (sigma**2 / widths**2), widths, residue)


def build_model(data: TrainingData, config: RunConfig) -> CryoSphere:
    gaussians = residue_gaussians(data.structure, config)
    model = CryoSphere(
        data.structure.coords,
        gaussians.amplitudes,
        resolve_parts(config, data.structure),
        data.box,
        len(data.table),
        latent_dim=config.model.latent_dim,
        encoder_hidden=config.model.encoder_hidden,
        decoder_hidden=config.model.decoder_hidden,
        tau=config.model.tau,
        amortized=config.model.amortized,
        rotate_about=config.model.rotate_about,
        encoder_pose=config.model.encoder_pose,
        latent_std_scale=config.model.latent_std_scale,
        gaussian_coords=gaussians.positions if config.model.gaussian_at != "ca" else None,
        gaussian_residue=None if gaussians.one_per_residue else gaussians.residue,
    )
    for name, parameter in model.segmentation.named_parameters():
        if not config.model.learn_segmentation or (name.endswith("_std_raw") and not config.model.learn_segment_stds):
            parameter.requires_grad_(False)
    return model
