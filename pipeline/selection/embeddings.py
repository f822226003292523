"""The embeddings' geometry for the selection: checked rows, centred on the pool's exact mean and
scaled to unit length (cosine similarity becomes a dot product), spherical k-means and the
nearest centroid, and the diversity of a selection over the clusters.

Every result is row by row the same bits whatever other rows come with it, so a selection over
the pass-1 parts, which sees the pool part by part, agrees with a selection over the whole pool.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from optidel import seeding


def diversity_stats(cluster_of_selected, n_clusters: int) -> dict:
    """Diversity of a selection over k clusters (entries of -1 are ignored): coverage (fraction
    of clusters holding a selected item) and the entropy of its cluster histogram in nats, with
    its maximum ln(k) for scale — the H_V(Y|empty) side of the V-information accounting."""
    labels = np.asarray(cluster_of_selected, dtype=np.int64)
    labels = labels[labels >= 0]
    if labels.size and labels.max() >= n_clusters:
        raise ValueError(f"cluster label {labels.max()} out of range for {n_clusters} clusters")
    counts = np.bincount(labels, minlength=max(n_clusters, 0))
    covered = int((counts > 0).sum())
    p = counts[counts > 0] / max(labels.size, 1)
    return {
        "clusters": int(max(n_clusters, 0)),
        "clusters_covered": covered,
        "coverage": covered / n_clusters if n_clusters > 0 else 0.0,
        "entropy_nats": float(np.sum(p * np.log(1 / p))),
        "max_entropy_nats": math.log(n_clusters) if n_clusters > 0 else 0.0,
    }


def train_centroids(x: np.ndarray, k: int, seed: int) -> np.ndarray | None:
    """float32 (k, D) centroids of unit rows `x` (in id order: k-means++ depends on row order),
    or None when k <= 1 (one cluster needs no centroids)."""
    if len(x) == 0 or k <= 1:
        return None
    x = np.ascontiguousarray(x, dtype=np.float32)
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=25,
        spherical=True,
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
        seed=seeding.derive(seed, "kmeans") & 0x7FFF_FFFF,
        min_points_per_centroid=1,  # small pools are fine; silences faiss's "too few points" warning
        verbose=False,
    )
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # faiss's multi-threaded reductions may sum in a different order per run
    try:
        kmeans.train(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return kmeans.centroids


def assign_clusters(x: np.ndarray, centroids: np.ndarray | None) -> np.ndarray:
    """int32 nearest centroid (largest inner product, the first on a tie) per row; all 0 without
    centroids.

    Each row's products are summed on their own (numpy's pairwise sum along the dimension), so a
    row gets the same cluster whatever rows share its batch: a selection over the pass-1 parts
    assigns part by part, and must agree with the whole pool's assignment. faiss's batched
    search does not: its BLAS blocking moves the last bits with the batch, which flips rows
    close to two centroids."""
    if centroids is None:
        return np.zeros(len(x), dtype=np.int32)
    x = np.asarray(x, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    labels = np.empty(len(x), dtype=np.int32)
    for rows in chunks(len(x), CHUNK * 32 // len(centroids) or 1):  # about 16 MB of products
        labels[rows] = (x[rows, None, :] * centroids[None, :, :]).sum(axis=2).argmax(axis=1)
    return labels


def embedding_rows(embeddings, n: int) -> np.ndarray:
    """float32 (n, D) embeddings, checked: every row finite and non-zero."""
    emb = np.asarray(embeddings)
    if emb.dtype == object:  # Ray hands array-valued columns over as object arrays of rows
        emb = np.stack(list(emb)) if len(emb) else np.zeros((0, 1))
    emb = emb.astype(np.float32, copy=False)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"embeddings: expected shape ({n}, D), got {emb.shape}")
    # The embeddings are a part's largest column: every step goes through them in chunks, so the
    # only full-size array made is the result.
    norms = np.concatenate([np.linalg.norm(emb[rows], axis=1) for rows in chunks(n)]) if n else np.zeros(0)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"embeddings: row {bad[0]} is zero or not finite ({bad.size} rows)")
    return emb


def centred_unit_rows(emb: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows minus the pool's `mean` (float64), scaled to unit length, as float32; row by row the same
    bits whatever other rows come with them. Centred because mean-pooled ViT features share a
    large common component: raw cosines are all close to 1 (on kvasir with the self-trained
    proxy, 1511 of 1540 patches were near-duplicates at 0.95); centred ones tell rows apart."""
    unit = np.empty_like(emb)
    for rows in chunks(len(emb)):
        unit[rows] = emb[rows] - mean  # in float64, rounded to float32 on assignment
        norms = np.linalg.norm(unit[rows], axis=1, keepdims=True)
        # A row equal to the mean has no direction of its own: it stays zero, near nothing.
        np.divide(unit[rows], norms, out=unit[rows], where=norms > 0)
        unit[rows][norms[:, 0] == 0] = 0
    return unit


CHUNK = 1024  # rows: 0.5 MB of float32 embeddings (D = 128), 1 MB in float64


def chunks(n: int, size: int | None = None) -> list[slice]:
    size = size or CHUNK  # read at call time: tests vary it
    return [slice(start, start + size) for start in range(0, n, size)]
