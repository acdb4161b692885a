from pathlib import Path

import pytest
import yaml

from cryodomain.errors import InputError
from cryodomain.workflows.config import PRESETS, PRESETS_DIR, RunConfig, load_config, save_config, with_epochs_for

# Every value the paper preset sets, as /work/shared/METHOD.md ("The cryoSPHERE method as
# published"; defaults in brackets there) states it, section by section. Written out here, not
# read from the YAML, so that a drift of data/presets/paper.yaml fails.
PUBLISHED = {
    # "Representation": one pseudo-atom per residue, on CA (C1' for nucleotides); common width sigma [2 Å].
    "model.gaussian_at": "ca",
    "model.sigma_A": 2.0,
    "model.gaussian_width": "sigma",
    # "Encoder and latent": amortised q(z | Y_n), an MLP [hidden 512, 256, 64, 64] on the flattened
    # (unshifted, masked) image alone, s = ELU(.) + 1 (no scale on it), latent dimension [8].
    "model.amortized": True,
    "model.encoder_hidden": [512, 256, 64, 64],
    "model.encoder_input": "image",
    "model.encoder_pose": False,
    "model.latent_std_scale": 1.0,
    "model.latent_dim": 8,
    "data.centre_encoder_input": False,
    # "Decoder": MLP(z) [hidden 512, 512].
    "model.decoder_hidden": [512, 512],
    # "Segmentation": tau [0.05]; variational means and stds (learned); start values "uniform" with
    # stds 10 (centres), 10 (widths), 1 (proportion logits).
    "model.tau": 0.05,
    "model.learn_segment_stds": True,
    "model.learn_segmentation": True,
    # One segmentation learned from the start (no first phase that searches for the boundaries).
    "model.search.enabled": False,
    "model.init.centre_std": 10.0,
    "model.init.width_std": 10.0,
    "model.init.proportion_std": 1.0,
    # "Deformation": rotations about the origin.
    "model.rotate_about": "origin",
    # "Training defaults": K [20].
    "model.n_segments": 20,
    # "Loss": KL_z, KL_c, KL_v linear, KL_p cyclical (M 5, R 0.5), continuity and clash constant 0.1,
    # L2 constant 1e-6; the clash cutoff c [4 Å]. METHOD.md names the light clash version (pairs 4-10 Å
    # apart in S0) without saying it is the default: "light" is the preset's reading of the reference code.
    "loss.latent_kl.kind": "linear",
    "loss.latent_kl.value": 1.0,
    "loss.centres_kl.kind": "linear",
    "loss.centres_kl.value": 1.0,
    "loss.widths_kl.kind": "linear",
    "loss.widths_kl.value": 1.0,
    "loss.proportions_kl.kind": "cyclical",
    "loss.proportions_kl.value": 1.0,
    "loss.proportions_kl.n_cycles": 5,
    "loss.proportions_kl.ramp_fraction": 0.5,
    "loss.continuity.kind": "constant",
    "loss.continuity.value": 0.1,
    "loss.clash.kind": "constant",
    "loss.clash.value": 0.1,
    "loss.l2.kind": "constant",
    "loss.l2.value": 1e-6,
    "loss.clash_mode": "light",
    "loss.clash_cutoff_A": 4.0,
    # "Image formation", 5: low-pass filter and mask are optional (off), no coarse-to-fine schedule.
    "data.lowpass_A": None,
    "data.lowpass_final_A": None,
    "data.mask_radius_fraction": None,
    # "Training defaults": Adam, learning rate [3e-5] for encoder and decoder, [3e-4] for the
    # segmentation (constant: no schedule is published), batch [128], epochs [300].
    "optim.lr": 3e-5,
    "optim.segmentation_lr": 3e-4,
    "optim.lr_schedule": "constant",
    "optim.warmup_epochs": 0.0,
    "optim.batch_size": 128,
    "optim.epochs": 300,
}


