"""In-memory gallery search: every kind and engine against brute force, filters, updates without rebuilding, errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vreid.deploy import index as index_module
from vreid.deploy.index import GalleryIndex, SearchFilter
from vreid.errors import VreidError

HAS_FAISS = importlib.util.find_spec("faiss") is not None
CONFIGS = [("exact", "numpy"), *([("exact", "faiss"), ("ivf", "faiss"), ("hnsw", "faiss")] if HAS_FAISS else [])]


def _gallery(n=300, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    return feats, [f"c{i % 4}" for i in range(n)], [f"t{i // 5}" for i in range(n)], \
        [None if i % 7 == 0 else float(i) for i in range(n)]


def _brute(gallery: np.ndarray, alive, query: np.ndarray, k: int) -> list[int]:
    """Cosine similarity written out: dot product over the product of norms, best first (ties: lower id)."""
    sims = [(float(query @ g / (np.linalg.norm(query) * np.linalg.norm(g))), int(i))
            for i, g in zip(alive, gallery, strict=True)]
    return [i for _, i in sorted(sims, key=lambda t: (-t[0], t[1]))[:k]]


def _options(kind):
    # exhaustive settings: IVF probing every list and a wide HNSW beam give exact answers on 300 points
    return {"ivf": {"nlist": 8, "nprobe": 8}, "hnsw": {"ef_search": 400}}.get(kind, {})


def _index(feats, cams=None, tracks=None, times=None, **options):
    index = GalleryIndex(feats.shape[1], **options)
    index.add(np.arange(len(feats)), feats, cams, tracks, times)
    return index


@pytest.mark.parametrize("kind,engine", CONFIGS)
def test_search_matches_brute_force_and_survives_updates(kind, engine):
    feats, cams, tracks, times = _gallery()
    index = _index(feats, cams, tracks, times, kind=kind, engine=engine, **_options(kind))
    assert index.engine == engine and len(index) == 300
    queries = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    for q, hits in zip(queries, index.search(queries, top_k=10), strict=True):
        assert [h.id for h in hits] == _brute(feats, range(300), q, 10)
        cos = q @ feats[hits[0].id] / np.linalg.norm(q) / np.linalg.norm(feats[hits[0].id])
        assert hits[0].score == pytest.approx(cos, abs=1e-5)

    # remove the current best matches and add a near-copy of query 0: no rebuild, results follow
    best = [h.id for h in index.search(queries, top_k=3)[0]]
    assert index.remove(best) == 3
    index.add([300], queries[:1] * 2.0 + 1e-3, ["c9"], ["new"], [1e9])
    hits = index.search(queries[:1], top_k=5)[0]
    assert hits[0].id == 300 and hits[0].score == pytest.approx(1.0, abs=1e-3)
    alive = [i for i in range(300) if i not in best]
    assert [h.id for h in hits[1:]] == _brute(feats[alive], alive, queries[0], 4)
    assert index.ids.tolist() == [*alive, 300]


@pytest.mark.parametrize("kind,engine", CONFIGS)
def test_filters_are_exact_over_the_rows_that_pass(kind, engine):
    feats, cams, tracks, times = _gallery()
    index = _index(feats, cams, tracks, times, kind=kind, engine=engine, **_options(kind))
    index.remove([1, 2, 3])
    q = np.random.default_rng(2).normal(size=(1, 16)).astype(np.float32)
    cases = [
        (SearchFilter(cameras=("c1",)), lambda i: cams[i] == "c1"),
        (SearchFilter(cameras=("c1", "c2", "nope")), lambda i: cams[i] in ("c1", "c2")),
        (SearchFilter(tracks=("t3", "t40")), lambda i: tracks[i] in ("t3", "t40")),
        (SearchFilter(time_from=50.0, time_to=120.0), lambda i: times[i] is not None and 50 <= times[i] <= 120),
        (SearchFilter(time_from=250.0), lambda i: times[i] is not None and times[i] >= 250),
        (SearchFilter(cameras=("c0",), time_to=100.0), lambda i: cams[i] == "c0" and times[i] is not None
         and times[i] <= 100),
        (SearchFilter(cameras=("unknown",)), lambda i: False),
    ]
    for where, passes in cases:
        alive = [i for i in range(300) if i not in (1, 2, 3) and passes(i)]
        got = [h.id for h in index.search(q, 8, where)[0]]
        assert got == _brute(feats[alive], alive, q[0], 8), where


def test_filter_window_must_be_ordered():
    with pytest.raises(VreidError, match="ends"):
        SearchFilter(time_from=10.0, time_to=5.0)


@pytest.mark.skipif(not HAS_FAISS, reason="FAISS not installed")
def test_hnsw_hides_removed_ids_then_rebuilds():
    feats, *_ = _gallery(n=200)
    index = _index(feats, kind="hnsw", engine="faiss", ef_search=400)
    query = feats[:1]
    assert index.search(query, 3)[0][0].id == 0
    index.remove([0])
    assert index.hidden == {0}
    assert index.search(query, 3)[0][0].id != 0
    index.remove(list(range(1, 30)))  # more than a tenth removed: compacted, the graph rebuilt from the arrays
    assert index._index is None and index.dead == 0
    assert all(h.id >= 30 for h in index.search(query, 10)[0]) and index.hidden == set()


def test_appends_grow_geometrically_and_keep_every_row():
    feats, *_ = _gallery(n=3000, dim=8)
    index = GalleryIndex(8, engine="numpy")
    for i in range(3000):
        index.add([i], feats[i:i + 1])
    assert len(index) == 3000 and len(index._ids) < 2 * 3000  # capacity stays within a growth step
    np.testing.assert_allclose(index.features, feats / np.linalg.norm(feats, axis=1, keepdims=True), atol=1e-6)


def test_numpy_fallback_and_errors():
    feats, *_ = _gallery(n=20)
    index = _index(feats, engine="numpy")
    with pytest.raises(VreidError, match="8 dimensions, the gallery 16"):
        index.search(np.zeros((1, 8), np.float32))
    with pytest.raises(VreidError, match="NaN"):
        index.add([20], np.full((1, 16), np.nan, np.float32))
    with pytest.raises(VreidError, match=r"ids not in the gallery: \[99\]"):
        index.remove([3, 99])
    assert len(index) == 20  # nothing removed by the failed call
    with pytest.raises(VreidError, match="1 features but 2 camera_ids"):
        index.add([20], feats[:1], ["a", "b"])
    with pytest.raises(VreidError, match="ids must increase"):
        index.add([5], feats[:1])
    with pytest.raises(VreidError, match="choose from"):
        GalleryIndex(16, kind="lsh")
    assert len(index.search(feats[:2], top_k=50)[0]) == 20  # k capped at the gallery size


def test_remove_everything_then_add_again():
    feats, *_ = _gallery(n=10)
    for kind, engine in CONFIGS:
        index = _index(feats, kind=kind, engine=engine, **_options(kind))
        index.search(feats[:1], 1)
        index.remove(range(10))
        assert len(index) == 0 and index.search(feats[:2], 5) == [[], []]
        index.add([10], feats[3:4])
        assert [h.id for h in index.search(feats[3:4], 5)[0]] == [10]


def test_without_faiss_every_kind_is_exact_numpy(monkeypatch):
    monkeypatch.setattr(index_module, "_faiss", lambda: None)
    feats, *_ = _gallery(n=60)
    with pytest.raises(VreidError, match="pip install faiss-cpu"):
        GalleryIndex(16, engine="faiss")
    index = _index(feats, kind="hnsw")
    assert index.engine == "numpy"
    q = feats[7:8] + 0.01
    assert [h.id for h in index.search(q, 5)[0]] == _brute(feats, range(60), q[0], 5)


@pytest.mark.skipif(not HAS_FAISS, reason="FAISS not installed")
def test_ivf_too_small_to_train_searches_exactly_then_trains():
    feats, *_ = _gallery(n=100)
    index = _index(feats[:20], kind="ivf", engine="faiss", nlist=32, nprobe=32)
    q = feats[5:6]
    assert [h.id for h in index.search(q, 3)[0]] == _brute(feats[:20], range(20), q[0], 3)
    assert index.trained_nlist == 0  # 20 images cannot train 32 lists: exact FAISS search meanwhile
    index.add(np.arange(20, 100), feats[20:])
    assert [h.id for h in index.search(q, 3)[0]] == _brute(feats, range(100), q[0], 3)  # probes all lists
    assert index.trained_nlist == 32


def test_search_on_a_torch_device_matches_brute_force():
    feats, cams, tracks, times = _gallery()
    index = _index(feats, cams, tracks, times, engine="numpy")
    queries = np.random.default_rng(1).normal(size=(7, feats.shape[1])).astype(np.float32)
    got = index.search(queries, top_k=10, device="cpu")
    numpy_hits = index.search(queries, top_k=10)
    for q, hits, ref in zip(queries, got, numpy_hits, strict=True):
        assert [h.id for h in hits] == _brute(feats, np.arange(len(feats)), q, 10)
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in ref], atol=1e-5)
    # with a filter, only the rows that pass, on the device as with numpy
    where = SearchFilter(cameras=("c1",))
    for q, hits in zip(queries, index.search(queries, top_k=5, where=where, device="cpu"), strict=True):
        alive = [i for i in range(len(feats)) if cams[i] == "c1"]
        assert [h.id for h in hits] == _brute(feats[alive], alive, q, 5)


def test_search_in_small_device_blocks_gives_the_same_hits(monkeypatch):
    from vreid.retrieval import accel

    feats, cams, tracks, times = _gallery()
    index = _index(feats, cams, tracks, times, engine="numpy")
    queries = feats[:9] + 0.1
    before = index.search(queries, 5, device="cpu")
    monkeypatch.setattr(accel, "_BLOCK_ELEMENTS", {"cpu": 700, "cuda": 700})
    after = index.search(queries, 5, device="cpu")
    assert [[h.id for h in row] for row in after] == [[h.id for h in row] for row in before]
