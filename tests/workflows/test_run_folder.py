"""The run folder: what may be written there, the log, metrics.csv and checkpoints."""

import logging

import pytest
import torch

from cryodomain.errors import InputError
from cryodomain.workflows.config import load_config
from cryodomain.workflows.objective import TERM_NAMES, WEIGHTED_TERMS
from cryodomain.workflows.run_folder import RUN_FILES, MetricsLog, RunFolder, check_resumable, checkpoint_interval, collect_log, keeps_epoch, load_checkpoint

log = logging.getLogger("cryodomain.tests.run_folder")


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_folder_holding_a_run_is_refused_unless_resuming_or_forced(tmp_path, name):
    if name == "checkpoints":
        (tmp_path / name).mkdir()
    else:
        (tmp_path / name).write_text("x")
    folder = RunFolder(tmp_path)
    with pytest.raises(InputError, match=rf"{name}.*--resume.*--force"):
        folder.check_available(resume=False, force=False)
    folder.check_available(resume=True, force=False)
    folder.check_available(resume=False, force=True)


def test_an_empty_or_missing_folder_is_available_and_a_file_is_refused(tmp_path):
    RunFolder(tmp_path).check_available(resume=False, force=False)
    RunFolder(tmp_path / "new").check_available(resume=False, force=False)
    (tmp_path / "other.txt").write_text("not a run")
    RunFolder(tmp_path).check_available(resume=False, force=False)  # other files are no run
    (tmp_path / "afile").write_text("")
    for resume, force in ((False, False), (True, False), (False, True)):
        with pytest.raises(InputError, match="afile: -o: is a file"):
            RunFolder(tmp_path / "afile").check_available(resume=resume, force=force)


def test_clear_removes_the_run_outputs_and_nothing_else(tmp_path):
    for name in ("last.pt", "metrics.csv", "config.yaml", "train.log", "notes.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "checkpoints").mkdir()
    for name in ("epoch_0001.pt", "epoch_0002.pt", "mine.pt"):
        (tmp_path / "checkpoints" / name).write_text(name)
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events").write_text("")
    RunFolder(tmp_path).clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "notes.txt"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["mine.pt"]
    assert (tmp_path / "notes.txt").read_text() == "notes.txt"
    RunFolder(tmp_path / "missing").clear()  # nothing to clear is fine


def test_prepare_writes_the_config_and_drops_stale_temporaries(tmp_path):
    config = load_config(None, {"optim.epochs": 7, "model.n_segments": 4, "loss.clash_mode": "off"})
    folder = RunFolder(tmp_path / "run")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    stale = [tmp_path / "run" / ".last.abcd1234.tmp.pt", tmp_path / "run" / "checkpoints" / ".epoch_0003.x1y2z3w4.tmp.pt"]
    for path in stale:
        path.write_bytes(b"partial")
    kept = tmp_path / "run" / ".hidden_user_file"
    kept.write_text("mine")
    folder.prepare(config, start_epoch=0)
    assert not any(path.exists() for path in stale)
    assert kept.read_text() == "mine"
    assert load_config(tmp_path / "run" / "config.yaml") == config


def test_prepare_keeps_the_metrics_up_to_the_start_epoch(tmp_path):
    folder = RunFolder(tmp_path)
    for epoch in (1, 2, 3):
        folder.metrics.append(metrics_row(epoch))
    folder.prepare(load_config(None), start_epoch=2)
    assert [row["epoch"] for row in folder.metrics.read()] == ["1", "2"]


def read_messages(path):
    return [line.split("  ", 1)[1] for line in path.read_text().splitlines()]


def test_log_file_writes_the_collected_records_first_and_appends_on_resume(tmp_path):
    log.setLevel(logging.INFO)
    folder = RunFolder(tmp_path / "run")
    with collect_log() as earlier:
        log.info("preflight")
    log.info("not collected")  # after the collection, before the file: nowhere
    with folder.log_file(append=False, earlier=earlier):
        log.info("epoch 1")
    log.info("after the file closed")
    assert read_messages(tmp_path / "run" / "train.log") == ["preflight", "epoch 1"]
    with folder.log_file(append=True):
        log.info("resumed")
    assert read_messages(tmp_path / "run" / "train.log") == ["preflight", "epoch 1", "resumed"]
    with folder.log_file(append=False):
        log.info("started over")
    assert read_messages(tmp_path / "run" / "train.log") == ["started over"]
    with folder.log_file(append=False, enabled=False):
        log.info("another process")
    assert read_messages(tmp_path / "run" / "train.log") == ["started over"]


def metrics_row(epoch: int) -> dict[str, float]:
    row = {"epoch": epoch, "total": 1.0 / epoch, "seconds": 2.5, "unused": 9.0}
    row.update({name: epoch + k / 10 for k, name in enumerate(TERM_NAMES)})
    row.update({f"beta_{term.name}": 0.5 for term in WEIGHTED_TERMS})
    return row


def test_metrics_columns_rows_and_truncation(tmp_path):
    metrics = MetricsLog(tmp_path / "metrics.csv")
    expected_columns = ["epoch", "total", *TERM_NAMES, *(f"beta_{term.name}" for term in WEIGHTED_TERMS), "seconds"]
    assert metrics.columns == expected_columns
    assert "beta_correlation" not in metrics.columns and len(set(metrics.columns)) == len(metrics.columns)
    assert metrics.read() == []
    for epoch in (1, 2, 3, 4):
        metrics.append(metrics_row(epoch))
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == expected_columns
    rows = metrics.read()
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]
    assert float(rows[1]["total"]) == 0.5 and float(rows[1][TERM_NAMES[1]]) == pytest.approx(2.1)
    metrics.truncate(2)
    assert [row["epoch"] for row in metrics.read()] == ["1", "2"]
    metrics.truncate(0)
    assert metrics.read() == []
    with pytest.raises(KeyError):
        metrics.append({"epoch": 1})