def dotted(mapping: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_the_paper_preset_holds_every_published_setting():
    written = dotted(yaml.safe_load((PRESETS_DIR / "paper.yaml").read_text()))
    # Every value of the file is a published one, and every published one is in the file.
    assert set(written) == set(PUBLISHED)
    for name, value in PUBLISHED.items():
        assert written[name] == value, name
    # The preset is what --preset paper trains with.
    config = dotted(load_config(None, preset="paper").model_dump(mode="json"))
    for name, value in PUBLISHED.items():
        assert config[name] == value, name


def test_the_paper_presets_linear_weights_ramp_over_half_the_epochs():
    # METHOD.md, "Loss": linear is min(epoch / M, 1) with M half the epochs by default.
    config = load_config(None, preset="paper")
    for name in ("latent_kl", "centres_kl", "widths_kl"):
        schedule = getattr(config.loss, name)
        assert schedule(75, 300) == pytest.approx(0.5) and schedule(150, 300) == 1.0 and schedule(299, 300) == 1.0, name
    # Cyclical with 5 cycles of 60 epochs, ramping over the first half of each.
    assert config.loss.proportions_kl(15, 300) == pytest.approx(0.5) and config.loss.proportions_kl(90, 300) == pytest.approx(1.0)
    assert config.loss.proportions_kl(60, 300) == 0.0


def test_a_file_and_flags_override_the_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.001\n")
    config = load_config(path, {"optim.epochs": 9}, preset="paper")
    assert config.optim.lr == 0.001 and config.optim.epochs == 9 and config.optim.batch_size == 128
    with pytest.raises(InputError, match="--preset"):
        load_config(None, preset="fast")
    assert PRESETS == ("paper",)


def test_defaults_are_the_measured_best_settings():
    config = RunConfig()
    assert config.model.gaussian_at == "split" and config.model.gaussian_width == "atoms" and config.model.sigma_A == 2.0
    assert config.model.tau == 0.2 and config.loss.clash.value == 0.01 and config.model.rotate_about == "segment"
    assert config.model.encoder_input == "residual" and config.model.encoder_pose and not config.model.learn_segment_stds
    assert config.model.init.centre_std == 0.1 and config.model.init.width_std == 0.1 and config.model.init.proportion_std == 0.01
    assert config.model.n_segments == 16 and config.model.latent_dim == 4
    assert config.data.lowpass_A == 10.0 and config.data.lowpass_final_A == 6.0
    assert config.optim.lr_schedule == "cosine" and config.optim.batch_size == 32
    assert config.loss.latent_kl.value == 4.0 and load_config(None, preset="paper").loss.latent_kl.value == 1.0
    # The parts of a segmentation start with the same small stds.
    assert load_config(None, {"model.parts": [{"chain": "A", "n_segments": 2}]}).model.parts[0].init.width_std == 0.1


def test_default_epochs_follow_the_data_size():
    config = RunConfig()
    assert config.optim.epochs is None
    assert with_epochs_for(config, 5000).optim.epochs == 160
    assert with_epochs_for(config, 100).optim.epochs == 300
    assert with_epochs_for(config, 1_000_000).optim.epochs == 10
    assert with_epochs_for(load_config(None, {"optim.epochs": 7}), 5000).optim.epochs == 7


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "optim:\n  epochs: 7\n  lr: 0.001\nmodel:\n  parts:\n    - chain: A\n      first_residue: 10\n      last_residue: 80\n      n_segments: 3\n"
    )
    config = load_config(path, {"optim.epochs": 9, "optim.batch_size": None})
    assert config.optim.epochs == 9 and config.optim.lr == 0.001 and config.optim.batch_size == 32
    assert config.model.parts[0].chain == "A" and config.model.parts[0].n_segments == 3


def test_start_values_given_in_a_file_keep_the_start_stds(tmp_path):
    # Giving only centres and widths must not bring back the prior's 10-residue jitter.
    path = tmp_path / "c.yaml"
    path.write_text(
        "model:\n  n_segments: 2\n  init:\n    centres: [10, 30]\n    widths: [20, 20]\n"
        "  parts:\n    - chain: A\n      n_segments: 2\n      init: {centres: [5, 15]}\n      prior: {centres: [5, 15]}\n"
    )
    config = load_config(path, {})
    for values in (config.model.init, config.model.parts[0].init):
        assert (values.centre_std, values.width_std, values.proportion_std) == (0.1, 0.1, 0.01)
    prior = config.model.parts[0].prior
    assert (prior.centre_std, prior.width_std, prior.proportion_std) == (10.0, 10.0, 1.0)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, {"optim.seed": 5, "model.n_segments": 4})
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    "text, names",
    [
        ("optim:\n  epochz: 3\n", "optim.epochz"),
        ("optim:\n  epochs: -1\n", "optim.epochs"),
        ("optim:\n  batch_size: many\n", "optim.batch_size"),
        ("model:\n  parts:\n    - chain: A\n      n_segments: 2\n      init: {centres: [1, 2, 3]}\n", "model.parts"),
        ("- a list\n", "mapping"),
        ("optim: [unclosed\n", "YAML"),
    ],
)
def test_bad_configs_are_one_line_input_errors(tmp_path, text, names):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        load_config(path)
    message = str(error.value)
    assert "bad.yaml" in message and names in message and "\n" not in message


def test_the_readme_states_the_defaults():
    # README, Configuration: the YAML block under "The defaults:" is what RunConfig() holds, key by
    # key (its parts entry is an example of the syntax: by default there are no parts).
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("The defaults:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    stated = dotted(yaml.safe_load(block))
    defaults = dotted(RunConfig().model_dump(mode="json"))
    assert stated.pop("model.parts") and defaults["model.parts"] is None
    assert len(stated) > 50
    for name, value in stated.items():
        assert name in defaults, f"README names {name}, which is not a setting"
        assert defaults[name] == value, f"README says {name}: {value}, the default is {defaults[name]}"
