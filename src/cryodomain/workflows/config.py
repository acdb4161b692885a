"""The one configuration object of a training run, validated with pydantic.

Defaults are the best settings we measured (benchmarks/RESULTS.md, "Accuracy: what the defaults
are made of"); the published cryoSPHERE settings are the preset ``paper`` (data/presets/paper.yaml). A YAML file may set any subset of the
fields; command-line flags override it; the resolved configuration is written to ``RUN/config.yaml``
so a run can be repeated exactly. Unknown keys and bad values are input errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from cryodomain.errors import input_error
from cryodomain.io.atomic import atomic_output
from cryodomain.model.schedules import BetaSchedule
from cryodomain.model.segmentation import DEFAULT_CENTRE_STD, DEFAULT_PROPORTION_STD, DEFAULT_WIDTH_STD


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SegmentValues(_Strict):
    """Values of the Gaussian mixture over residue index of one part (local index 0..R_p-1).

    ``None`` means the "uniform" default: centres evenly spaced, widths R_p/K, logits 0.
    """

    centres: list[float] | None = None
    centre_std: PositiveFloat = DEFAULT_CENTRE_STD
    widths: list[PositiveFloat] | None = None
    width_std: PositiveFloat = DEFAULT_WIDTH_STD
    proportions: list[float] | None = None
    proportion_std: PositiveFloat = DEFAULT_PROPORTION_STD


class StartValues(SegmentValues):
    """Start values of a segmentation: stds of a tenth of a residue (and 0.01 on the logits), so
    that each image sees the boundaries where they are (one residue measured 7 % worse on the
    normal modes, RESULTS.md "Accuracy: sharper sampled boundaries and a finer low-pass"); the prior
    keeps 10 / 10 / 1. A configuration that gives only ``centres`` and ``widths`` gets these stds
    too (not the prior's)."""

    centre_std: PositiveFloat = 0.1
    width_std: PositiveFloat = 0.1
    proportion_std: PositiveFloat = 0.01


START_VALUES = StartValues()


class Part(_Strict):
    """A residue range of one chain segmented on its own; residues outside every part stay fixed."""

    chain: str
    first_residue: int | None = None
    last_residue: int | None = None
    n_segments: PositiveInt
    init: StartValues = START_VALUES
    prior: Literal["uniform"] | SegmentValues = "uniform"

    @model_validator(mode="after")
    def _check(self) -> "Part":
        if self.first_residue is not None and self.last_residue is not None and self.first_residue > self.last_residue:
            raise ValueError(f"first_residue {self.first_residue} is after last_residue {self.last_residue}")
        for values in (self.init, self.prior):
            if isinstance(values, SegmentValues):
                for name in ("centres", "widths", "proportions"):
                    listed = getattr(values, name)
                    if listed is not None and len(listed) != self.n_segments:
                        raise ValueError(f"{name} lists {len(listed)} values for {self.n_segments} segments")
        return self


class SegmentSearch(_Strict):
    """A first phase that finds the segment boundaries from the images (workflows/segment_search.py).

    It runs when enabled and no start centres are given: ``fraction`` of the epochs with ``factor``
    x K fixed, evenly spaced segments per part; then the K contiguous segments that best follow the
    motions decoded for ``images`` particles become the main phase's start values.
    """

    enabled: bool = False
    fraction: float = Field(0.3, gt=0.0, lt=1.0)
    factor: int = Field(3, ge=2)
    images: PositiveInt = 256


class ModelConfig(_Strict):
    latent_dim: PositiveInt = 4
    encoder_hidden: list[PositiveInt] = [512, 256, 64, 64]
    # Twice the published width (512, 512): 1-4 % closer on every series measured, at ~5 % of the
    # step's time (RESULTS.md, "Accuracy: a wider decoder and twice the image passes").
    decoder_hidden: list[PositiveInt] = [1024, 1024]
    amortized: bool = True
    n_segments: PositiveInt = 16
    parts: list[Part] | None = None
    # Softness of the segment boundaries: 0.2 lets residues near a boundary blend the motions of
    # both segments, which follows a bending protein better than the published near-hard 0.05
    # (RESULTS.md, "Accuracy: two Gaussians per residue and softer boundaries").
    tau: PositiveFloat = 0.2
    # Width, Å: of each atom with gaussian_width "atoms" (the default; 2.0, the atoms of the
    # benchmark images), each Gaussian then being sqrt(sigma_A^2 + its atoms' spread) wide; of
    # every Gaussian with "sigma" (2.35 fits one Gaussian per residue to images of 2 Å atoms,
    # RESULTS.md "Accuracy: the width"; the published model uses 2.0).
    sigma_A: PositiveFloat = 2.0
    # Start values of the whole model's segmentation (when no parts are given).
    init: StartValues = START_VALUES
    rotate_about: Literal["origin", "segment"] = "segment"
    # Learn the segmentation's variational stds (else they stay at their start values, init.*_std).
    learn_segment_stds: bool = False
    # Learn the segmentation at all (else centres, widths and proportions stay at their start
    # values: the learned one loses segments, RESULTS.md "Accuracy: the segmentation").
    learn_segmentation: bool = True
    search: SegmentSearch = SegmentSearch()
    # What the amortised encoder sees: the image, or its residual against the base model's image
    # at the known pose and CTF; and whether the pose itself is an input.
    encoder_input: Literal["image", "residual"] = "residual"
    encoder_pose: bool = True
    latent_std_scale: PositiveFloat = 0.1
    # Where each residue's Gaussian sits: on its CA / C1' atom (the published model), or at the
    # electron-weighted centroid of its atoms (where its density is), or split: two Gaussians,
    # the backbone's and the side chain's (base's), each at its atoms' centroid; outputs stay CA / C1'.
    gaussian_at: Literal["ca", "centroid", "split"] = "split"
    # Each residue's Gaussian width: sigma_A for all (the published model), or from its atoms,
    # sqrt(sigma_A^2 + their variance about the Gaussian's centre), with the amplitude scaled so
    # that it still projects its electrons (images of atoms of width sigma_A are matched better).
    gaussian_width: Literal["sigma", "atoms"] = "atoms"

    @model_validator(mode="after")
    def _check_init(self) -> "ModelConfig":
        for name in ("centres", "widths", "proportions"):
            listed = getattr(self.init, name)
            if listed is not None and len(listed) != self.n_segments:
                raise ValueError(f"init.{name} lists {len(listed)} values for {self.n_segments} segments")
        return self


class LossConfig(_Strict):
    # Four times the published latent KL: at SNR 0.1 and 0.01 it keeps each image's latent from
    # carrying the noise into its structure (benchmarks/RESULTS.md); without noise it costs little.
    latent_kl: BetaSchedule = BetaSchedule(kind="linear", value=4.0)
    centres_kl: BetaSchedule = BetaSchedule(kind="linear", value=1.0)
    widths_kl: BetaSchedule = BetaSchedule(kind="linear", value=1.0)
    proportions_kl: BetaSchedule = BetaSchedule(kind="cyclical", value=1.0, n_cycles=5, ramp_fraction=0.5)
    continuity: BetaSchedule = BetaSchedule(kind="constant", value=0.1)
    clash: BetaSchedule = BetaSchedule(kind="constant", value=0.01)
    l2: BetaSchedule = BetaSchedule(kind="constant", value=1e-6)
    clash_mode: Literal["light", "full", "off"] = "light"
    clash_cutoff_A: PositiveFloat = 4.0


class DataConfig(_Strict):
    datadir: str | None = None
    # cryoSPARC only: the 0-based class whose poses every particle takes (None: alignments3D, else
    # each particle's most probable class), and the job's passthrough .cs (None: found beside it).
    particle_class: int | None = Field(None, ge=0)
    passthrough: str | None = None
    invert_contrast: bool = False
    # The encoder sees the image translated by its pose shift (centred), not as extracted.
    centre_encoder_input: bool = True
    lowpass_A: PositiveFloat | None = 10.0
    # Coarse to fine: the low-pass moves (linearly in frequency) from lowpass_A to this resolution
    # over the first lowpass_fraction of the epochs, then stays; None, or a value not finer than
    # lowpass_A, keeps lowpass_A throughout. 6 Å: 10-15 % better than staying at 10 Å on every
    # series and noise level measured (RESULTS.md).
    lowpass_final_A: PositiveFloat | None = 6.0
    lowpass_fraction: float = Field(0.75, gt=0.0, le=1.0)
    mask_radius_fraction: float | None = Field(None, gt=0.0, le=1.0)
    normalization_sample: PositiveInt = 1000
    # Before training, refuse images that fit another reading of the contrast, rotations or shifts
    # clearly better (workflows/conventions_check.py); false skips it, for odd data.
    convention_check: bool = True


# Image passes of a default run (epochs x particles): 5000 particles at 64 px train 160 epochs,
# about 15 minutes on 2 CPU cores (benchmarks/RESULTS.md); never fewer than MIN_AUTO_EPOCHS.
DEFAULT_IMAGE_PASSES = 800_000
MIN_AUTO_EPOCHS, MAX_AUTO_EPOCHS = 10, 300


class OptimConfig(_Strict):
    # None: chosen from the number of particles when training starts (see with_epochs_for).
    epochs: PositiveInt | None = None
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 2e-3
    segmentation_lr: PositiveFloat = 0.2
    # Share of the epochs before the segmentation learns (its learning rate is 0 until then).
    segmentation_start: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = False
    grad_clip: PositiveFloat | None = None
    # Learning rates over the run: constant, or a linear warm-up then a cosine decay to
    # final_lr_fraction of the configured rates.
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: float = Field(2.0, ge=0.0)
    final_lr_fraction: float = Field(0.01, ge=0.0, le=1.0)
    num_workers: int = Field(0, ge=0)
    # Keep checkpoints/epoch_NNNN.pt every this many epochs (and the final one); None: about ten a
    # run (see run_folder.checkpoint_interval). last.pt is written after every epoch regardless.
    checkpoint_every: PositiveInt | None = None


class RunConfig(_Strict):
    """Everything that defines a training run."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()


def with_epochs_for(config: RunConfig, n_images: int) -> RunConfig:
    """``config`` with ``optim.epochs`` set from the data size when it is None (the default):
    ``DEFAULT_IMAGE_PASSES / n_images`` epochs, between ``MIN_AUTO_EPOCHS`` and ``MAX_AUTO_EPOCHS``."""
    if config.optim.epochs is not None:
        return config
    epochs = int(min(max(round(DEFAULT_IMAGE_PASSES / max(n_images, 1)), MIN_AUTO_EPOCHS), MAX_AUTO_EPOCHS))
    return config.model_copy(update={"optim": config.optim.model_copy(update={"epochs": epochs})})


def _format_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    problem = first["msg"]
    if first["type"] == "extra_forbidden":
        problem = "unknown key"
    return f"{where}: {problem}" + (
        f" (got {first['input']!r})" if first["type"] != "extra_forbidden" and "input" in first and not isinstance(first["input"], dict) else ""
    )


# Shipped configurations, by name (``--preset``): the published cryoSPHERE settings.
PRESETS_DIR = Path(__file__).resolve().parents[1] / "data" / "presets"
PRESETS = ("paper",)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise input_error(path, None, f"cannot read config ({error.strerror})", "check the path") from None
    except yaml.YAMLError as error:
        raise input_error(path, None, f"not valid YAML ({str(error).splitlines()[0]})", "fix the syntax") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise input_error(path, None, "the config must be a mapping of sections", "see README, Configuration")
    return loaded or {}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section (nested mappings merged, other values replaced)."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None, *, preset: str | None = None) -> RunConfig:
    """The run's configuration: defaults, then a preset, then a YAML file, then dotted overrides.

    Args:
        path: a YAML file setting any subset of the fields (None: none).
        overrides: dotted names (``"optim.epochs"``) to values, e.g. from CLI flags; ``None``
            values are ignored.
        preset: a shipped configuration under the file (``"paper"``: the published settings).
    """
    raw: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise input_error(None, "--preset", f"unknown preset {preset!r}", f"use one of: {', '.join(PRESETS)}")
        raw = _read_yaml(PRESETS_DIR / f"{preset}.yaml")
    if path is not None:
        raw = _merge(raw, _read_yaml(Path(path)))
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise input_error(path or "command line", None, _format_validation_error(error), "see README, Configuration") from None


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
