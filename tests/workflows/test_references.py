import itertools
import time
import warnings

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryodomain.workflows.references import (
    best_single_structure,
    candidate_boundaries,
    fourier_shell_correlation,
    fsc_auc,
    fsc_resolution,
    kabsch,
    piecewise_rigid_limit,
)

BLOCKS = (0, 20, 45, 60)  # three rigid blocks of a 60-residue chain


def independent_rigid_sse(x, y):
    """Least-squares error of one proper rigid motion of x onto y, by scipy (not our Kabsch)."""
    if len(x) == 1:
        return 0.0  # one point: a translation fits it exactly
    xc, yc = x - x.mean(0), y - y.mean(0)
    with warnings.catch_warnings():  # two points: the rotation about their axis is arbitrary, the error is not
        warnings.simplefilter("ignore", UserWarning)
        rotation, _ = Rotation.align_vectors(yc, xc)
    return float(((rotation.apply(xc) - yc) ** 2).sum())


def blocks_problem(seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    base = np.cumsum(rng.normal(0.0, 2.2, (60, 3)), axis=0)  # a random walk: no symmetry
    truth = []
    for _ in range(5):
        moved = base.copy()
        for start, stop in zip(BLOCKS[:-1], BLOCKS[1:]):
            rotation = Rotation.from_rotvec(rng.normal(0.0, 0.6, 3)).as_matrix()
            moved[start:stop] = base[start:stop] @ rotation.T + rng.normal(0.0, 5.0, 3)
        truth.append(moved + rng.normal(0.0, noise, moved.shape))
    weights = rng.integers(1, 10, 5).astype(float)
    return base, np.stack(truth), weights


def weighted_sse(base, truth, weights, boundaries):
    return sum(w * sum(independent_rigid_sse(base[a:b], t[a:b]) for a, b in zip(boundaries[:-1], boundaries[1:])) for w, t in zip(weights, truth))


def test_three_rigid_blocks_are_recovered_exactly_with_zero_error():
    base, truth, weights = blocks_problem()
    limit = piecewise_rigid_limit(base, truth, weights, 3)
    assert list(limit.boundaries) == list(BLOCKS)
    assert limit.exact and limit.candidate_step == 1
    np.testing.assert_allclose(limit.rmsd_A, 0.0, atol=1e-6)
    assert limit.weighted_sse_A2 == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(np.linalg.det(limit.rotations), 1.0, atol=1e-10)
    # More segments cannot do worse.
    assert piecewise_rigid_limit(base, truth, weights, 5).weighted_sse_A2 <= 1e-6


def test_two_segments_match_a_brute_force_search():
    base, truth, weights = blocks_problem()
    limit = piecewise_rigid_limit(base, truth, weights, 2)
    brute = {b: weighted_sse(base, truth, weights, (0, b, 60)) for b in range(1, 60)}
    best = min(brute, key=brute.get)
    assert limit.weighted_sse_A2 > 1.0
    assert limit.weighted_sse_A2 == pytest.approx(brute[best], rel=1e-7)
    assert list(limit.boundaries) == [0, best, 60]
    # The reported per-conformation RMSD is that of the chosen segmentation.
    for c in range(5):
        sse = sum(independent_rigid_sse(base[a:b], truth[c, a:b]) for a, b in ((0, best), (best, 60)))
        assert limit.rmsd_A[c] == pytest.approx(np.sqrt(sse / 60), rel=1e-6)


def test_three_segments_match_a_brute_force_search_over_boundary_pairs():
    base, truth, weights = blocks_problem(seed=3, noise=1.0)
    base, truth = base[:30], truth[:, :30]
    limit = piecewise_rigid_limit(base, truth, weights, 3)
    brute = {pair: weighted_sse(base, truth, weights, (0, *pair, 30)) for pair in itertools.combinations(range(1, 30), 2)}
    best = min(brute, key=brute.get)
    assert limit.weighted_sse_A2 == pytest.approx(brute[best], rel=1e-7)
    assert tuple(limit.boundaries[1:-1]) == best


def test_chain_breaks_are_kept_as_boundaries():
    base, truth, weights = blocks_problem()
    limit = piecewise_rigid_limit(base, truth, weights, 3, chain_breaks=[30])
    assert 30 in limit.boundaries
    with pytest.raises(ValueError):
        piecewise_rigid_limit(base, truth, weights, 1, chain_breaks=[30])
    with pytest.raises(ValueError):
        piecewise_rigid_limit(base, truth, weights, 61)


def test_large_models_search_boundaries_on_a_grid():
    candidates, step = candidate_boundaries(3001)
    assert step == 5 and candidates[0] == 0 and candidates[-1] == 3001 and len(candidates) <= 752
    assert candidate_boundaries(352)[1] == 1


def test_kabsch_returns_a_proper_rotation_even_for_mirrored_data():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 10.0, (40, 3))
    rotation = Rotation.random(random_state=2).as_matrix()
    y = x @ rotation.T + [1.0, -2.0, 3.0]
    fitted, translation = kabsch(x, y)
    np.testing.assert_allclose(fitted, rotation, atol=1e-10)
    np.testing.assert_allclose(x @ fitted.T + translation, y, atol=1e-9)
    mirrored = y * [1.0, 1.0, -1.0]
    fitted, translation = kabsch(x, mirrored)
    assert np.linalg.det(fitted) == pytest.approx(1.0)
    np.testing.assert_allclose(fitted @ fitted.T, np.eye(3), atol=1e-10)
    # It is the best proper rotation: the same error as scipy's.
    error = ((x @ fitted.T + translation - mirrored) ** 2).sum()
    assert error == pytest.approx(independent_rigid_sse(x, mirrored), rel=1e-8)
    # Batched.
    batch_rotation, _ = kabsch(np.stack([x, x]), np.stack([y, mirrored]))
    assert batch_rotation.shape == (2, 3, 3)
    np.testing.assert_allclose(np.linalg.det(batch_rotation), 1.0)


