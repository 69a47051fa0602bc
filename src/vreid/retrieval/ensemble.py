"""Multi-model ensembles: a weighted mean of distance matrices, or one concatenated feature per image.

The paper averages the (re-ranked) q x g distance matrices of ResNet50-IBN-a, ResNeXt101-IBN-a and ResNet152
(+2.8 mAP, docs/method.md); the official script took the unweighted mean of raw matrices. Here weights are optional
and each matrix can first be normalised per query, because models' distances need not share a scale (a re-ranked
matrix mixes Jaccard and squared distances; a model with larger spread would otherwise dominate the mean).
:func:`ensemble_features` gives the same result as a weighted mean of cosine similarities without ever storing one
matrix per model, which matters when the full (q+g)^2 matrices are needed for re-ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from vreid.retrieval.distance import l2_normalize

log = logging.getLogger(__name__)

NORMALIZATIONS = ("minmax", "zscore", "none")


def _weights(weights: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray:
    """Validated non-negative weights, one per model, summing to 1."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"got {w.size} weights for {n} models")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError("weights sum to 0: at least one model needs a positive weight")
    return w / w.sum()


def normalize_distance(d: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Rescale each query row of a (q, g) distance matrix so that models with different distance scales can be mixed.

    ``minmax``: (d - row min) / (row max - row min), into [0, 1]; ``zscore``: (d - row mean) / row std; ``none``:
    unchanged. Ranking within a row is preserved; a constant row becomes all zeros. Returns a new float array
    (float32 for float32 or integer input).
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown distance normalisation {method!r}; expected one of {', '.join(NORMALIZATIONS)}")
    d = np.asarray(d)
    if d.ndim != 2:
        raise ValueError(f"distance matrix must have shape (num_query, num_gallery), got {d.shape}")
    out = d.astype(np.result_type(d.dtype, np.float32), copy=True)
    if method == "none" or out.size == 0:
        return out
    if method == "minmax":
        low = out.min(axis=1, keepdims=True)
        scale = out.max(axis=1, keepdims=True) - low
    else:
        low = out.mean(axis=1, keepdims=True, dtype=np.float64).astype(out.dtype)
        scale = out.std(axis=1, keepdims=True, dtype=np.float64).astype(out.dtype)
    out -= low
    np.divide(out, scale, out=out, where=scale > 0)
    out[(scale <= 0)[:, 0]] = 0
    return out


def ensemble_distances(
    distmats: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None = None,
    normalize: str = "none",
) -> np.ndarray:
    """Weighted mean of per-model (q, g) distance matrices, each optionally normalised per row first.

    Defaults reproduce the paper: an unweighted mean of the raw matrices. Weights are rescaled to sum to 1, so they
    are relative. All matrices must have one shape (same queries and gallery, in the same order).
    """
    if len(distmats) == 0:
        raise ValueError("no distance matrices to ensemble")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown distance normalisation {normalize!r}; expected one of {', '.join(NORMALIZATIONS)}")
    arrays = [np.asarray(d) for d in distmats]
    for i, d in enumerate(arrays):
        if d.ndim != 2:
            raise ValueError(f"distmats[{i}] must have shape (num_query, num_gallery), got {d.shape}")
        if d.shape != arrays[0].shape:
            raise ValueError(f"distmats[{i}] has shape {d.shape} but distmats[0] has shape {arrays[0].shape}")
    w = _weights(weights, len(arrays))
    out = np.zeros(arrays[0].shape, dtype=np.result_type(*(d.dtype for d in arrays), np.float32))
    for wi, d in zip(w, arrays, strict=True):
        if wi == 0:
            continue
        term = normalize_distance(d, normalize) if normalize != "none" else d
        out += out.dtype.type(wi) * term
    log.debug("ensembled %d distance matrices %s, weights %s, normalisation %s", len(arrays), out.shape, w, normalize)
    return out


def ensemble_features(
    feature_sets: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """One unit feature per image: the concatenation of each model's L2-normalised feature times sqrt(weight).

    With weights w_i summing to 1, the dot product of two such vectors is sum_i w_i cos_i — the weighted mean of the
    models' cosine similarities — so squared Euclidean distance on the result equals the weighted mean of the
    models' squared distances (2 - 2 cos_i). Unlike :func:`ensemble_distances`, no per-model matrix is stored and
    the result feeds distance, re-ranking and query expansion like a single model's. Rows are re-normalised at the
    end, which only matters for an all-zero model feature. ``feature_sets[i]`` is (N, D_i); N must agree.
    """
    if len(feature_sets) == 0:
        raise ValueError("no feature sets to ensemble")
    arrays = [np.asarray(f) for f in feature_sets]
    for i, f in enumerate(arrays):
        if f.ndim != 2:
            raise ValueError(f"feature_sets[{i}] must have shape (N, D), got {f.shape}")
        if len(f) != len(arrays[0]):
            raise ValueError(f"feature_sets[{i}] has {len(f)} rows but feature_sets[0] has {len(arrays[0])}")
    w = _weights(weights, len(arrays))
    dtype = np.result_type(*(f.dtype for f in arrays), np.float32)
    parts = [l2_normalize(f.astype(dtype, copy=False)) * dtype.type(np.sqrt(wi))
             for f, wi in zip(arrays, w, strict=True)]
    return l2_normalize(np.concatenate(parts, axis=1))
