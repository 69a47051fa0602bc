"""Distance normalisation, distance ensembles and feature-concatenation ensembles against explicit formulas."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.retrieval.distance import pairwise_distance
from vreid.retrieval.ensemble import ensemble_distances, ensemble_features, normalize_distance


def ref_normalize(d, method):
    out = np.zeros(d.shape)
    for i, row in enumerate(d.astype(np.float64)):
        if method == "minmax":
            lo, scale = min(row), max(row) - min(row)
        else:
            lo = sum(row) / len(row)
            scale = (sum((v - lo) ** 2 for v in row) / len(row)) ** 0.5
        for j, v in enumerate(row):
            out[i, j] = (v - lo) / scale if scale > 0 else 0.0
    return out


@pytest.fixture
def distmats():
    rng = np.random.default_rng(0)
    return [rng.random((5, 9)).astype(np.float32) * s + o for s, o in [(1, 0), (10, 3), (0.1, -1)]]


@pytest.mark.parametrize("method", ["minmax", "zscore"])
def test_normalize_distance(distmats, method):
    d = distmats[1].copy()
    d[2] = 4.0  # a constant row
    before = d.copy()
    out = normalize_distance(d, method)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref_normalize(d, method), atol=1e-5)
    assert np.all(out[2] == 0)
    assert np.array_equal(np.argsort(out[0]), np.argsort(d[0]))  # ranking kept
    assert np.array_equal(d, before)  # input untouched


def test_normalize_none_and_errors(distmats):
    d = distmats[0]
    out = normalize_distance(d, "none")
    assert np.array_equal(out, d) and out is not d
    assert normalize_distance(np.array([[1, 3, 2]]), "minmax").tolist() == [[0.0, 1.0, 0.5]]
    with pytest.raises(ValueError, match="unknown distance normalisation 'max'"):
        normalize_distance(d, "max")
    with pytest.raises(ValueError, match="shape"):
        normalize_distance(np.zeros(3), "minmax")


def test_ensemble_distances_weights(distmats):
    a, b, c = distmats
    np.testing.assert_allclose(ensemble_distances([a, b, c]), (a + b + c) / 3, rtol=1e-6)
    expected = np.zeros(a.shape)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            expected[i, j] = (1 * float(a[i, j]) + 3 * float(b[i, j]) + 0 * float(c[i, j])) / 4
    out = ensemble_distances([a, b, c], weights=[1, 3, 0])
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(ensemble_distances([a, b], weights=[2, 6]), ensemble_distances([a, b], [1, 3]))
    assert np.array_equal(ensemble_distances([a]), a)


@pytest.mark.parametrize("method", ["minmax", "zscore"])
def test_ensemble_distances_normalised(distmats, method):
    a, b, c = distmats
    expected = (2 * ref_normalize(a, method) + ref_normalize(b, method) + ref_normalize(c, method)) / 4
    np.testing.assert_allclose(ensemble_distances(distmats, [2, 1, 1], normalize=method), expected, atol=1e-5)
    # normalised, a model's distance scale (any positive affine map per row) no longer matters
    rescaled = ensemble_distances([100 * a + 7, b, c], [2, 1, 1], normalize=method)
    np.testing.assert_allclose(rescaled, expected, atol=1e-5)
    assert not np.allclose(ensemble_distances([100 * a + 7, b, c], [2, 1, 1]), ensemble_distances(distmats, [2, 1, 1]))


def test_ensemble_distances_errors(distmats):
    a, b, _ = distmats
    with pytest.raises(ValueError, match=r"distmats\[2\] has shape \(5, 8\) but distmats\[0\] has shape \(5, 9\)"):
        ensemble_distances([a, b, a[:, :8]])
    with pytest.raises(ValueError, match=r"distmats\[1\] must have shape"):
        ensemble_distances([a, a[0]])
    with pytest.raises(ValueError, match="3 weights for 2 models"):
        ensemble_distances([a, b], weights=[1, 1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        ensemble_distances([a, b], weights=[1, -1])
    with pytest.raises(ValueError, match="sum to 0"):
        ensemble_distances([a, b], weights=[0, 0])
    with pytest.raises(ValueError, match="no distance matrices"):
        ensemble_distances([])
    with pytest.raises(ValueError, match="unknown distance normalisation"):
        ensemble_distances([a, b], normalize="rank")


def test_ensemble_features_is_weighted_cosine():
    rng = np.random.default_rng(1)
    models = [rng.normal(size=(12, d)).astype(np.float32) * s for d, s in [(8, 1.0), (16, 5.0), (4, 0.2)]]
    weights = [0.5, 2.0, 1.5]
    fused = ensemble_features(models, weights)
    assert fused.shape == (12, 28) and fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1, rtol=1e-6)
    total = sum(weights)
    for i in range(12):
        for j in range(12):
            cos = [float(m[i] @ m[j]) / (np.linalg.norm(m[i]) * np.linalg.norm(m[j])) for m in models]
            expected = sum(w * c for w, c in zip(weights, cos, strict=True)) / total
            assert float(fused[i] @ fused[j]) == pytest.approx(expected, abs=1e-5)
    # hence squared distances on the fused feature = weighted mean of per-model squared distances
    q, g = slice(0, 4), slice(4, 12)
    per_model = [pairwise_distance(m[q], m[g], "cosine") * 2 for m in models]  # 2 - 2cos on unit vectors
    np.testing.assert_allclose(pairwise_distance(fused[q], fused[g], "sqeuclidean"),
                               ensemble_distances(per_model, weights), atol=1e-5)


def test_ensemble_features_defaults_and_errors():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [0.0, 1.0]])
    h = np.sqrt(0.5)
    np.testing.assert_allclose(ensemble_features([a, b]), [[0.6 * h, 0.8 * h, 0, h], [h, 0, 0, h]])
    np.testing.assert_allclose(ensemble_features([a, b], weights=[1, 0]), [[0.6, 0.8, 0, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"feature_sets\[1\] has 1 rows but feature_sets\[0\] has 2"):
        ensemble_features([a, b[:1]])
    with pytest.raises(ValueError, match="2 weights for 1 models"):
        ensemble_features([a], weights=[1, 2])
