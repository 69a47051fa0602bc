"""evaluate / evaluate_aic against plain-Python per-query computations and hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.retrieval.metrics import evaluate, evaluate_aic, stable_argsort_rows


def _ranked_hits(dist_row, qid, qcam, gids, gcams):
    """True/False per gallery item in rank order (ties by gallery index), junk removed; plain Python."""
    order = sorted(range(len(gids)), key=lambda j: (float(dist_row[j]), j))
    hits = []
    for j in order:
        same_id = gids[j] == qid
        if gcams is not None and same_id and qcam is not None and gcams[j] is not None and gcams[j] == qcam:
            continue  # junk
        hits.append(same_id)
    return hits


def brute_force(distmat, qids, gids, qcams, gcams, max_rank):
    aps, inps, cmcs, skipped = [], [], [], 0
    for i in range(len(qids)):
        hits = _ranked_hits(distmat[i], qids[i], None if qcams is None else qcams[i], gids, gcams)
        if not any(hits):
            skipped += 1
            continue
        found, precisions, last = 0, [], 0
        for rank, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / rank)
                last = rank
        aps.append(sum(precisions) / len(precisions))
        inps.append(len(precisions) / last)
        first = hits.index(True)
        cmcs.append([1.0 if first <= k else 0.0 for k in range(max_rank)])
    cmc = [sum(c[k] for c in cmcs) / len(cmcs) for k in range(max_rank)]
    return sum(aps) / len(aps), sum(inps) / len(inps), cmc, len(aps), skipped


def brute_force_aic(distmat, qids, gids, qcams, gcams, top_k):
    aps = []
    for i in range(len(qids)):
        hits = _ranked_hits(distmat[i], qids[i], None if qcams is None else qcams[i], gids, gcams)
        if not any(hits):
            continue
        found, total = 0, 0.0
        for rank, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                if rank <= top_k:
                    total += found / rank
        aps.append(total / min(found, top_k))
    return sum(aps) / len(aps), len(aps)


def random_problem(seed, nq=17, ng=60, n_ids=7, n_cams=3, dtype=np.float32):
    rng = np.random.default_rng(seed)
    gids = rng.integers(0, n_ids, ng).tolist()
    gcams = rng.integers(0, n_cams, ng).tolist()
    qids = rng.integers(0, n_ids + 2, nq).tolist()  # ids n_ids, n_ids+1 are absent from the gallery: skipped
    qcams = rng.integers(0, n_cams, nq).tolist()
    distmat = (np.round(rng.random((nq, ng)) * 8) / 8 - 0.25).astype(dtype)  # few distinct values: many ties
    distmat[0, :4] = -0.0  # must tie with +0.0
    distmat[1, :3] = 0.0
    return distmat, qids, gids, qcams, gcams


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_cams", [True, False])
def test_evaluate_matches_brute_force(seed, dtype, use_cams):
    distmat, qids, gids, qcams, gcams = random_problem(seed, dtype=dtype)
    if not use_cams:
        qcams = gcams = None
    max_rank = 10
    m_ap, m_inp, cmc, n_query, n_skipped = brute_force(distmat, qids, gids, qcams, gcams, max_rank)
    assert n_skipped > 0 and n_query > 0  # the random problem exercises skipping
    for block_rows in (None, 1, 4):
        r = evaluate(distmat, qids, gids, qcams, gcams, max_rank=max_rank, block_rows=block_rows)
        assert r["mAP"] == pytest.approx(m_ap, abs=1e-9)
        assert r["mINP"] == pytest.approx(m_inp, abs=1e-9)
        np.testing.assert_allclose(r["cmc"], cmc, atol=1e-9)
        assert (r["num_query"], r["num_skipped"]) == (n_query, n_skipped)
        assert r["rank1"] == pytest.approx(cmc[0]) and r["rank5"] == pytest.approx(cmc[4])
        assert r["rank10"] == pytest.approx(cmc[9])
        assert len(r["cmc"]) == max_rank
        assert np.isnan(r["ap"]).sum() == n_skipped


def test_junk_changes_the_result():
    distmat, qids, gids, qcams, gcams = random_problem(3)
    with_cams = evaluate(distmat, qids, gids, qcams, gcams)
    without = evaluate(distmat, qids, gids, None, None)
    assert with_cams["mAP"] != pytest.approx(without["mAP"])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("top_k", [1, 3, 8, 100])
@pytest.mark.parametrize("use_cams", [True, False])
def test_evaluate_aic_matches_brute_force(seed, top_k, use_cams):
    distmat, qids, gids, qcams, gcams = random_problem(seed, ng=40)
    if not use_cams:
        qcams = gcams = None
    m_ap, n_query = brute_force_aic(distmat, qids, gids, qcams, gcams, top_k)
    r = evaluate_aic(distmat, qids, gids, qcams, gcams, top_k=top_k, block_rows=3)
    assert r["mAP"] == pytest.approx(m_ap, abs=1e-9)
    assert r["num_query"] == n_query and r["num_skipped"] == len(qids) - n_query
    full = evaluate(distmat, qids, gids, qcams, gcams)
    assert r["rank1"] == pytest.approx(full["rank1"])
    if top_k >= distmat.shape[1]:  # nothing is truncated: the ordinary AP
        assert r["mAP"] == pytest.approx(full["mAP"], abs=1e-12)


def test_hand_computed_single_query():
    # ranking F, T, F, T: AP = (1/2 + 2/4) / 2, INP = 2/4, first hit at rank 2
    r = evaluate(np.array([[0.1, 0.2, 0.3, 0.4]]), [7], [1, 7, 2, 7], None, None, max_rank=4)
    assert r["mAP"] == pytest.approx(0.5)
    assert r["mINP"] == pytest.approx(0.5)
    np.testing.assert_allclose(r["cmc"], [0.0, 1.0, 1.0, 1.0])
    assert (r["rank1"], r["num_query"], r["num_skipped"]) == (0.0, 1, 0)
    assert r["first_match_rank"].tolist() == [1]


def test_gallery_order_is_not_rank_order():
    # distances put the gallery in the order [3, 1, 0, 2] -> hits T, F, F, T: AP = (1 + 2/4) / 2, INP = 2/4
    r = evaluate(np.array([[0.3, 0.2, 0.9, 0.1]], np.float32), ["a"], ["b", "c", "a", "a"], None, None, max_rank=3)
    assert r["mAP"] == pytest.approx(0.75)
    assert r["mINP"] == pytest.approx(0.5)
    np.testing.assert_allclose(r["cmc"], [1.0, 1.0, 1.0])


def test_same_id_same_camera_is_removed():
    # gallery: junk (same id, same cam) first, then a false match, then a true match from another camera
    distmat = np.array([[0.1, 0.2, 0.3]])
    r = evaluate(distmat, [1], [1, 2, 1], ["c1"], ["c1", "c2", "c2"], max_rank=3)
    assert r["mAP"] == pytest.approx(0.5)  # ranking F, T after removal
    np.testing.assert_allclose(r["cmc"], [0.0, 1.0, 1.0])
    r = evaluate(distmat, [1], [1, 2, 1], None, None, max_rank=3)  # VehicleID protocol: nothing removed
    assert r["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert r["rank1"] == 1.0


def test_different_id_same_camera_is_kept():
    # a different id seen by the query's camera is an ordinary false match, not junk
    r = evaluate(np.array([[0.1, 0.2]]), [1], [2, 1], ["c1"], ["c1", "c2"], max_rank=2)
    assert r["mAP"] == pytest.approx(0.5)
    assert r["cmc"].tolist() == [0.0, 1.0]


def test_query_with_only_junk_is_skipped():
    distmat = np.array([[0.1, 0.2], [0.1, 0.2]])
    r = evaluate(distmat, [1, 2], [2, 1], ["c1", "c2"], ["c1", "c1"])
    assert (r["num_query"], r["num_skipped"]) == (1, 1)  # query 0's only same-id item shares its camera
    assert np.isnan(r["ap"][0]) and r["first_match_rank"].tolist() == [-1, 0]
    with pytest.raises(ValueError, match="no query"):
        evaluate(distmat[:1], [1], [2, 1], ["c1"], ["c1", "c1"])


def test_none_camera_entries_disable_filtering_for_those_items():
    distmat = np.array([[0.1, 0.2], [0.1, 0.2]])
    # query 0 has no camera: nothing is junk; query 1's same-id item at index 0 has an unknown camera: kept
    r = evaluate(distmat, [1, 1], [1, 2], [None, "c1"], [None, "c2"], max_rank=2)
    assert r["mAP"] == pytest.approx(1.0) and r["num_query"] == 2
    r = evaluate(distmat, [1, 1], [1, 1], ["c1", "c1"], [None, "c1"], max_rank=2)  # index 1 is junk for both
    assert r["mAP"] == pytest.approx(1.0) and r["mINP"] == pytest.approx(1.0)


def test_string_ids_and_cameras_equal_integer_codes():
    distmat, qids, gids, qcams, gcams = random_problem(1)
    as_int = evaluate(distmat, qids, gids, qcams, gcams)
    as_str = evaluate(distmat, [f"{i:04d}" for i in qids], np.array([f"{i:04d}" for i in gids]),
                      [f"c{c:03d}" for c in qcams], tuple(f"c{c:03d}" for c in gcams))
    for key in ("mAP", "mINP", "rank1", "num_query", "num_skipped"):
        assert as_str[key] == as_int[key]
    np.testing.assert_array_equal(as_str["cmc"], as_int["cmc"])


def test_ties_keep_gallery_order():
    # equal distances: the earlier gallery item ranks first (stable sort)
    assert evaluate(np.zeros((1, 2), np.float32), [1], [2, 1], None, None)["mAP"] == pytest.approx(0.5)
    assert evaluate(np.zeros((1, 2), np.float32), [1], [1, 2], None, None)["mAP"] == pytest.approx(1.0)
    assert evaluate(np.array([[0.0, -0.0]], np.float32), [1], [2, 1], None, None)["mAP"] == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int16, np.uint8, np.float64])
def test_stable_argsort_rows_equals_numpy(dtype):
    rng = np.random.default_rng(0)
    values = rng.integers(-5, 6, (9, 50)).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        values[0, ::3] = -0.0
        values[1, :5] = [np.inf, -np.inf, 1e-40, -1e-40, 3.0]
    expected = np.argsort(values, axis=1, kind="stable")
    np.testing.assert_array_equal(stable_argsort_rows(values), expected)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.zeros((2, 3)), [1, 2], [1, 2], None, None)
    with pytest.raises(ValueError, match="both"):
        evaluate(np.zeros((1, 2)), [1], [1, 2], [0], None)
    with pytest.raises(ValueError, match="cameras"):
        evaluate(np.zeros((1, 2)), [1], [1, 2], [0], [0])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.array([[np.nan, 0.0]]), [1], [1, 2], None, None)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate(np.zeros((1, 2)), [1], [1, 2], None, None, max_rank=0)
    with pytest.raises(ValueError, match="top_k"):
        evaluate_aic(np.zeros((1, 2)), [1], [1, 2], top_k=0)
