"""Bad configurations and run folders: refused with the key's name, exit 2, nothing written."""

import pytest

from cryodomain.errors import InputError
from cryodomain.workflows.config import load_config


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("optim: {epoch: 3}\n", "optim.epoch: unknown key"),
        ("training: {epochs: 3}\n", "training: unknown key"),
        ("optim: {batch_size: many}\n", "optim.batch_size"),
        ("optim: {batch_size: 0}\n", "optim.batch_size: Input should be greater than 0"),
        ("optim: {lr: -0.001}\n", "optim.lr"),
        ("optim: {grad_clip: 0}\n", "optim.grad_clip"),
        ("model: {latent_dim: 0}\n", "model.latent_dim"),
        ("model: {encoder_hidden: [64, 0]}\n", "model.encoder_hidden.1"),
        ("model: {sigma_A: -2}\n", "model.sigma_A"),
        ("data: {mask_radius_fraction: 1.5}\n", "data.mask_radius_fraction"),
        ("loss: {clash: {kind: sometimes, value: 1}}\n", "loss.clash.kind"),
        ("optim: [1, 2]\n", "optim"),
        ("- just\n- a list\n", "must be a mapping"),
        ("optim: {epochs: 3\n", "not valid YAML"),
    ],
)
def test_bad_config_files(tmp_path, tiny_simulation, train_cli, yaml_text, expected):
    from reliability_helpers import assert_one_line_error

    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    status, lines = train_cli(tiny_simulation["star"], "--config", str(config), run=tmp_path / "run")
    line = assert_one_line_error(status, lines, "bad.yaml", expected)
    assert not (tmp_path / "run").exists(), line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--epochs", "0"), "optim.epochs"),
        (("--batch-size", "-4"), "optim.batch_size"),
        (("--latent-dim", "0"), "model.latent_dim"),
        (("--lr", "0"), "optim.lr"),
    ],
)
def test_bad_values_on_the_command_line(tmp_path, tiny_simulation, refused, flags, expected):
    refused(tiny_simulation["star"], expected, flags=flags)


def test_missing_config_file(tmp_path, tiny_simulation, refused):
    refused(tiny_simulation["star"], "missing.yaml", "cannot read config", flags=("--config", str(tmp_path / "missing.yaml")))


def test_batch_larger_than_the_dataset(tiny_simulation, refused):
    refused(tiny_simulation["star"], "optim.batch_size", "500 is larger than the 48 particles", flags=("--batch-size", "500"))


def test_a_config_is_checked_where_it_is_loaded(tmp_path):
    with pytest.raises(InputError, match="optim.epochs: unknown key|optim.epoch: unknown key"):
        load_config(None, {"optim.epoch": 3})


# Run folders


def fake_run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("optim: {epochs: 7}\n")
    (folder / "last.pt").write_bytes(b"previous run")
    (folder / "checkpoints" / "epoch_0007.pt").write_bytes(b"previous run")
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("marker", ["last.pt", "config.yaml", "checkpoints"])
def test_a_folder_holding_another_run_is_refused(tmp_path, tiny_simulation, train_cli, marker):
    from reliability_helpers import assert_one_line_error

    run = tmp_path / "run"
    run.mkdir()
    (run / marker).mkdir() if marker == "checkpoints" else (run / marker).write_text("x")
    status, lines = train_cli(tiny_simulation["star"], run=run)
    assert_one_line_error(status, lines, str(run), "already holds a run", marker, "--resume", "--force")
    assert sorted(p.name for p in run.iterdir()) == [marker]


def test_output_that_is_a_file(tmp_path, tiny_simulation, train_cli):
    from reliability_helpers import assert_one_line_error

    target = tmp_path / "run"
    target.write_text("not a folder")
    assert_one_line_error(*train_cli(tiny_simulation["star"], run=target), "-o", "is a file")


def test_force_with_bad_input_keeps_the_previous_run(tmp_path, star_variant, train_cli):
    from reliability_helpers import assert_one_line_error

    run = tmp_path / "run"
    before = fake_run(run)
    bad = star_variant(lambda blocks: blocks["optics"].__setitem__("rlnVoltage", 0.0))
    assert_one_line_error(*train_cli(bad, "--force", run=run), "rlnVoltage")
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


def test_force_replaces_the_previous_run(tmp_path, tiny_simulation, train_cli):
    import torch

    run = tmp_path / "run"
    fake_run(run)
    status, lines = train_cli(tiny_simulation["star"], "--force", "--epochs", "1", run=run)
    assert status == 0, lines
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0001.pt"]
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 1
    assert "epochs: 1" in (run / "config.yaml").read_text()


def test_unwritable_output_folder(tmp_path, tiny_simulation, train_cli, monkeypatch):
    import errno
    from pathlib import Path

    from reliability_helpers import assert_one_line_error

    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "run":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert_one_line_error(*train_cli(tiny_simulation["star"], run=tmp_path / "run"), "run", "cannot write (Permission denied)")


@pytest.mark.parametrize("box", ["64", "8"])
def test_downsample_box_outside_the_images(tiny_simulation, refused, box):
    refused(tiny_simulation["star"], "--downsample", f"{box} px is not between 16 and the box 32", flags=("--downsample", box))
