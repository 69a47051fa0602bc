"""Alpha query expansion (alpha-QE) and database-side augmentation (DBA), Radenovic et al. (TPAMI 2019).

Both replace a vector by a similarity-weighted mean of itself and its nearest gallery neighbours, pulling it
towards the dense part of its identity's cluster. Neither is used by the paper (the official ``QUERY_EXPANSION``/
``DO_DBA`` switches are off everywhere, docs/method.md; they averaged the top-6 of all q+g features with equal
weights); here they are optional tools with the usual alpha-QE defaults (k=5, alpha=3).

Definitions: for a unit vector x with top-k neighbours n_1..n_k (cosine similarity s_j, best first), the new vector
is normalise(x + sum_j max(s_j, 0)^alpha n_j) — x has weight 1 = s(x, x)^alpha. alpha = 0 gives plain average QE
(all weights 1). Negative similarities are clamped to 0 so that a fractional power stays real; they only occur
when k reaches into dissimilar items. Inputs are L2-normalised first. Neighbours are chosen on float32
similarities with ties going to the lower gallery index, so results do not depend on the partition algorithm.

Memory: similarities are computed a block of rows at a time with one GEMM (float32 (block, g) slab), so DBA on the
31,238-image AIC21 gallery never forms the 3.9 GB g x g matrix.
"""

from __future__ import annotations

import logging

import numpy as np

from vreid.retrieval.distance import as_feature_matrix, l2_normalize

log = logging.getLogger(__name__)

BLOCK_ELEMENTS = 1 << 22  # similarities per block (~16 MiB float32 + 32 MiB int64 keys)


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    return l2_normalize(as_feature_matrix(x, name))


def _check_params(top_k: int, alpha: float) -> None:
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")


def _top_k_columns(sims: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) column indices of each row's k largest values, largest first, ties to the lower column.

    Each value is packed with its column into one int64 key (order-preserving float32 bits of -value in the high
    half, column in the low half), so one O(g) partition per row gives a deterministic answer.
    """
    if np.isnan(sims).any():
        raise ValueError("similarities contain NaN (NaN in the features?)")
    bits = np.add(-sims, np.float32(0.0), dtype=np.float32).view(np.int32)  # -0.0 folds into +0.0
    bits ^= (bits >> 31) & 0x7FFFFFFF  # negative floats: reverse the magnitude order
    keys = bits.astype(np.int64) << 32
    keys |= np.arange(sims.shape[1], dtype=np.int64)
    if k < sims.shape[1]:
        keys = np.partition(keys, k - 1, axis=1)[:, :k]
    keys.sort(axis=1)
    return keys & 0xFFFFFFFF


def _expand(
    x: np.ndarray, base: np.ndarray, top_k: int, alpha: float, exclude_self: bool, block_rows: int | None
) -> np.ndarray:
    """normalise(x_i + sum over the top-k rows of ``base`` of max(s, 0)^alpha * row), block by block."""
    out = x.copy()
    k = min(top_k, len(base) - (1 if exclude_self else 0))
    if k <= 0 or len(x) == 0:
        return out
    rows = max(1, BLOCK_ELEMENTS // len(base)) if block_rows is None else block_rows
    if rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {rows}")
    base_t = np.ascontiguousarray(base.T)
    for start in range(0, len(x), rows):
        sims = x[start : start + rows] @ base_t
        if exclude_self:
            local = np.arange(len(sims))
            sims[local, start + local] = -np.inf
        idx = _top_k_columns(sims, k)
        weights = np.power(np.maximum(np.take_along_axis(sims, idx, axis=1), 0), alpha)
        out[start : start + rows] += np.einsum("rk,rkd->rd", weights, base[idx])
    return l2_normalize(out)


def average_query_expansion(
    query: np.ndarray, gallery: np.ndarray, top_k: int = 5, alpha: float = 3.0, *, block_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """alpha-QE: each query becomes the weighted mean of itself and its ``top_k`` nearest gallery images.

    Returns ``(new_query, gallery)`` with the gallery L2-normalised (otherwise unchanged), so both sides are in the
    same space for :func:`~vreid.retrieval.distance.pairwise_distance`; pass a :func:`database_augmentation` gallery
    to get the usual DBA + alpha-QE combination. ``top_k=0`` only normalises.
    """
    _check_params(top_k, alpha)
    q, g = _unit_rows(query, "query"), _unit_rows(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {q.shape[1]} vs {g.shape[1]}")
    dtype = np.result_type(q.dtype, g.dtype)
    q, g = q.astype(dtype, copy=False), g.astype(dtype, copy=False)
    new_query = _expand(q, g, top_k, alpha, exclude_self=False, block_rows=block_rows)
    log.debug("alpha-QE of %d queries over %d gallery images (k=%d, alpha=%g)", len(q), len(g), top_k, alpha)
    return new_query, g


def database_augmentation(
    gallery: np.ndarray, top_k: int = 5, alpha: float = 3.0, *, block_rows: int | None = None
) -> np.ndarray:
    """DBA: each gallery image becomes the weighted mean of itself and its ``top_k`` nearest *other* gallery images.

    Neighbours are found in the original gallery (all rows are updated from the same, un-augmented vectors); an
    image is never its own neighbour, even when an exact duplicate exists. Returns L2-normalised rows.
    """
    _check_params(top_k, alpha)
    g = _unit_rows(gallery, "gallery")
    out = _expand(g, g, top_k, alpha, exclude_self=True, block_rows=block_rows)
    log.debug("DBA of %d gallery images (k=%d, alpha=%g)", len(g), top_k, alpha)
    return out
