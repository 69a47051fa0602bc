"""The torch retrieval path (run here on the CPU device) against independent references and the numpy path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_metrics import brute_force, brute_force_aic, random_problem
from test_rerank import clustered, dense_rerank

from vreid.errors import VreidError
from vreid.retrieval import evaluate, evaluate_aic, k_reciprocal_rerank
from vreid.retrieval.device import retrieval_device


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (7, 1, 0.5), (50, 15, 0.5)])
def test_rerank_on_a_torch_device_matches_the_dense_reference(k1, k2, lambda_value):
    q, g = clustered(30, 200, 64, seed=0)
    expected = dense_rerank(q, g, k1, k2, lambda_value)
    got = k_reciprocal_rerank(q, g, k1, k2, lambda_value, device="cpu")
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, k_reciprocal_rerank(q, g, k1, k2, lambda_value), atol=1e-5, rtol=0)


def test_fused_rerank_on_a_torch_device():
    q, g = clustered(30, 200, 32, seed=1)
    rng = np.random.default_rng(2)
    o = rng.normal(size=(230, 8)).astype(np.float32)
    c = rng.normal(size=(230, 4)).astype(np.float32)
    extra = [(o, -0.1), (c, -0.05)]
    expected = dense_rerank(q, g, 20, 6, 0.3, extra)
    np.testing.assert_allclose(k_reciprocal_rerank(q, g, 20, 6, 0.3, extra_distance=extra, device="cpu"),
                               expected, atol=1e-5, rtol=0)


def test_rerank_ties_on_a_torch_device():
    """Small-integer features: rows full of exact ties, resolved by index as the stable order does."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(230, 4)).astype(np.float32)
    got = k_reciprocal_rerank(x[:30], x[30:], 20, 6, 0.3, device="cpu")
    np.testing.assert_allclose(got, dense_rerank(x[:30], x[30:], 20, 6, 0.3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_cams", [True, False])
def test_evaluate_on_a_torch_device_matches_brute_force(seed, use_cams):
    distmat, qids, gids, qcams, gcams = random_problem(seed)
    if not use_cams:
        qcams = gcams = None
    m_ap, m_inp, cmc, n_eval, skipped = brute_force(distmat, qids, gids, qcams, gcams, 10)
    got = evaluate(distmat, qids, gids, qcams, gcams, max_rank=10, block_rows=5, device="cpu")
    assert got["mAP"] == pytest.approx(m_ap, abs=1e-12) and got["mINP"] == pytest.approx(m_inp, abs=1e-12)
    np.testing.assert_allclose(got["cmc"], cmc, atol=1e-12)
    assert (got["num_query"], got["num_skipped"]) == (n_eval, skipped)
    aic_map, _ = brute_force_aic(distmat, qids, gids, qcams, gcams, 7)
    assert evaluate_aic(distmat, qids, gids, qcams, gcams, top_k=7, device="cpu")["mAP"] == pytest.approx(aic_map)


def test_retrieval_device_choice():
    assert retrieval_device("cpu") is None  # the numpy path
    assert retrieval_device("auto") == ("cuda" if torch.cuda.is_available() else None)
    with pytest.raises(VreidError, match="choose from"):
        retrieval_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(VreidError, match="no CUDA device"):
            retrieval_device("cuda")


def test_small_blocks_give_the_same_results(monkeypatch):
    """Row blocks, Jaccard chunks and evaluation blocks split many times over: same numbers."""
    from vreid.retrieval import accel

    q, g = clustered(30, 200, 64, seed=6)
    whole = k_reciprocal_rerank(q, g, 20, 6, 0.3, device="cpu")
    distmat, qids, gids, qcams, gcams = random_problem(1)
    before = evaluate(distmat, qids, gids, qcams, gcams, device="cpu")
    monkeypatch.setattr(accel, "_BLOCK_ELEMENTS", {"cpu": 700, "cuda": 700})
    np.testing.assert_allclose(k_reciprocal_rerank(q, g, 20, 6, 0.3, device="cpu"), whole, atol=1e-6, rtol=0)
    np.testing.assert_allclose(k_reciprocal_rerank(q, g, 20, 6, 0.3), whole, atol=1e-5, rtol=0)
    after = evaluate(distmat, qids, gids, qcams, gcams, device="cpu")
    assert after["mAP"] == before["mAP"] and np.array_equal(after["cmc"], before["cmc"])
