import pytest

from cryodomain.errors import InputError
from cryodomain.workflows.config import PRESETS, RunConfig, load_config, save_config, with_epochs_for


def test_the_paper_preset_holds_the_published_settings():
    config = load_config(None, preset="paper")
    assert config.optim.lr == 3e-5 and config.optim.segmentation_lr == 3e-4 and config.optim.lr_schedule == "constant"
    assert config.optim.batch_size == 128 and config.optim.epochs == 300
    assert config.model.rotate_about == "origin" and config.model.encoder_input == "image" and not config.model.encoder_pose
    assert config.model.latent_std_scale == 1.0 and config.model.init.centre_std == 10.0 and config.model.init.width_std == 10.0
    assert config.data.lowpass_A is None and not config.data.centre_encoder_input
    assert config.model.n_segments == 20 and config.model.latent_dim == 8 and config.model.tau == 0.05
    assert config.model.encoder_hidden == [512, 256, 64, 64] and config.model.decoder_hidden == [512, 512]
    assert config.loss.latent_kl.kind == "linear" and config.loss.proportions_kl.kind == "cyclical"
    assert config.loss.continuity.value == 0.1 and config.loss.clash.value == 0.1 and config.loss.l2.value == 1e-6


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
    assert config.model.gaussian_at == "centroid" and config.model.rotate_about == "segment"
    assert config.model.encoder_input == "residual" and config.model.encoder_pose and not config.model.learn_segment_stds
    assert config.model.init.centre_std == 1.0 and config.model.n_segments == 16 and config.model.latent_dim == 4
    assert config.data.lowpass_A == 10.0 and config.optim.lr_schedule == "cosine" and config.optim.batch_size == 32
    # The parts of a segmentation start with the same small stds.
    assert load_config(None, {"model.parts": [{"chain": "A", "n_segments": 2}]}).model.parts[0].init.width_std == 1.0


def test_default_epochs_follow_the_data_size():
    config = RunConfig()
    assert config.optim.epochs is None
    assert with_epochs_for(config, 5000).optim.epochs == 80
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
