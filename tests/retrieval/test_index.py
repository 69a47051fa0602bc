"""Gallery index: every kind and engine against brute force, updates without rebuilding, storage, errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from vreid.errors import VreidError
from vreid.retrieval import index as index_module
from vreid.retrieval.index import GalleryIndex

HAS_FAISS = importlib.util.find_spec("faiss") is not None
CONFIGS = [("exact", "numpy"), *([("exact", "faiss"), ("ivf", "faiss"), ("hnsw", "faiss")] if HAS_FAISS else [])]


def _gallery(n=300, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    paths = [f"img/{i:04d}.jpg" for i in range(n)]
    return feats, paths, [str(i // 3) for i in range(n)], [f"c{i % 4}" for i in range(n)]


def _brute(gallery: np.ndarray, alive: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Cosine similarity written out: dot product over the product of norms, best first."""
    sims = [(float(query @ g / (np.linalg.norm(query) * np.linalg.norm(g))), int(i))
            for i, g in zip(alive, gallery, strict=True)]
    return [i for _, i in sorted(sims, key=lambda t: (-t[0], t[1]))[:k]]


def _options(kind):
    # exhaustive settings: IVF probing every list and a wide HNSW beam give exact answers on 300 points
    return {"ivf": {"nlist": 8, "nprobe": 8}, "hnsw": {"ef_search": 400}}.get(kind, {})


@pytest.mark.parametrize("kind,engine", CONFIGS)
def test_search_matches_brute_force_and_survives_updates(kind, engine, tmp_path):
    feats, paths, vids, cams = _gallery()
    index = GalleryIndex.from_features(feats, paths, vids, cams, kind=kind, engine=engine, **_options(kind))
    assert index.engine == engine and len(index) == 300
    queries = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    alive = np.arange(300)
    for q, hits in zip(queries, index.search(queries, top_k=10), strict=True):
        assert [h.id for h in hits] == _brute(feats, alive, q, 10)
        assert [h.rank for h in hits] == list(range(1, 11))
        top = hits[0]
        assert top.path == paths[top.id] and top.vehicle_id == vids[top.id] and top.camera_id == cams[top.id]
        cos = q @ feats[top.id] / np.linalg.norm(q) / np.linalg.norm(feats[top.id])
        assert top.score == pytest.approx(cos, abs=1e-5)

    # remove the current best matches and add a near-copy of query 0: no rebuild, results follow
    best = [h.id for h in index.search(queries, top_k=3)[0]]
    assert index.remove(best) == 3
    new_ids = index.add(queries[:1] * 2.0 + 1e-3, ["new/q0.jpg"], ["q"], ["c9"])
    assert new_ids.tolist() == [300]  # ids are never reused
    hits = index.search(queries[:1], top_k=5)[0]
    assert hits[0].id == 300 and hits[0].path == "new/q0.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert not set(best) & {h.id for h in hits}
    alive = np.array([i for i in range(300) if i not in best])
    expected = _brute(feats[alive], alive, queries[0], 4)
    assert [h.id for h in hits[1:]] == expected

    # storage round trip keeps everything, including the removed ids and the next id
    index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx", engine=engine)
    assert len(loaded) == 298 and loaded.next_id == 301 and loaded.kind == kind
    assert [h.id for h in loaded.search(queries[:1], 5)[0]] == [h.id for h in hits]
    assert loaded.ids_of_paths(["new/q0.jpg", "img/0007.jpg"]) == [300, 7]


@pytest.mark.skipif(not HAS_FAISS, reason="FAISS not installed")
def test_hnsw_hides_removed_ids_then_rebuilds():
    feats, paths, _, _ = _gallery(n=200)
    index = GalleryIndex.from_features(feats, paths, kind="hnsw", engine="faiss", ef_search=400)
    query = feats[:1]
    index.remove([0])
    assert index.hidden == {0}
    assert index.search(query, 3)[0][0].id != 0
    index.remove(list(range(1, 30)))  # more than a tenth hidden: the graph is rebuilt from the arrays
    assert index._index is None
    assert all(h.id >= 30 for h in index.search(query, 10)[0]) and index.hidden == set()


