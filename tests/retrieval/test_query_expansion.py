"""alpha-QE and DBA against per-vector loops over explicitly ranked neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.retrieval.query_expansion import _top_k_columns, average_query_expansion, database_augmentation


def unit(v):
    return v / np.linalg.norm(v)


def ref_expand(x, base, top_k, alpha, exclude_self):
    x = [unit(v.astype(np.float64)) for v in x]
    base = [unit(v.astype(np.float64)) for v in base]
    out = []
    for i, v in enumerate(x):
        candidates = [j for j in range(len(base)) if not (exclude_self and j == i)]
        sims = {j: float(v @ base[j]) for j in candidates}
        neighbours = sorted(candidates, key=lambda j: (-sims[j], j))[:top_k]
        new = v.copy()
        for j in neighbours:
            new = new + max(sims[j], 0.0) ** alpha * base[j]
        out.append(unit(new))
    return np.array(out)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    gallery = np.repeat(centres, 6, axis=0) + 0.6 * rng.normal(size=(24, 16))
    query = centres[[0, 2, 3]] + 0.6 * rng.normal(size=(3, 16))
    return query.astype(np.float32), (gallery * rng.uniform(0.5, 3, size=(24, 1))).astype(np.float32)


@pytest.mark.parametrize("top_k,alpha", [(5, 3.0), (1, 3.0), (3, 0.0), (10, 1.5), (24, 3.0), (50, 2.0)])
def test_alpha_qe_matches_loop(data, top_k, alpha):
    query, gallery = data
    new_query, new_gallery = average_query_expansion(query, gallery, top_k=top_k, alpha=alpha)
    assert new_query.dtype == np.float32 and new_query.shape == query.shape
    np.testing.assert_allclose(new_query, ref_expand(query, gallery, top_k, alpha, False), atol=2e-6)
    np.testing.assert_allclose(new_gallery, gallery / np.linalg.norm(gallery, axis=1, keepdims=True), atol=1e-7)
    blocked, _ = average_query_expansion(query, gallery, top_k=top_k, alpha=alpha, block_rows=1)
    np.testing.assert_allclose(blocked, new_query, atol=1e-7)


def test_alpha_zero_is_plain_average_and_k0_is_identity(data):
    query, gallery = data
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    new_query, _ = average_query_expansion(query, gallery, top_k=3, alpha=0.0)
    for i in range(len(qn)):
        top = np.argsort(-(gn @ qn[i]))[:3]
        np.testing.assert_allclose(new_query[i], unit(qn[i] + gn[top].sum(axis=0)), atol=1e-6)
    np.testing.assert_allclose(average_query_expansion(query, gallery, top_k=0)[0], qn, atol=1e-7)


def test_qe_moves_query_towards_its_cluster(data):
    query, gallery = data
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    new_query, _ = average_query_expansion(query, gallery, top_k=5)
    own = gn[0:6].mean(axis=0)  # query 0 is drawn from cluster 0
    assert new_query[0] @ own > qn[0] @ own


@pytest.mark.parametrize("top_k,alpha", [(5, 3.0), (1, 0.0), (4, 1.0), (23, 3.0), (40, 3.0)])
def test_dba_matches_loop(data, top_k, alpha):
    _, gallery = data
    out = database_augmentation(gallery, top_k=top_k, alpha=alpha)
    assert out.dtype == np.float32 and out.shape == gallery.shape
    np.testing.assert_allclose(out, ref_expand(gallery, gallery, top_k, alpha, True), atol=2e-6)
    for rows in (1, 5):  # blocks: every row still excludes itself and reads the un-augmented gallery
        np.testing.assert_allclose(database_augmentation(gallery, top_k, alpha, block_rows=rows), out, atol=1e-7)


def test_dba_never_picks_itself():
    a, b = unit(np.array([1.0, 0.0, 0.0])), unit(np.array([0.6, 0.8, 0.0]))
    gallery = np.array([a, a, b])
    out = database_augmentation(gallery, top_k=1, alpha=1.0)
    np.testing.assert_allclose(out[0], a)  # its duplicate, not itself: a + a
    np.testing.assert_allclose(out[2], unit(b + 0.6 * a))
    np.testing.assert_allclose(database_augmentation(gallery[:1], top_k=5), gallery[:1])  # nobody else: unchanged


def test_top_k_columns_breaks_ties_by_index():
    sims = np.array([[0.5, 0.9, 0.9, -0.1, 0.0, -0.0], [0.0, -0.2, -0.0, 0.3, -np.inf, 0.3]], dtype=np.float32)
    assert _top_k_columns(sims, 2).tolist() == [[1, 2], [3, 5]]
    assert _top_k_columns(sims, 6).tolist() == [[1, 2, 0, 4, 5, 3], [3, 5, 0, 2, 1, 4]]


def test_qe_rejects_bad_input(data):
    query, gallery = data
    with pytest.raises(ValueError, match="dimensions differ"):
        average_query_expansion(query, gallery[:, :8])
    with pytest.raises(ValueError, match="top_k"):
        database_augmentation(gallery, top_k=-1)
    with pytest.raises(ValueError, match="alpha"):
        average_query_expansion(query, gallery, alpha=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        database_augmentation(np.array([[np.nan, 1.0], [1.0, 0.0]]))
