"""The latent space: nearest real latents, PCA, traversals and k-means, checked against brute force."""

import itertools
import sys
import types

import numpy as np
import pytest

from cryodomain.workflows.latent import kmeans_latents, latent_pca, nearest_latents, pc_traversal, umap_embedding


def brute_force_nearest(z: np.ndarray, points: np.ndarray) -> list[int]:
    nearest = []
    for point in points:
        distances = [float(np.sum((row - point) ** 2)) for row in z]
        nearest.append(min(range(len(z)), key=lambda i: (distances[i], i)))
    return nearest


def test_nearest_latents_equal_brute_force_and_take_the_first_of_ties():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 3))
    points = rng.normal(size=(25, 3)) * 1.5
    result = nearest_latents(z, points)
    assert result.dtype == np.int64 and result.shape == (25,)
    assert result.tolist() == brute_force_nearest(z, points)
    # Rows 4 and 9 are the same latent: the first one wins.
    z[9] = z[4]
    assert nearest_latents(z, z[[9, 4]] + 1e-9).tolist() == [4, 4]
    assert nearest_latents(z, np.empty((0, 3))).tolist() == []


def test_latent_pca_axes_are_orthonormal_and_reconstruct_the_latents():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(80, 3)) * np.array([4.0, 1.0, 0.25]) + np.array([1.0, -2.0, 3.0])
    pca = latent_pca(z)
    np.testing.assert_allclose(pca.mean, z.mean(axis=0))
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(pca.projections, (z - z.mean(axis=0)) @ pca.components.T, atol=1e-10)
    np.testing.assert_allclose(pca.mean + pca.projections @ pca.components, z, atol=1e-10)
    np.testing.assert_allclose(pca.explained_variance, pca.projections.var(axis=0, ddof=1))
    assert (np.diff(pca.explained_variance) < 0).all()
    assert abs(pca.components[0, 0]) > 0.99  # the widest axis is x


@pytest.mark.parametrize("n_points", [2, 7])
def test_a_traversal_of_latents_on_a_line_is_ordered_along_it_from_5th_to_95th_percentile(n_points):
    rng = np.random.default_rng(2)
    t = rng.uniform(-3.0, 5.0, size=400)
    direction = np.array([1.0, 2.0, -2.0, 0.5])
    z = np.array([0.3, -1.0, 2.0, 0.0]) + t[:, None] * direction
    indices = pc_traversal(z, latent_pca(z), 0, n_points)
    assert indices.dtype == np.int64 and indices.shape == (n_points,)
    # On a line the nearest latent to each traversal point is the nearest t; the PC may point
    # either way along the line.
    targets = np.linspace(*np.percentile(t, [5, 95]), n_points)
    forward = [int(np.argmin(np.abs(t - target))) for target in targets]
    assert indices.tolist() in (forward, forward[::-1])
    ordered = t[indices]
    assert (np.diff(ordered) > 0).all() or (np.diff(ordered) < 0).all()
    extent = t.max() - t.min()
    assert sorted([ordered[0], ordered[-1]]) == pytest.approx(np.percentile(t, [5, 95]), abs=0.02 * extent)


def test_kmeans_finds_three_separated_blobs_and_centres_inside_them():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 5.0], [0.0, -20.0, 10.0]])
    truth = rng.permutation(np.repeat(np.arange(3), [30, 20, 25]))
    z = centres[truth] + rng.normal(size=(len(truth), 3))
    labels, centre_indices = kmeans_latents(z, 3, seed=2**40 + 1)  # seeds above 2**32 are reduced
    assert labels.dtype == np.int64 and centre_indices.dtype == np.int64 and centre_indices.shape == (3,)
    # Same partition as the truth, up to a renaming of the clusters.
    assert any(np.array_equal(np.asarray(permutation)[truth], labels) for permutation in itertools.permutations(range(3)))
    for k in range(3):
        members = labels == k
        assert labels[centre_indices[k]] == k
        # The centre is the real latent nearest to the cluster's mean (brute force over all images).
        mean = z[members].mean(axis=0)
        assert centre_indices[k] == int(np.argmin(((z - mean) ** 2).sum(axis=1)))


def test_umap_embedding_is_float32_with_neighbours_below_the_image_count(monkeypatch):
    seen = {}

    class FakeUMAP:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def fit_transform(self, z):
            return np.asarray(z, dtype=np.float64)[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    z = np.arange(15, dtype=np.float64).reshape(5, 3)
    embedding = umap_embedding(z, seed=2**32 + 7)
    assert embedding.dtype == np.float32 and embedding.shape == (5, 2)
    np.testing.assert_array_equal(embedding, z[:, :2])
    assert seen == {"n_neighbors": 4, "random_state": 7}
    umap_embedding(np.zeros((40, 2)), seed=0)
    assert seen["n_neighbors"] == 15