def test_a_checkpoint_goes_to_its_epoch_file_and_last_pt_with_the_same_bytes(tmp_path):
    folder = RunFolder(tmp_path)
    keys = ("model", "optimizer", "scale", "particles", "structure")
    state = {"epoch": 3, "weights": torch.arange(6.0), "config": {"a": 1}, **dict.fromkeys(keys, 0)}
    written = folder.save_checkpoint(state, 3)
    assert written == tmp_path / "checkpoints" / "epoch_0003.pt"
    assert written.read_bytes() == (tmp_path / "last.pt").read_bytes()
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["epoch"] == 3 and loaded["config"] == {"a": 1} and torch.equal(loaded["weights"], torch.arange(6.0))
    # Inside epoch 4: only last.pt changes.
    epoch_bytes = written.read_bytes()
    assert folder.save_checkpoint({**state, "position": 5}, 3, mid_epoch=True) == tmp_path / "last.pt"
    assert written.read_bytes() == epoch_bytes
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0003.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["position"] == 5
    assert not list(tmp_path.glob(".*.tmp*")) and not list((tmp_path / "checkpoints").glob(".*.tmp*"))


def test_an_epoch_that_is_not_kept_writes_only_last_pt(tmp_path):
    folder = RunFolder(tmp_path)
    state = {"epoch": 1, "weights": torch.arange(3.0)}
    folder.save_checkpoint(state, 1)
    assert folder.save_checkpoint({**state, "epoch": 2}, 2, keep=False) == tmp_path / "last.pt"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_0001.pt"]
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 2


def kept(epochs, every=None):
    return [epoch for epoch in range(1, epochs + 1) if keeps_epoch(epoch, epochs, every)]