def test_best_single_structure_beats_any_other_single_structure():
    rng = np.random.default_rng(4)
    truth = rng.normal(0.0, 5.0, (6, 25, 3))
    conformation = rng.integers(0, 6, 200)

    def mean_squared_rmsd(structure):
        return float(((structure - truth[conformation]) ** 2).sum(-1).mean(-1).mean())

    single = best_single_structure(truth, conformation)
    assert single.shape == (25, 3)
    best = mean_squared_rmsd(single)
    for candidate in [truth.mean(0), *truth, *(single + rng.normal(0.0, 0.1, single.shape) for _ in range(20))]:
        assert best < mean_squared_rmsd(candidate)


def gaussian_blob_map(n=24, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.arange(n) - n // 2
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    volume = np.zeros((n, n, n))
    for centre in rng.uniform(-6, 6, (20, 3)):
        volume += np.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / 4.0)
    return volume


def test_fsc_of_a_map_with_itself_is_one_and_with_noise_about_zero():
    volume = gaussian_blob_map() + np.random.default_rng(5).normal(0.0, 0.01, (24, 24, 24))
    frequencies, fsc = fourier_shell_correlation(volume, volume, 2.0)
    assert frequencies.shape == fsc.shape == (13,)
    assert frequencies[0] == 0 and frequencies[-1] == pytest.approx(0.25)  # Nyquist of 2 Å
    np.testing.assert_allclose(fsc, 1.0, atol=1e-12)
    assert fsc_auc(frequencies, fsc, 2.0) == pytest.approx(1.0)
    assert fsc_resolution(frequencies, fsc) == pytest.approx(4.0)  # never below 0.5: Nyquist
    noise = np.random.default_rng(6).normal(size=(24, 24, 24))
    _, fsc_noise = fourier_shell_correlation(volume, noise, 2.0)
    assert np.abs(fsc_noise[3:]).max() < 0.3 and abs(fsc_noise[3:].mean()) < 0.05
    auc = fsc_auc(frequencies, fsc_noise, 2.0)
    assert 0.0 <= auc < 0.15


def test_fsc_is_batched_and_blurring_lowers_it():
    volume = gaussian_blob_map()
    spectrum = np.fft.fftn(volume)
    k = np.fft.fftfreq(24)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    blurred = np.fft.ifftn(spectrum * np.exp(-(kz**2 + ky**2 + kx**2) * 40.0)).real + np.random.default_rng(7).normal(0.0, 0.05, volume.shape)
    frequencies, fsc = fourier_shell_correlation(np.stack([volume, volume]), np.stack([volume, blurred]), 2.0)
    assert fsc.shape == (2, 13)
    np.testing.assert_allclose(fsc[0], 1.0, atol=1e-12)
    _, single = fourier_shell_correlation(volume, blurred, 2.0)
    np.testing.assert_allclose(fsc[1], single)
    auc = fsc_auc(frequencies, fsc, 2.0)
    assert auc[1] < auc[0] and 0.0 <= auc[1] <= 1.0
    resolution = fsc_resolution(frequencies, fsc)
    assert 4.0 < resolution[1] <= 48.0 and resolution[0] == pytest.approx(4.0)
    # The resolution is where the curve crosses 0.5, interpolated.
    crossing = 1.0 / resolution[1]
    assert np.interp(crossing, frequencies, fsc[1]) == pytest.approx(0.5, abs=1e-9)


def test_the_limit_for_the_example_size_runs_in_seconds():
    # 352 residues as in the example; 10 conformations (98 take ~9 s on 2 cores: one SVD per range and conformation).
    rng = np.random.default_rng(8)
    base = np.cumsum(rng.normal(0.0, 2.2, (352, 3)), axis=0)
    truth = base + rng.normal(0.0, 1.0, (10, 352, 3))
    start = time.perf_counter()
    limit = piecewise_rigid_limit(base, truth, np.ones(10), 20)
    assert time.perf_counter() - start < 30.0
    assert len(limit.boundaries) == 21 and np.all(np.diff(limit.boundaries) > 0)
    assert np.all(limit.rmsd_A < np.sqrt(((base - truth) ** 2).sum(-1).mean(-1)))
