"""Track feature averaging, track re-ranking and track distances against plain-loop reference versions."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.retrieval.metrics import evaluate
from vreid.retrieval.tracks import average_track_features, track_distance, track_rerank


def unit(x):
    return x / np.linalg.norm(x)


def ref_average(features, track_ids, window, normalize=True):
    out = features.astype(np.float64).copy()
    for i, t in enumerate(track_ids):
        if t in ("", None):
            continue
        members = [j for j, u in enumerate(track_ids) if u == t]
        p = members.index(i)
        if window is None:
            chosen = members
        else:
            chosen = members[max(0, p - (window - 1) // 2) : min(len(members), p + window // 2 + 1)]
        mean = sum(features[j].astype(np.float64) for j in chosen) / len(chosen)
        out[i] = unit(mean) if normalize else mean
    return out


def ref_tracks(track_ids):
    """Tracks as index lists in order of first appearance; untracked images as singletons."""
    groups: dict = {}
    for j, t in enumerate(track_ids):
        groups.setdefault(("untracked", j) if t in ("", None) else t, []).append(j)
    return list(groups.values())


def ref_score(row, members, reduce):
    values = [float(row[j]) for j in members]
    return min(values) if reduce == "min" else sum(values) / len(values)


def ref_rerank(distmat, track_ids, top_k, reduce):
    tracks = ref_tracks(track_ids)
    out = []
    for row in distmat:
        order = sorted(range(len(tracks)), key=lambda i: (ref_score(row, tracks[i], reduce), i))
        ranked = []
        for i in order:
            ranked += sorted(tracks[i], key=lambda j: (row[j], j))
        out.append(ranked if top_k is None else ranked[:top_k])
    return np.array(out)


@pytest.fixture
def gallery_tracks():
    """40 images: 9 interleaved tracks of 1-8 images and 5 untracked images."""
    rng = np.random.default_rng(1)
    ids = [f"t{i}" for i in range(9) for _ in range(rng.integers(1, 9))]
    ids = ids[:35] + [""] * 5
    return np.array([ids[i] for i in rng.permutation(len(ids))])


def test_average_whole_track(gallery_tracks):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(len(gallery_tracks), 6)).astype(np.float32)
    out = average_track_features(x, gallery_tracks)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ref_average(x, list(gallery_tracks), None), atol=1e-6)
    untracked = gallery_tracks == ""
    assert np.array_equal(out[untracked], x[untracked])  # bit-identical, not even re-normalised
    t = gallery_tracks == gallery_tracks[0]
    assert np.allclose(out[t], out[t][0])  # one vector for the whole track


@pytest.mark.parametrize("window", [1, 2, 3, 4, 50])
def test_average_window(gallery_tracks, window):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(len(gallery_tracks), 5))
    out = average_track_features(x, gallery_tracks, window=window)
    np.testing.assert_allclose(out, ref_average(x, list(gallery_tracks), window), atol=1e-12)
    if window == 1:
        tracked = gallery_tracks != ""
        np.testing.assert_allclose(out[tracked], x[tracked] / np.linalg.norm(x[tracked], axis=1, keepdims=True))
    if window == 50:  # longer than any track: the whole-track mean
        np.testing.assert_allclose(out, average_track_features(x, gallery_tracks), atol=1e-12)


def test_average_without_normalisation_and_none_ids():
    x = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 9.0]])
    ids = ["a", None, "a", "a"]
    out = average_track_features(x, ids, normalize=False)
    np.testing.assert_allclose(out[[0, 2, 3]], [[2.0, 14 / 3]] * 3)
    assert np.array_equal(out[1], x[1])
    out = average_track_features(x, ids, window=2, normalize=False)  # 0 before, 1 after
    np.testing.assert_allclose(out[[0, 2, 3]], [[3.0, 2.5], [2.5, 7.0], [0.0, 9.0]])
    assert np.array_equal(average_track_features(x, ["", "", "", ""]), x)


def test_average_rejects_bad_input():
    with pytest.raises(ValueError, match="3 track ids for 4 images"):
        average_track_features(np.zeros((4, 2)), ["a", "a", "b"])
    with pytest.raises(ValueError, match="window"):
        average_track_features(np.zeros((4, 2)), ["a"] * 4, window=0)


@pytest.mark.parametrize("reduce", ["min", "mean"])
@pytest.mark.parametrize("top_k", [1, 5, 17, 40, 100, None])
def test_track_rerank_matches_loop(gallery_tracks, reduce, top_k):
    rng = np.random.default_rng(4)
    d = rng.random((7, len(gallery_tracks))).astype(np.float32)
    ranked = track_rerank(d, gallery_tracks, top_k=top_k, reduce=reduce)
    expected = ref_rerank(d, list(gallery_tracks), top_k, reduce)
    assert ranked.dtype == np.int64 and ranked.shape == expected.shape
    assert np.array_equal(ranked, expected)
    assert np.array_equal(track_rerank(d, gallery_tracks, top_k=top_k, reduce=reduce, block_rows=2), expected)


def test_track_rerank_hand_example():
    # gallery:         0     1     2     3    4     5     6
    ids = np.array(["A", "B", "A", "", "B", "A", "C"])
    d = np.array([[0.9, 0.5, 0.1, 0.3, 0.2, 0.4, 0.35]])
    # min: A 0.1, B 0.2, single 3 0.3, C 0.35; A's images by distance (2, 5, 0), not in track-file order (0, 2, 5)
    assert track_rerank(d, ids, top_k=7).tolist() == [[2, 5, 0, 4, 1, 3, 6]]
    assert track_rerank(d, ids, top_k=4).tolist() == [[2, 5, 0, 4]]  # the last track is cut short
    # mean: single 3 0.3, B 0.35 ties C 0.35 -> B (first in the gallery), A 0.467
    assert track_rerank(d, ids, top_k=7, reduce="mean").tolist() == [[3, 4, 1, 6, 2, 5, 0]]
    assert track_rerank(d, ids, top_k=100).shape == (1, 7)  # small gallery: every image, once


def test_track_rerank_large_case():
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 250, size=5000).astype(str)
    ids[rng.random(5000) < 0.05] = ""
    d = rng.random((200, 5000)).astype(np.float32)
    ranked = track_rerank(d, ids, top_k=100)
    assert ranked.shape == (200, 100)
    for row, dist in zip(ranked[:20], d[:20], strict=True):
        assert len(set(row.tolist())) == 100
        seen, current = set(), None
        for j in row:  # every track forms one block, nearest image first
            if ids[j] != current:
                assert ids[j] not in seen or ids[j] == ""
                seen.add(ids[j])
                current = ids[j]
        assert row[0] == int(np.argmin(dist))


def test_track_rerank_rejects_bad_input():
    with pytest.raises(ValueError, match="2 track ids for 3 images"):
        track_rerank(np.zeros((1, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="reduction"):
        track_rerank(np.zeros((1, 3)), ["a", "b", "c"], reduce="max")
    with pytest.raises(ValueError, match="top_k"):
        track_rerank(np.zeros((1, 3)), ["a", "b", "c"], top_k=0)
    with pytest.raises(ValueError, match="NaN"):
        track_rerank(np.array([[0.1, np.nan, 0.2]]), ["a", "b", "c"])


@pytest.mark.parametrize("reduce", ["min", "mean"])
def test_track_distance(gallery_tracks, reduce):
    rng = np.random.default_rng(6)
    d = rng.random((6, len(gallery_tracks))).astype(np.float32)
    out = track_distance(d, gallery_tracks, reduce=reduce)
    assert out.dtype == np.float32 and out.shape == d.shape
    for i, row in enumerate(d):
        for members in ref_tracks(list(gallery_tracks)):
            np.testing.assert_allclose(out[i, members], ref_score(row, members, reduce), rtol=1e-6)
    untracked = gallery_tracks == ""
    assert np.array_equal(out[:, untracked], d[:, untracked])
    assert np.array_equal(track_distance(d, gallery_tracks, reduce=reduce, block_rows=1), out)
    # the tracks come in the same order as in track_rerank
    full = track_rerank(d, gallery_tracks, top_k=None, reduce=reduce)
    by_distance = np.argsort(out, axis=1, kind="stable")
    for a, b in zip(full, by_distance, strict=True):
        key = [("u", j) if gallery_tracks[j] == "" else gallery_tracks[j] for j in range(len(gallery_tracks))]
        assert list(dict.fromkeys(key[j] for j in a)) == list(dict.fromkeys(key[j] for j in b))


def test_track_distance_feeds_evaluate():
    # query of vehicle 1; its track's best image is close, so the whole track moves to the top
    ids = np.array(["A", "A", "B", "B"])
    d = np.array([[0.1, 0.9, 0.2, 0.3]], dtype=np.float32)
    raw = evaluate(d, ["1"], ["1", "1", "2", "2"], None, None)
    tracked = evaluate(track_distance(d, ids), ["1"], ["1", "1", "2", "2"], None, None)
    assert raw["mAP"] == pytest.approx((1 + 2 / 4) / 2)
    assert tracked["mAP"] == pytest.approx(1.0)
