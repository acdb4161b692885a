"""Progress: a live bar on a terminal; in a log or a pipe, logged lines with the real count."""

import io
import logging
import sys

import pytest

import cryodomain.progress as progress_module
from cryodomain.progress import Progress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "cryodomain.progress"]


@pytest.fixture
def every_step(monkeypatch):
    """A logged line (or a redraw of the bar) at every step, as a long loop gets them."""
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)
    monkeypatch.setattr(progress_module, "BAR_INTERVAL_S", 0.0)


def test_away_from_a_terminal_lines_are_logged_with_the_real_count_and_no_bar(monkeypatch, caplog, every_step):
    stderr = Pipe()
    monkeypatch.setattr(sys, "stderr", stderr)
    with caplog.at_level(logging.INFO):
        shown = Progress("epoch 2/5", 4, initial=1, items="images")
        for loss in (0.3, 0.2, 0.1):
            shown.advance(16, f"loss {loss}")
        shown.close()
    lines = messages(caplog)
    assert [line.split("  ")[:2] for line in lines] == [["epoch 2/5", f"{step}/4 steps"] for step in (2, 3, 4)]
    assert lines[-1].endswith("images/s  loss 0.1")
    assert shown.counts().startswith("4/4 steps") and shown.items == 48
    assert stderr.getvalue() == ""  # no bar redraws in the log


def test_a_short_loop_away_from_a_terminal_logs_nothing_between_intervals(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", Pipe())
    with caplog.at_level(logging.INFO):
        shown = Progress("epoch 1/1", 3, items="images")
        for _ in range(3):
            shown.advance(8)
    assert messages(caplog) == []  # well under LOG_INTERVAL_S
    assert shown.counts().startswith("3/3 steps")


def test_on_a_terminal_the_bar_counts_and_nothing_is_logged(monkeypatch, caplog, every_step):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO):
        shown = Progress("epoch 1/1", 3, items="images")
        for _ in range(3):
            shown.advance(8, "loss 0.5")
        shown.close()
    assert messages(caplog) == []
    assert "3/3" in terminal.getvalue() and "loss 0.5" in terminal.getvalue()


def test_a_disabled_progress_shows_and_logs_nothing_but_counts(monkeypatch, caplog, every_step):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO):
        shown = Progress("epoch 1/1", 2, enabled=False)
        shown.advance(4)
        shown.close()
    assert messages(caplog) == [] and terminal.getvalue() == ""
    assert shown.counts().startswith("1/2 steps")


def test_progress_bar_yields_every_item_and_logs_its_count_away_from_a_terminal(monkeypatch, caplog, every_step):
    monkeypatch.setattr(sys, "stderr", Pipe())
    with caplog.at_level(logging.INFO):
        assert list(progress_bar(range(3), "structures")) == [0, 1, 2]
    assert [line.split("  ")[:2] for line in messages(caplog)] == [["structures", f"{step}/3 steps"] for step in (1, 2, 3)]
