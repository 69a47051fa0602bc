"""Query-gallery distance matrices, computed block by block with matrix products.

The official code builds the whole matrix on the GPU (docs/method.md); here a block of query rows at a time is
computed as ``|a|² + |b|² - 2a·b`` with one GEMM, so memory stays at one (block, g) slab besides the output and no
(q, g, d) difference tensor is ever formed. Results are float32: that is what the evaluator and re-ranking consume,
and a 1,103 x 31,238 float32 matrix is already 138 MB.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

METRICS = ("euclidean", "sqeuclidean", "cosine")


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Scale vectors to unit L2 norm along ``axis``; an all-zero vector stays zero instead of becoming NaN."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norms, eps)


def as_feature_matrix(x: np.ndarray, name: str, dtype: np.dtype | type | None = None,
                      finite: bool = False) -> np.ndarray:
    """``x`` as a floating (N, D) array, or a ValueError naming the argument: the one shape check of the retrieval
    functions. ``dtype``: a contiguous array of that dtype; ``finite``: NaN or infinity is an error too."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {x.shape}")
    if dtype is not None:
        x = np.ascontiguousarray(x, dtype=dtype)
    elif not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if finite and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def pairwise_distance(
    query: np.ndarray, gallery: np.ndarray, metric: str = "euclidean", block: int = 4096
) -> np.ndarray:
    """(q, g) float32 distances between the rows of ``query`` (q, d) and ``gallery`` (g, d).

    ``euclidean``: ``sqrt(max(|a|² + |b|² - 2a·b, 0))``; ``sqeuclidean``: the same without the square root (what
    the official code ranks by, §5.2); ``cosine``: ``1 - cos(a, b)`` clamped to [0, 2] (zero vectors are at
    distance 1 from everything). The clamp removes the small negatives that cancellation leaves for (near)
    identical vectors. Arithmetic runs in float64 only when an input is float64; otherwise in float32, whose
    cancellation error is about 1e-7 times the squared norms — negligible for ranking L2-normalised features.
    ``block`` is the number of query rows per GEMM.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; expected one of {', '.join(METRICS)}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    query = as_feature_matrix(query, "query")
    gallery = as_feature_matrix(gallery, "gallery")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {query.shape[1]} vs {gallery.shape[1]}")
    dtype = np.result_type(query.dtype, gallery.dtype, np.float32)
    query, gallery = query.astype(dtype, copy=False), gallery.astype(dtype, copy=False)
    if metric == "cosine":
        query, gallery = l2_normalize(query), l2_normalize(gallery)

    out = np.empty((query.shape[0], gallery.shape[0]), dtype=np.float32)
    gallery_t = np.ascontiguousarray(gallery.T)
    gallery_sq = np.einsum("ij,ij->i", gallery, gallery)
    for start in range(0, query.shape[0], block):
        q = query[start : start + block]
        prod = q @ gallery_t
        if metric == "cosine":
            np.subtract(1.0, prod, out=prod)
            np.clip(prod, 0.0, 2.0, out=prod)
        else:
            prod *= -2.0
            prod += np.einsum("ij,ij->i", q, q)[:, None]
            prod += gallery_sq[None, :]
            np.maximum(prod, 0.0, out=prod)
            if metric == "euclidean":
                np.sqrt(prod, out=prod)
        out[start : start + block] = prod
    log.debug("%s distances %s computed in blocks of %d query rows", metric, out.shape, block)
    return out


def smallest_k(values: np.ndarray, k: int) -> np.ndarray:
    """(rows, min(k, columns)) column indices of each row's ``k`` smallest values, ascending, ties by column.

    The one top-k selection of rankings and searches; equal to ``np.argsort(values, kind="stable")[:, :k]``, also
    when ties straddle the k-th place (a bare ``argpartition`` may keep a later column of a tied value), at the cost
    of a partition and a sort of the values up to the k-th.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (rows, columns), got {values.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if np.isnan(values).any():
        raise ValueError("values contain NaN: no order to take the smallest from")
    k = min(k, values.shape[1])
    if k == values.shape[1]:
        return np.argsort(values, axis=1, kind="stable")
    kth = np.partition(values, k - 1, axis=1)[:, k - 1]
    out = np.empty((len(values), k), dtype=np.int64)
    for r in range(len(values)):
        cols = np.flatnonzero(values[r] <= kth[r])  # every value up to the k-th, in column order
        out[r] = cols[np.argsort(values[r, cols], kind="stable")[:k]]
    return out
