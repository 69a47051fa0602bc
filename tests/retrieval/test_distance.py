"""pairwise_distance against distances computed from explicit difference vectors."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.retrieval.distance import l2_normalize, pairwise_distance, smallest_k


def brute_euclidean(q, g):
    return np.linalg.norm(q.astype(np.float64)[:, None, :] - g.astype(np.float64)[None, :, :], axis=2)


def brute_cosine(q, g):
    q, g = q.astype(np.float64), g.astype(np.float64)
    out = np.empty((len(q), len(g)))
    for i in range(len(q)):
        for j in range(len(g)):
            out[i, j] = 1 - q[i] @ g[j] / (np.linalg.norm(q[i]) * np.linalg.norm(g[j]))
    return out


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(11, 16)).astype(np.float32)
    g = rng.normal(size=(23, 16)).astype(np.float32)
    g[5] = q[2]  # an exact duplicate: distance 0, not NaN from a tiny negative under the root
    return q, g


@pytest.mark.parametrize("block", [1, 4, 4096])
def test_euclidean_and_squared(features, block):
    q, g = features
    expected = brute_euclidean(q, g)
    d = pairwise_distance(q, g, "euclidean", block=block)
    assert d.dtype == np.float32 and d.shape == (11, 23)
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=2e-3)
    assert d[2, 5] >= 0 and not np.isnan(d).any()
    d2 = pairwise_distance(q, g, "sqeuclidean", block=block)
    np.testing.assert_allclose(d2, expected**2, rtol=1e-5, atol=1e-4)
    assert (d2 >= 0).all()


@pytest.mark.parametrize("block", [3, 4096])
def test_cosine(features, block):
    q, g = features
    d = pairwise_distance(q, g, "cosine", block=block)
    np.testing.assert_allclose(d, brute_cosine(q, g), atol=1e-6)
    assert d[2, 5] == pytest.approx(0.0, abs=1e-6)


def test_float64_inputs_are_computed_in_float64():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    d = pairwise_distance(q, g, "euclidean", block=2)
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, brute_euclidean(q, g), rtol=1e-6)


def test_squared_distance_of_unit_vectors_is_two_minus_two_cosine(features):
    q, g = (l2_normalize(x) for x in features)
    np.testing.assert_allclose(pairwise_distance(q, g, "sqeuclidean"), 2 * pairwise_distance(q, g, "cosine"),
                               atol=1e-5)


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(np.arange(12.0).reshape(3, 4) + 1), axis=1), 1.0)


def test_bad_arguments(features):
    q, g = features
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(q, g, "manhattan")
    with pytest.raises(ValueError, match="dimensions"):
        pairwise_distance(q, g[:, :8])
    with pytest.raises(ValueError, match="shape"):
        pairwise_distance(q[0], g)
    with pytest.raises(ValueError, match="block"):
        pairwise_distance(q, g, block=0)


@pytest.mark.parametrize("k", [1, 3, 7, 12, 50])
def test_smallest_k_equals_a_stable_full_sort(k):
    rng = np.random.default_rng(k)
    values = rng.integers(0, 4, size=(9, 12)).astype(np.float32)  # many ties: order must follow the column
    expected = np.argsort(values, axis=1, kind="stable")[:, :min(k, 12)]
    np.testing.assert_array_equal(smallest_k(values, k), expected)


def test_smallest_k_refuses_bad_arguments():
    with pytest.raises(ValueError, match="k must be >= 1"):
        smallest_k(np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match="shape"):
        smallest_k(np.zeros(3), 1)