def test_numpy_fallback_and_errors(tmp_path):
    feats, paths, _, _ = _gallery(n=20)
    index = GalleryIndex.from_features(feats, paths, engine="numpy")
    with pytest.raises(VreidError, match="8 dimensions, the index 16"):
        index.search(np.zeros((1, 8), np.float32))
    with pytest.raises(VreidError, match="NaN"):
        index.add(np.full((1, 16), np.nan, np.float32), ["x"])
    with pytest.raises(VreidError, match=r"ids not in the gallery: \[99\]"):
        index.remove([3, 99])
    assert len(index) == 20  # nothing removed by the failed call
    with pytest.raises(VreidError, match="1 features but 2 paths"):
        index.add(feats[:1], ["a", "b"])
    with pytest.raises(VreidError, match="choose from"):
        GalleryIndex(16, kind="lsh")
    assert len(index.search(feats[:2], top_k=50)[0]) == 20  # k capped at the gallery size
    with pytest.raises(VreidError, match="not a gallery index"):
        GalleryIndex.load(tmp_path)
    index.save(tmp_path / "i")
    manifest = json.loads((tmp_path / "i" / "index.json").read_text())
    (tmp_path / "i" / "index.json").write_text(json.dumps({**manifest, "count": 5}))
    with pytest.raises(VreidError, match="manifest says 5 x 16"):
        GalleryIndex.load(tmp_path / "i")
    (tmp_path / "i" / "index.json").write_text(json.dumps({**manifest, "next_id": 10}))
    with pytest.raises(VreidError, match="reach next_id 10"):
        GalleryIndex.load(tmp_path / "i")


def test_remove_everything_then_add_again():
    feats, paths, _, _ = _gallery(n=10)
    for kind, engine in CONFIGS:
        index = GalleryIndex.from_features(feats, paths, kind=kind, engine=engine, **_options(kind))
        index.remove(range(10))
        assert len(index) == 0 and index.search(feats[:2], 5) == [[], []]
        index.add(feats[3:4], ["again.jpg"])
        assert [h.id for h in index.search(feats[3:4], 5)[0]] == [10]


def test_save_is_crash_safe_and_keeps_the_engine(tmp_path):
    feats, paths, _, _ = _gallery(n=50)
    index = GalleryIndex.from_features(feats, paths, kind="hnsw", engine="numpy")
    index.save(tmp_path)
    assert GalleryIndex.load(tmp_path).engine == "numpy"  # chosen at build time, kept (exact search)
    first = json.loads((tmp_path / "index.json").read_text())["arrays"]
    index.remove([0])
    index.save(tmp_path)
    second = json.loads((tmp_path / "index.json").read_text())["arrays"]
    assert first != second and [p.name for p in tmp_path.glob("gallery.*.npz")] == [second]  # old file gone


def test_without_faiss_every_kind_is_exact_numpy(monkeypatch):
    monkeypatch.setattr(index_module, "_faiss", lambda: None)
    feats, paths, _, _ = _gallery(n=60)
    with pytest.raises(VreidError, match="pip install faiss-cpu"):
        GalleryIndex(16, engine="faiss")
    index = GalleryIndex.from_features(feats, paths, kind="hnsw")
    assert index.engine == "numpy"
    q = feats[7:8] + 0.01
    assert [h.id for h in index.search(q, 5)[0]] == _brute(feats, np.arange(60), q[0], 5)


@pytest.mark.skipif(not HAS_FAISS, reason="FAISS not installed")
def test_ivf_too_small_to_train_searches_exactly_then_trains():
    feats, paths, _, _ = _gallery(n=100)
    index = GalleryIndex.from_features(feats[:20], paths[:20], kind="ivf", engine="faiss", nlist=32, nprobe=32)
    assert index.trained_nlist == 0  # 20 images cannot train 32 lists: exact FAISS search meanwhile
    q = feats[5:6]
    assert [h.id for h in index.search(q, 3)[0]] == _brute(feats[:20], np.arange(20), q[0], 3)
    index.add(feats[20:], paths[20:])
    assert [h.id for h in index.search(q, 3)[0]] == _brute(feats, np.arange(100), q[0], 3)  # probes all lists
    assert index.trained_nlist == 32