def test_a_run_keeps_about_ten_epoch_checkpoints_and_always_the_final_one():
    # A default 300-epoch run: 10 files of ~30 MB, not 300.
    assert checkpoint_interval(300) == 30
    assert kept(300) == list(range(30, 301, 30))
    for epochs in range(1, 401):
        epoch_files = kept(epochs)
        assert epoch_files[-1] == epochs and len(epoch_files) <= 10, epochs
        assert len(epoch_files) >= min(epochs, 5), epochs
    assert kept(7) == list(range(1, 8))  # short runs keep every epoch
    assert kept(95) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95]


def test_checkpoint_every_sets_the_kept_epochs():
    assert kept(20, every=7) == [7, 14, 20]
    assert kept(6, every=1) == [1, 2, 3, 4, 5, 6]
    assert kept(5, every=50) == [5]


def test_checkpoint_every_must_be_at_least_one():
    assert load_config(None, {"optim.checkpoint_every": 3}).optim.checkpoint_every == 3
    for bad in (0, -2):
        with pytest.raises(InputError, match="optim.checkpoint_every"):
            load_config(None, {"optim.checkpoint_every": bad})


def test_an_unreadable_checkpoint_is_an_input_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InputError, match="garbage.pt: cannot be read as a checkpoint"):
        load_checkpoint(garbage)
    RunFolder(tmp_path).save_checkpoint({"epoch": 1, "weights": torch.zeros(1000)}, 1)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "last.pt").read_bytes()[:300])
    with pytest.raises(InputError, match="truncated.pt"):
        load_checkpoint(truncated)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match="empty.pt"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(InputError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("content", [{"weights": torch.zeros(3)}, [1, 2, 3]], ids=["state_dict", "list"])
def test_a_torch_file_that_is_not_a_checkpoint_is_an_input_error(tmp_path, content):
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt"):
        load_checkpoint(tmp_path / "other.pt")


def resumable(overrides=None, **entries):
    inputs = {"n_particles": 48, "n_residues": 352, "box": 32, "config": load_config(None, overrides).model_dump(mode="json")}
    return {**inputs, **entries}


def test_check_resumable_refuses_another_model_or_data_shape(tmp_path):
    path = tmp_path / "last.pt"
    state = {**resumable({"model.n_segments": 3}), "position": None}
    check_resumable(state, resumable({"model.n_segments": 3}), path)
    # Another optimisation is fine between epochs (a longer run, another learning rate).
    check_resumable(state, resumable({"model.n_segments": 3, "optim.epochs": 500, "optim.lr": 1e-2}), path)
    with pytest.raises(InputError, match=r"last.pt: model.n_segments: .*3.*5"):
        check_resumable(state, resumable({"model.n_segments": 5}), path)
    with pytest.raises(InputError, match="model.latent_dim"):
        check_resumable(state, resumable({"model.n_segments": 3, "model.latent_dim": 6}), path)
    with pytest.raises(InputError, match="n_particles: .*48 particles.*50"):
        check_resumable(state, resumable({"model.n_segments": 3}, n_particles=50), path)
    with pytest.raises(InputError, match="box"):
        check_resumable(state, resumable({"model.n_segments": 3}, box=64), path)


def test_a_run_stopped_inside_an_epoch_resumes_only_with_its_batch_size_and_seed(tmp_path):
    path = tmp_path / "last.pt"
    state = {**resumable({"optim.batch_size": 16}), "position": {"batch": 2}}
    check_resumable(state, resumable({"optim.batch_size": 16, "optim.epochs": 9}), path)
    with pytest.raises(InputError, match="optim.batch_size: .*16.*32"):
        check_resumable(state, resumable({"optim.batch_size": 32}), path)
    with pytest.raises(InputError, match="optim.seed"):
        check_resumable(state, resumable({"optim.batch_size": 16, "optim.seed": 1}), path)
    # Between epochs the batch size may change.
    check_resumable({**state, "position": None}, resumable({"optim.batch_size": 32}), path)
