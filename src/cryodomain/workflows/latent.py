"""The latent space of a trained run: PCA, traversals along the PCs, k-means, UMAP.

Every function takes the latent means ``z`` ``(N, D)`` of the images (particle order) and returns
arrays or particle indices; decoding structures from them is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from cryodomain.errors import input_error

# Range of a PC's coordinate covered by a traversal (percentiles), as in cryoDRGN and cryoSPHERE.
TRAVERSAL_PERCENTILES = (5.0, 95.0)
# k-means restarts; explicit so results do not change with scikit-learn's default.
KMEANS_N_INIT = 10


@dataclass(frozen=True)
class LatentPCA:
    """Principal components of the latent means. N images, D latent dimensions, C = min(N, D).

    Attributes:
        mean: ``(D,)`` mean latent.
        components: ``(C, D)`` unit principal axes, by decreasing variance.
        explained_variance: ``(C,)`` variance along each axis.
        explained_variance_ratio: ``(C,)`` fraction of the total variance.
        projections: ``(N, C)`` coordinate of every image along each axis.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    projections: np.ndarray


def require_umap():
    """The ``umap`` module, or an InputError telling how to install it."""
    try:
        import umap
    except ImportError:
        raise input_error(
            None, "--umap", "needs the optional package umap-learn, which is not installed", "pip install umap-learn, or leave out --umap"
        ) from None
    return umap


def nearest_latents(z: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Index of the real latent nearest (Euclidean) to each point.

    Args:
        z: ``(N, D)`` latent means of the images.
        points: ``(M, D)`` points of the latent space.

    Returns:
        ``(M,)`` int64 indices into ``z`` (the first one on ties).
    """
    z = np.asarray(z, dtype=np.float64)
    # One point at a time keeps memory at N x D whatever M is.
    return np.array([np.argmin(((z - point) ** 2).sum(axis=1)) for point in np.asarray(points, dtype=np.float64)], dtype=np.int64)


def latent_pca(z: np.ndarray) -> LatentPCA:
    """PCA (scikit-learn, exact SVD) of the latent means ``z`` ``(N, D)``, all ``min(N, D)`` components."""
    z = np.asarray(z, dtype=np.float64)
    pca = PCA(n_components=min(z.shape), svd_solver="full")
    projections = pca.fit_transform(z)
    return LatentPCA(pca.mean_, pca.components_, pca.explained_variance_, pca.explained_variance_ratio_, projections)


def pc_traversal(z: np.ndarray, pca: LatentPCA, pc: int, n_points: int) -> np.ndarray:
    """Real images along one principal axis.

    Points evenly spaced along axis ``pc`` (through the mean) from the 5th to the 95th percentile of
    the images' coordinate on it, each replaced by the nearest real latent. Along a line the nearest
    points are in the same order as the line's points, so the result is ordered along the PC.

    Args:
        z: ``(N, D)`` latent means.
        pca: their :func:`latent_pca`.
        pc: 0-based index of the principal axis.
        n_points: points of the traversal.

    Returns:
        ``(n_points,)`` int64 particle indices (an image can appear more than once).
    """
    low, high = np.percentile(pca.projections[:, pc], TRAVERSAL_PERCENTILES)
    steps = np.linspace(low, high, n_points)
    points = pca.mean + steps[:, None] * pca.components[pc]
    return nearest_latents(z, points)


def kmeans_latents(z: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the latent means, with centres replaced by their nearest real latents.

    Args:
        z: ``(N, D)`` latent means.
        n_clusters: wanted clusters; ``min(n_clusters, N)`` are made.
        seed: random seed (reduced modulo 2**32 for scikit-learn).

    Returns:
        ``(labels, centre_indices)``: ``(N,)`` int64 cluster of each image (0-based) and ``(K,)``
        int64 index of the image nearest to each cluster's centre.
    """
    z = np.asarray(z, dtype=np.float64)
    kmeans = KMeans(n_clusters=min(n_clusters, len(z)), n_init=KMEANS_N_INIT, random_state=seed % 2**32)
    labels = kmeans.fit_predict(z).astype(np.int64)
    return labels, nearest_latents(z, kmeans.cluster_centers_)


def umap_embedding(z: np.ndarray, seed: int) -> np.ndarray:
    """2-D UMAP embedding ``(N, 2)`` float32 of the latent means (needs ``umap-learn``)."""
    umap = require_umap()
    embedding = umap.UMAP(n_neighbors=min(15, len(z) - 1), random_state=seed % 2**32).fit_transform(z)
    return np.asarray(embedding, dtype=np.float32)
