import pytest

from cryodomain.model.schedules import BetaSchedule


def test_constant_schedule_is_the_value_at_every_epoch():
    schedule = BetaSchedule(kind="constant", value=0.1)
    assert [schedule(epoch, 300) for epoch in (0, 1.5, 299)] == [0.1, 0.1, 0.1]


def test_linear_schedule_ramps_over_half_the_epochs_by_default():
    schedule = BetaSchedule(kind="linear", value=2.0)
    assert schedule(0, 100) == 0.0
    assert schedule(25, 100) == pytest.approx(1.0)
    assert schedule(50, 100) == pytest.approx(2.0)
    assert schedule(90, 100) == pytest.approx(2.0)


def test_linear_schedule_with_explicit_ramp_and_fractional_epoch():
    schedule = BetaSchedule(kind="linear", value=1.0, ramp_epochs=10)
    assert schedule(2.5, 300) == pytest.approx(0.25)
    assert schedule(10, 300) == pytest.approx(1.0)
    assert BetaSchedule(kind="linear", value=1.0, ramp_epochs=0)(0, 300) == 1.0


def test_cyclical_schedule_restarts_every_cycle():
    # 100 epochs, 5 cycles -> period 20; ramp over the first half (10 epochs) of each cycle.
    schedule = BetaSchedule(kind="cyclical", value=1.0, n_cycles=5, ramp_fraction=0.5)
    assert schedule(0, 100) == 0.0
    assert schedule(5, 100) == pytest.approx(0.5)
    assert schedule(10, 100) == pytest.approx(1.0)
    assert schedule(19.9, 100) == pytest.approx(1.0)
    assert schedule(20, 100) == pytest.approx(0.0)
    assert schedule(45, 100) == pytest.approx(0.5)


def test_invalid_schedule_is_rejected():
    with pytest.raises(ValueError):
        BetaSchedule(kind="exponential", value=1.0)
    with pytest.raises(ValueError):
        BetaSchedule(kind="cyclical", value=1.0, ramp_fraction=1.5)
