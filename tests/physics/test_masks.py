import math

import pytest
import torch

from cryodomain.physics.masks import circular_mask


@pytest.mark.parametrize("box", [16, 17])
def test_hard_mask_is_centred_disc(box):
    mask = circular_mask(box, radius_px=5)
    assert mask.shape == (box, box) and mask.dtype == torch.float32
    centre = box // 2
    assert mask[centre, centre] == 1 and mask[centre, centre + 5] == 1 and mask[centre + 5, centre] == 1
    assert mask[centre, centre + 6] == 0 and mask[centre - 6, centre] == 0
    assert mask[centre + 4, centre + 4] == 0  # distance 5.66 > 5
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # Symmetric about the centre pixel.
    inner = mask[centre - 6 : centre + 7, centre - 6 : centre + 7]
    torch.testing.assert_close(inner, inner.flip(0))
    torch.testing.assert_close(inner, inner.T)


def test_default_radius_is_half_the_box():
    mask = circular_mask(32)
    assert mask[16, 0] == 1 and mask[0, 16] == 1  # distance 16 = N/2
    assert mask[0, 0] == 0


def test_soft_edge_is_raised_cosine_outside_radius():
    mask = circular_mask(64, radius_px=10, soft_edge_px=8, dtype=torch.float64)
    row = mask[32, 32:]
    assert torch.all(row[:11] == 1)
    for distance in range(11, 18):
        expected = 0.5 * (1 + math.cos(math.pi * (distance - 10) / 8))
        assert row[distance].item() == pytest.approx(expected, abs=1e-12)
    assert torch.all(row[18:] == 0)
    assert mask.min() >= 0 and mask.max() <= 1
    # Monotone decreasing with distance.
    assert torch.all(row[1:] <= row[:-1])


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        circular_mask(16, radius_px=0)
    with pytest.raises(ValueError):
        circular_mask(16, soft_edge_px=-1)
