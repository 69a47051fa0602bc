"""The gallery interface: every backend (SQLite with each in-memory engine, Milvus Lite) passes the same tests."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vreid.deploy.index import SearchFilter
from vreid.deploy.store import Sighting, create_gallery, open_gallery
from vreid.errors import VreidError

HAS_FAISS = importlib.util.find_spec("faiss") is not None
HAS_MILVUS_LITE = importlib.util.find_spec("milvus_lite") is not None and importlib.util.find_spec("pymilvus")
DIM = 16
BACKENDS = [
    pytest.param(("sqlite", {"engine": "numpy"}), id="sqlite-numpy"),
    pytest.param(("sqlite", {"engine": "faiss", "kind": "hnsw", "ef_search": 400}), id="sqlite-faiss-hnsw",
                 marks=pytest.mark.skipif(not HAS_FAISS, reason="FAISS not installed")),
    pytest.param(("milvus-lite", {}), id="milvus-lite",
                 marks=pytest.mark.skipif(not HAS_MILVUS_LITE, reason="pymilvus / milvus-lite not installed")),
]


@pytest.fixture(params=BACKENDS)
def uri(request, tmp_path):
    backend, options = request.param
    uri = f"sqlite://{tmp_path}/gallery.db" if backend == "sqlite" else f"milvus-lite://{tmp_path}/milvus.db"
    create_gallery(uri, DIM, **options).close()
    return uri


def _rows(n: int, seed: int = 0, prefix: str = "img"):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, DIM)).astype(np.float32)
    sightings = [Sighting(f"{prefix}/{i:04d}.jpg", f"v{i // 3}", f"c{i % 4}", f"t{i // 6}",
                          None if i % 5 == 0 else 1_700_000_000.0 + 60 * i, {"colour": ["red", "blue"][i % 2], "i": i})
                 for i in range(n)]
    return feats, sightings


def _brute(feats, ids, query, k):
    """Cosine similarity written out, best first (ties: lower id)."""
    sims = [(float(query @ f / np.linalg.norm(query) / np.linalg.norm(f)), int(i)) for f, i in zip(feats, ids,
                                                                                                   strict=True)]
    return sorted(sims, key=lambda t: (-t[0], t[1]))[:k]


def test_add_get_search_filter_remove_iterate(uri):
    feats, sightings = _rows(60)
    with open_gallery(uri) as gallery:
        ids = gallery.add(feats, sightings)
        assert len(set(ids)) == 60 and gallery.count() == 60 and gallery.dim == DIM
        assert gallery.get([ids[7], ids[10], -5]) == {ids[7]: sightings[7], ids[10]: sightings[10]}
        queries = np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32)
        for q, hits in zip(queries, gallery.search(queries, 8), strict=True):
            expected = _brute(feats, ids, q, 8)
            assert [h.id for h in hits] == [i for _, i in expected]
            assert [h.score for h in hits] == pytest.approx([s for s, _ in expected], abs=1e-4)
            assert [h.rank for h in hits] == list(range(1, 9))
            top = sightings[ids.index(hits[0].id)]
            assert (hits[0].path, hits[0].vehicle_id, hits[0].camera_id, hits[0].track_id, hits[0].captured_at,
                    hits[0].attributes) == (top.path, top.vehicle_id, top.camera_id, top.track_id, top.captured_at,
                                            top.attributes)

        t0 = 1_700_000_000.0
        cases = [(SearchFilter(cameras=("c1", "c3")), lambda s: s.camera_id in ("c1", "c3")),
                 (SearchFilter(tracks=("t2",)), lambda s: s.track_id == "t2"),
                 (SearchFilter(time_from=t0 + 600, time_to=t0 + 1800),
                  lambda s: s.captured_at is not None and t0 + 600 <= s.captured_at <= t0 + 1800),
                 (SearchFilter(cameras=("c0",), time_from=t0 + 1200),
                  lambda s: s.camera_id == "c0" and s.captured_at is not None and s.captured_at >= t0 + 1200),
                 (SearchFilter(cameras=('quote"and\\back',)), lambda s: False)]
        for where, passes in cases:
            keep = [j for j, s in enumerate(sightings) if passes(s)]
            hits = gallery.search(queries[:1], 5, where)[0]
            assert [h.id for h in hits] == [i for _, i in _brute(feats[keep], [ids[j] for j in keep], queries[0], 5)]

        with pytest.raises(VreidError, match="not in the gallery"):
            gallery.remove([ids[0], max(ids) + 1000])
        assert gallery.count() == 60  # nothing removed by the failed call
        best = [h.id for h in gallery.search(queries[:1], 3)[0]]
        assert gallery.remove(best) == 3 and gallery.count() == 57
        assert not {h.id for h in gallery.search(queries[:1], 57)[0]} & set(best)

        rows = [b for b in gallery.batches(size=10)]
        assert all(len(b.ids) <= 10 for b in rows)
        got = {int(i): (f, s) for b in rows for i, f, s in zip(b.ids, b.features, b.sightings, strict=True)}
        assert sorted(got) == sorted(set(ids) - set(best))
        for j, i in enumerate(ids):
            if i in got:
                np.testing.assert_allclose(got[i][0], feats[j] / np.linalg.norm(feats[j]), atol=1e-6)
                assert got[i][1] == sightings[j]
        assert gallery.ids_of_paths([sightings[5].path, "nowhere.jpg"]) == {sightings[5].path: [ids[5]]}


def test_another_handle_sees_committed_changes_and_reopening_keeps_everything(uri):
    feats, sightings = _rows(20)
    first = open_gallery(uri)
    ids = first.add(feats[:10], sightings[:10])
    assert [h.id for h in first.search(feats[3:4], 1)[0]] == [ids[3]]
    second = open_gallery(uri)
    new = second.add(feats[10:], sightings[10:])
    second.remove([ids[0]])
    second.set_model_config("MODEL:\n  BACKBONE: resnet18\n")
    assert not set(new) & set(ids)
    # the first handle searches what the second committed, without reopening
    assert [h.id for h in first.search(feats[15:16], 1)[0]] == [new[5]]
    assert ids[0] not in {h.id for h in first.search(feats[0:1], 20)[0]}
    assert first.model_config == "MODEL:\n  BACKBONE: resnet18\n"
    # a large metadata text (the camera statistics of 40 cameras of 1280-d features in base64 are about this size)
    stats = "s" * 700_000
    second.set_metadata("camera_stats", stats)
    assert first.metadata("camera_stats") == stats and first.model_config == "MODEL:\n  BACKBONE: resnet18\n"
    second.set_metadata("camera_stats", None)
    assert first.metadata("camera_stats") is None
    with pytest.raises(ValueError, match="unknown gallery metadata key"):
        first.metadata("settings")
    first.close()
    second.close()
    with open_gallery(uri) as again:
        assert again.count() == 19 and again.get([new[9]]) == {new[9]: sightings[19]}
        assert len(again.search(feats[:1], 50)[0]) == 19


def test_long_metadata_round_trips_and_bad_input_is_refused(uri):
    feats, _ = _rows(3)
    with open_gallery(uri) as gallery:
        long_id = "x" * 60_000  # within every backend's limit (Milvus: 65,535 bytes per text field)
        attributes = {"note": "é" * 10_000, "nested": {"a": [1, 2.5, None]}}
        [i] = gallery.add(feats[:1], [Sighting("long.jpg", long_id, attributes=attributes)])
        got = gallery.get([i])[i]
        assert got.vehicle_id == long_id and got.attributes == attributes and got.captured_at is None
        with pytest.raises(VreidError, match="features of shape"):
            gallery.add(feats[:1, :8], [Sighting("a.jpg")])
        with pytest.raises(VreidError, match="2 features but 1 sightings"):
            gallery.add(feats[:2], [Sighting("a.jpg")])
        with pytest.raises(VreidError, match="NaN"):
            gallery.add(np.full((1, DIM), np.nan, np.float32), [Sighting("a.jpg")])
        with pytest.raises(VreidError, match="not JSON"):
            gallery.add(feats[:1], [Sighting("a.jpg", attributes={"x": object()})])
        with pytest.raises(VreidError, match="top_k"):
            gallery.search(feats[:1], 0)
        assert gallery.count() == 1


def test_file_names_that_are_not_utf8(uri):
    feats, _ = _rows(2)
    odd = "cams/caf\udce9.jpg"  # the byte 0xE9 alone, as os.listdir gives it
    with open_gallery(uri) as gallery:
        if uri.startswith("milvus"):  # text fields must be UTF-8 there: a clear refusal, nothing stored
            with pytest.raises(VreidError, match="not valid UTF-8"):
                gallery.add(feats[:1], [Sighting(odd)])
            assert gallery.count() == 0
            return
        ids = gallery.add(feats, [Sighting(odd), Sighting("plain.jpg")])
        assert gallery.ids_of_paths([odd, "cams/caf\u00e9.jpg"]) == {odd: [ids[0]]}  # not confused with "café"
        assert gallery.get(ids)[ids[0]].path == odd
        assert [s.path for b in gallery.batches() for s in b.sightings] == [odd, "plain.jpg"]
    with open_gallery(uri) as reopened:
        assert reopened.search(feats[:1], 1)[0][0].path == odd
        assert reopened.remove(ids[:1]) == 1 and reopened.ids_of_paths([odd]) == {}


def test_create_refuses_to_overwrite_unless_asked(uri):
    with pytest.raises(VreidError, match="--overwrite"):
        create_gallery(uri, DIM)
    with open_gallery(uri) as gallery:
        gallery.add(*_rows(2))
    create_gallery(uri, 8, overwrite=True).close()
    with open_gallery(uri) as gallery:
        assert gallery.count() == 0 and gallery.dim == 8


def test_uri_errors(tmp_path):
    with pytest.raises(VreidError, match="unknown scheme"):
        open_gallery("postgres://x/y")
    with pytest.raises(VreidError, match="no gallery there"):
        open_gallery(tmp_path / "nothing")
    with pytest.raises(VreidError, match="unknown parameter"):
        open_gallery("milvus://localhost:19530?colection=x")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(VreidError, match="junk.db: .*not a database"):
        open_gallery(tmp_path / "junk.db")
