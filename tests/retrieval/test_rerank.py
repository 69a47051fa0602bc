"""k_reciprocal_rerank against a plain dense implementation that follows the paper / reference code step by step."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest

from vreid.retrieval import k_reciprocal_rerank, l2_normalize, pairwise_distance, rerank


def dense_squared(f: np.ndarray) -> np.ndarray:
    """All-pairs squared Euclidean distance, the convention of k_reciprocal_rerank: clamped at 0, zero diagonal."""
    f = f.astype(np.float32)
    sq = np.einsum("ij,ij->i", f, f)
    d = -2 * (f @ f.T)
    d += sq[:, None]
    d += sq[None, :]
    d = np.maximum(d, 0)
    np.fill_diagonal(d, 0)
    return d


def dense_rerank(q, g, k1, k2, lambda_value, extra=()):
    """Zhong et al.'s re-ranking written out densely, as the reference code computes it (V in float32)."""
    num_query = len(q)
    x = np.concatenate([q, g])
    n = len(x)
    dist = dense_squared(x)
    for f, w in extra:
        dist = dist + np.float32(w) * dense_squared(f)
    # every column divided by its maximum, then transposed
    original = np.transpose(dist / np.max(dist, axis=0))
    initial_rank = np.argsort(original, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = initial_rank[i, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    half = int(np.around(k1 / 2))
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = r
        for c in r:
            rc = reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expanded = np.append(expanded, rc)
        expanded = np.unique(expanded)
        weight = np.exp(-original[i, expanded])
        v[i, expanded] = weight / np.sum(weight)
    if k2 != 1:
        v = np.stack([v[initial_rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.empty((num_query, n - num_query), dtype=np.float64)
    for i in range(num_query):
        s = np.minimum(v[i][None, :].astype(np.float64), v[num_query:]).sum(axis=1)
        jaccard[i] = 1 - s / (2 - s)
    return jaccard * (1 - lambda_value) + original[:num_query, num_query:] * lambda_value


def clustered(num_query, num_gallery, dim, seed, num_ids=25, spread=0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    ids = rng.integers(0, num_ids, num_query + num_gallery)
    x = l2_normalize((centres[ids] + spread * rng.normal(size=(len(ids), dim))).astype(np.float32))
    return x[:num_query], x[num_query:]


@pytest.fixture(scope="module")
def features():
    return clustered(30, 200, 64, seed=0)


@pytest.mark.parametrize(
    "k1, k2, lambda_value", [(20, 6, 0.3), (20, 1, 0.3), (7, 3, 0.5), (5, 2, 0.0), (4, 9, 0.8), (50, 15, 0.5)]
)
@pytest.mark.parametrize("block", [37, 4096])
def test_matches_dense_reference(features, k1, k2, lambda_value, block):
    q, g = features
    got = k_reciprocal_rerank(q, g, k1, k2, lambda_value, block=block)
    assert got.dtype == np.float32 and got.shape == (30, 200)
    np.testing.assert_allclose(got, dense_rerank(q, g, k1, k2, lambda_value), atol=1e-5, rtol=0)


def test_extra_distance_pairs_and_callable(features):
    q, g = features
    o = np.concatenate(clustered(30, 200, 16, seed=1, num_ids=8))
    c = np.concatenate(clustered(30, 200, 8, seed=2, num_ids=5))
    extra = [(o, -0.1), (c, -0.1)]
    expected = dense_rerank(q, g, 20, 6, 0.3, extra)
    assert np.abs(expected - dense_rerank(q, g, 20, 6, 0.3)).max() > 1e-3  # the fusion changes the result
    got = k_reciprocal_rerank(q, g, 20, 6, 0.3, extra_distance=extra, block=64)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    fused = np.float32(-0.1) * dense_squared(o) + np.float32(-0.1) * dense_squared(c)
    calls = []

    def fn(rows, cols):
        calls.append((len(rows), len(cols)))
        return fused[np.ix_(rows, cols)]

    got_fn = k_reciprocal_rerank(q, g, 20, 6, 0.3, extra_distance=fn, block=64)
    np.testing.assert_allclose(got_fn, expected, atol=1e-5, rtol=0)
    assert calls and max(r * c for r, c in calls) < 230 * 230  # never asked for the whole matrix

    single = k_reciprocal_rerank(q, g, 20, 6, 0.3, extra_distance=(o, -0.2), block=64)
    np.testing.assert_allclose(single, dense_rerank(q, g, 20, 6, 0.3, [(o, -0.2)]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k1, k2", [(20, 6), (9, 1)])
def test_ties_follow_the_stable_order(caplog, k1, k2):
    """Small-integer features: every distance is exact, so rows are full of exact ties (and duplicates)."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(230, 4)).astype(np.float32)
    o = rng.integers(0, 2, size=(230, 3)).astype(np.float32)
    q, g = x[:30], x[30:]
    with caplog.at_level(logging.INFO, logger="vreid.retrieval.rerank"):
        got = k_reciprocal_rerank(q, g, k1, k2, 0.3, block=50)
    assert "ties at the neighbour-list boundary" in caplog.text  # the recomputation path ran
    np.testing.assert_allclose(got, dense_rerank(q, g, k1, k2, 0.3), atol=1e-5, rtol=0)
    got = k_reciprocal_rerank(q, g, k1, k2, 0.3, extra_distance=[(o, -0.25)], block=64)
    np.testing.assert_allclose(got, dense_rerank(q, g, k1, k2, 0.3, [(o, -0.25)]), atol=1e-5, rtol=0)


def test_fewer_images_than_neighbours():
    q, g = clustered(3, 5, 8, seed=4, num_ids=2)
    got = k_reciprocal_rerank(q, g, 20, 6, 0.3)
    np.testing.assert_allclose(got, dense_rerank(q, g, 20, 6, 0.3), atol=1e-5, rtol=0)
    got = k_reciprocal_rerank(q[:1], g[:1], 20, 6, 0.3)
    np.testing.assert_allclose(got, dense_rerank(q[:1], g[:1], 20, 6, 0.3), atol=1e-5, rtol=0)


def test_lambda_one_is_the_normalised_original_distance(features):
    q, g = features
    x = np.concatenate([q, g])
    d = pairwise_distance(q, x, "sqeuclidean")
    expected = d[:, len(q) :] / d.max(axis=1, keepdims=True)
    np.testing.assert_allclose(k_reciprocal_rerank(q, g, 20, 6, 1.0, block=50), expected, atol=1e-5)


def test_float64_arithmetic(features):
    q, g = features
    got = k_reciprocal_rerank(q.astype(np.float64), g, 20, 6, 0.3, dtype=np.float64)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, dense_rerank(q, g, 20, 6, 0.3), atol=1e-5, rtol=0)


def test_memory_stays_below_one_dense_matrix(monkeypatch):
    """With the scratch budgets turned down, nothing of size (q+g)² is left: a quarter of one float32 matrix."""
    monkeypatch.setattr(rerank, "_CHUNK_ROWS", 128)
    monkeypatch.setattr(rerank, "_CHUNK_ELEMENTS", 1 << 20)
    q, g = clustered(100, 5900, 16, seed=5, num_ids=800, spread=0.3)
    n = 6000
    tracemalloc.start()
    try:
        k_reciprocal_rerank(q, g, 20, 6, 0.3, block=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 / 4, f"peak {peak / 2**20:.1f} MiB"


def test_invalid_arguments(features):
    q, g = features
    with pytest.raises(ValueError, match="k1 and k2"):
        k_reciprocal_rerank(q, g, 0, 6)
    with pytest.raises(ValueError, match="dimensions differ"):
        k_reciprocal_rerank(q, g[:, :10])
    with pytest.raises(ValueError, match="q\\+g"):
        k_reciprocal_rerank(q, g, extra_distance=[(g, -0.1)])
    with pytest.raises(ValueError, match="pair"):
        k_reciprocal_rerank(q, g, extra_distance=[g])
    with pytest.raises(ValueError, match="NaN"):
        k_reciprocal_rerank(np.full_like(q, np.nan), g)
    with pytest.raises(ValueError, match="maximum"):
        k_reciprocal_rerank(np.zeros((2, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="shape"):
        k_reciprocal_rerank(q, g, extra_distance=lambda r, c: np.zeros((1, 1)))


def test_neighbour_lists_keep_the_stable_order_prefix():
    """Tile-by-tile pruned selection == the first entries of a stable argsort of the whole row, ties and negative
    values included (fused distances with negative weights can be < 0)."""
    rng = np.random.default_rng(7)
    n, keep, block = 90, 9, 16
    d = rng.integers(-4, 5, size=(n, n)).astype(np.float32) / 4  # many exact ties
    d = np.triu(d) + np.triu(d, 1).T
    d[3, 5] = d[5, 3] = -0.0
    lists = rerank._SmallestLists(n, keep, np.dtype(np.float32))
    nb = -(-n // block)
    for b in range(nb):
        s = slice(b * block, (b + 1) * block)
        lists.seed(d[s, s], b * block, b * block)
    for bi in range(nb):
        for bj in range(bi + 1, nb):
            tile = d[bi * block : (bi + 1) * block, bj * block : (bj + 1) * block]
            lists.offer_rows(tile, bi * block, bj * block)
            lists.offer_columns(tile, bi * block, bj * block)
    expected = np.argsort(d, axis=1, kind="stable")[:, :keep]
    got = np.take_along_axis(lists.idx, np.lexsort((lists.idx, lists.vals), axis=1), axis=1)
    np.testing.assert_array_equal(got, expected)
