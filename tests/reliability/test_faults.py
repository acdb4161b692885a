"""Faults during training lose nothing: signals, NaN losses, bad images met late, a full disk."""

import errno
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from reliability_helpers import (
    STEPS_PER_EPOCH,
    assert_one_line_error,
    assert_same_model,
    load_state,
    metric_totals,
    stack_images,
)

import cryodomain.workflows.inputs as inputs_module
import cryodomain.workflows.objective as objective_module
import cryodomain.workflows.train as train_module
from cryodomain.commands.main import main
from cryodomain.errors import InputError
from cryodomain.examples import STATE_A
from cryodomain.io.atomic import atomic_output
from cryodomain.workflows.config import load_config
from cryodomain.workflows.inputs import build_model, load_training_data
from cryodomain.workflows.run_folder import load_checkpoint
from cryodomain.workflows.signals import TrainingInterrupted
from cryodomain.workflows.train import train


def signal_at_step(monkeypatch, signal_number: int, call: int) -> None:
    """Send ``signal_number`` to this process during the ``call``-th training step (1-based)."""
    original = train_module.compute_losses
    calls = {"n": 0}

    def compute_and_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal_number)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_losses", compute_and_signal)


def cli(*args) -> list[str]:
    return [str(arg) for arg in args]


def test_sigterm_mid_epoch_saves_the_position_and_resume_gives_the_same_bits(tmp_path, tiny_simulation, fault_config, reference_run, monkeypatch):
    run = tmp_path / "run"
    config = load_config(fault_config)
    signal_at_step(monkeypatch, signal.SIGTERM, STEPS_PER_EPOCH + 3)  # epoch 2, step 3
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM after step 3 of epoch 2.*--resume") as stopped:
        train(tiny_simulation["star"], STATE_A, run, config, progress=False)
    assert stopped.value.signal_number == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    state = load_state(run / "last.pt")
    assert state["epoch"] == 1 and state["position"]["step"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0001.pt"]

    monkeypatch.undo()
    other_batches = load_config(fault_config, {"optim.batch_size": 12})
    with pytest.raises(InputError, match="optim.batch_size: the run stopped inside an epoch with 8"):
        train(tiny_simulation["star"], STATE_A, run, other_batches, progress=False, resume=True)
    train(tiny_simulation["star"], STATE_A, run, config, progress=False, resume=True)
    assert_same_model(run / "last.pt", reference_run / "last.pt")
    assert metric_totals(run) == metric_totals(reference_run)


def test_sigint_through_the_command_exits_130_and_resumes_exactly(tmp_path, tiny_simulation, fault_config, reference_run, monkeypatch, capsys):
    run = tmp_path / "run"
    args = cli("train", tiny_simulation["star"], "--structure", STATE_A, "-o", run, "--config", fault_config)
    signal_at_step(monkeypatch, signal.SIGINT, STEPS_PER_EPOCH)  # the last step of epoch 1
    assert main(args) == 130
    stderr = capsys.readouterr().err
    assert "cryodomain train: stopped by SIGINT after epoch 1; progress saved in" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert load_state(run / "last.pt")["position"] is None

    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert_same_model(run / "last.pt", reference_run / "last.pt")
    assert metric_totals(run) == metric_totals(reference_run)
    log = (run / "train.log").read_text()
    assert "preflight" in log and "resuming after epoch 1" in log


def test_nan_loss_names_the_term_and_step_and_keeps_the_last_checkpoint(tmp_path, tiny_simulation, fault_config, reference_run, monkeypatch, capsys):
    original = objective_module.clash_loss
    calls = {"n": 0}

    def clash_turning_nan(*args, **kwargs):
        calls["n"] += 1
        value = original(*args, **kwargs)
        return value * float("nan") if calls["n"] == STEPS_PER_EPOCH + 2 else value

    monkeypatch.setattr(objective_module, "clash_loss", clash_turning_nan)
    run = tmp_path / "run"
    status = main(cli("train", tiny_simulation["star"], "--structure", STATE_A, "-o", run, "--config", fault_config))
    lines = capsys.readouterr().err.strip().splitlines()
    assert_one_line_error(status, lines, "loss term clash", "is nan at epoch 2, step 2", "last.pt (epoch 1)", "optim.grad_clip", "--resume")
    assert_same_model(run / "last.pt", reference_run / "checkpoints" / "epoch_0001.pt")
    assert metric_totals(run) == metric_totals(reference_run)[:1]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_nan_image_missed_by_the_preflight_sample_is_named_in_training(tmp_path, star_variant, tiny_simulation, fault_config, monkeypatch):
    images = stack_images(tiny_simulation)
    images[30, 5, 5] = float("nan")
    monkeypatch.setattr(inputs_module, "check_pixel_sample", lambda *args, **kwargs: None)
    with pytest.raises(InputError, match=r"particles.star: particle row 31 \(000031@.*particles.mrcs\): image has NaN or infinite pixels"):
        train(star_variant(images=images), STATE_A, tmp_path / "run", load_config(fault_config), progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_disk_full_while_writing_last_pt_keeps_the_previous_one(tmp_path, tiny_simulation, fault_config, reference_run, monkeypatch, capsys):
    write_bytes = Path.write_bytes
    last_writes = []

    def full_disk_for_the_second_last_pt(self, data):
        # last.pt is written after every epoch (through a temporary beside it): fail the second one.
        if self.name.startswith("last.") or self.name.startswith(".last."):
            last_writes.append(self.name)
            if len(last_writes) == 2:
                write_bytes(self, bytes(data)[:100])  # a partial write, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk_for_the_second_last_pt)
    run = tmp_path / "run"
    args = cli("train", tiny_simulation["star"], "--structure", STATE_A, "-o", run, "--config", fault_config)
    lines = (main(args), capsys.readouterr().err.strip().splitlines())
    assert_one_line_error(*lines, "last.pt: checkpoint not saved (No space left on device)", "still holds the previous checkpoint", "--resume")
    assert len(last_writes) == 2  # the failure hit the write of last.pt itself
    # The previous last.pt is whole: it loads as the checkpoint of epoch 1, byte for byte.
    previous = load_checkpoint(run / "last.pt")
    assert previous["epoch"] == 1 and previous["position"] is None
    assert (run / "last.pt").read_bytes() == (run / "checkpoints" / "epoch_0001.pt").read_bytes()
    assert_same_model(run / "last.pt", reference_run / "checkpoints" / "epoch_0001.pt")
    assert not [p.name for p in run.rglob("*") if p.is_file() and ".tmp" in p.name]

    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert_same_model(run / "last.pt", reference_run / "last.pt")
    assert metric_totals(run) == metric_totals(reference_run)


def test_atomic_output_turns_a_full_disk_into_an_input_error(tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("previous")
    with pytest.raises(InputError, match=r"result.csv: cannot write \(No space left on device\)"), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]


def test_gradient_clipping_limits_the_updates(tmp_path, tiny_simulation, tiny_config_overrides):
    overrides = {**tiny_config_overrides, "optim.epochs": 1, "optim.device": "cpu"}
    config = load_config(None, overrides)
    torch.manual_seed(config.optim.seed)
    initial = build_model(load_training_data(tiny_simulation["star"], STATE_A, config), config).state_dict()

    def largest_change(clip):
        run = tmp_path / f"clip_{clip}"
        train(tiny_simulation["star"], STATE_A, run, load_config(None, {**overrides, "optim.grad_clip": clip}), progress=False)
        final = load_state(run / "last.pt")["model"]
        return max(float((final[key] - value).abs().max()) for key, value in initial.items() if value.is_floating_point())

    # Adam divides by the gradient's scale, so only gradients far below its eps (1e-8) slow it down.
    clipped, free = largest_change(1e-12), largest_change(None)
    assert clipped < 1e-6 and free > 1e-4


def test_resuming_with_another_model_configuration_is_refused(tmp_path, tiny_simulation, fault_config, reference_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = (run / "last.pt").read_bytes()
    status = main(cli("train", tiny_simulation["star"], "--structure", STATE_A, "-o", run, "--resume", "--latent-dim", "3"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert_one_line_error(status, lines, "last.pt", "model.latent_dim", "trained with 2", "says 3")
    assert (run / "last.pt").read_bytes() == before


def test_an_unreadable_checkpoint_is_a_clear_error(tmp_path, tiny_simulation, fault_config, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"\x00" * 64)
    status = main(cli("train", tiny_simulation["star"], "--structure", STATE_A, "-o", run, "--config", fault_config, "--resume"))
    assert_one_line_error(status, capsys.readouterr().err.strip().splitlines(), "last.pt", "cannot be read as a checkpoint", "--force")
