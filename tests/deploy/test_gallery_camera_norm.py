"""Per-camera normalisation in a gallery: fitted once at build, applied to its rows, to later additions and to
queries; searching reproduces offline evaluation's per-camera standardisation, written out here."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.cli import main
from vreid.config import load_config
from vreid.deploy.gallery import add_features, build_index, camera_stats, gallery_info, index_config, search_features
from vreid.deploy.store import open_gallery
from vreid.features import FeatureSet
from vreid.retrieval.camera_norm import STD_EPS

DIM = 12


def _set(path, feats, vehicles, camera):
    n = len(feats)
    FeatureSet(np.asarray(feats, np.float32), np.asarray(vehicles), np.asarray([camera] * n),
               np.asarray([""] * n), np.asarray([f"{camera}/{v}.jpg" for v in vehicles])).save(path)
    return path


@pytest.fixture
def two_cameras(tmp_path):
    """30 vehicles seen by camera q1 (queries) and 40 by camera g2 (gallery: the 30 and 10 others); each camera adds
    its own large offset and scale to every feature, as two cameras that render colours differently do."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, DIM))
    q = (base[:30] + 0.3 * rng.normal(size=(30, DIM))) * 0.5 + 3.0 * rng.normal(size=DIM)
    g = (base + 0.3 * rng.normal(size=(40, DIM))) * 2.0 - 3.0 * rng.normal(size=DIM)
    vq, vg = [f"{i:03d}" for i in range(30)], [f"{i:03d}" for i in range(40)]
    return (_set(tmp_path / "query.npz", q, vq, "q1"), _set(tmp_path / "gallery.npz", g, vg, "g2"),
            q.astype(np.float32).astype(np.float64), g.astype(np.float32).astype(np.float64))


def _standardized(rows, stats_rows):
    value = (rows - stats_rows.mean(axis=0)) / (stats_rows.std(axis=0) + STD_EPS)
    return value / np.linalg.norm(value, axis=1, keepdims=True)


def _rank1(hits):
    return np.mean([row[0].vehicle_id == f"{i:03d}" for i, row in enumerate(hits)])


def test_search_reproduces_offline_standardisation_and_repairs_a_camera_offset(tmp_path, two_cameras):
    query, gallery, q, g = two_cameras
    raw = build_index(gallery, tmp_path / "raw", camera_norm="none")
    _, raw_hits = search_features(raw, query, 40)
    norm = build_index(gallery, tmp_path / "norm", camera_norm="standardize", calibration=[query])
    paths, hits = search_features(norm, query, 40)
    # written out: each camera standardised with its own test images' mean and spread, then cosine similarity
    scores = _standardized(q, q) @ _standardized(g, g).T
    for i, row in enumerate(hits):
        order = np.argsort(-scores[i], kind="stable")
        assert [h.vehicle_id for h in row] == [f"{j:03d}" for j in order]
        assert [h.score for h in row] == pytest.approx(scores[i, order], abs=1e-5)
    assert _rank1(hits) >= 0.9 > 0.5 > _rank1(raw_hits)  # the offset had made raw search nearly useless
    info = gallery_info(norm)
    assert info["camera_norm"]["mode"] == "standardize" and info["camera_norm"]["cameras"] == {"g2": 40, "q1": 30}
    assert gallery_info(raw)["camera_norm"] is None and camera_stats(raw) is None
    raw.close()
    norm.close()
    import sqlite3  # a gallery with statistics is format version 2: a version-1 reader refuses it, not ignores them

    versions = [sqlite3.connect(tmp_path / d / "gallery.db").execute(
        "SELECT value FROM settings WHERE key = 'version'").fetchone()[0] for d in ("raw", "norm")]
    assert versions == ["1", "2"]


def test_without_calibration_a_query_camera_uses_the_pooled_statistics(tmp_path, two_cameras):
    query, gallery, q, g = two_cameras
    with build_index(gallery, tmp_path / "g", camera_norm="center") as index:
        _, hits = search_features(index, query, 3)
    centred_g = g - g.mean(axis=0)
    centred_q = q - g.mean(axis=0)  # only g2 was fitted: the pooled statistics are g2's
    scores = (centred_q / np.linalg.norm(centred_q, axis=1, keepdims=True)) @ (
        centred_g / np.linalg.norm(centred_g, axis=1, keepdims=True)).T
    assert [h.score for h in hits[5]] == pytest.approx(np.sort(scores[5])[::-1][:3], abs=1e-5)


def test_statistics_stay_fixed_for_images_added_later(tmp_path, two_cameras):
    query, gallery, q, g = two_cameras
    rng = np.random.default_rng(1)
    extra = rng.normal(size=(5, DIM)) * 4.0 + 10.0  # far from the fitted statistics: refitting would move them
    extra_file = _set(tmp_path / "extra.npz", extra, [f"x{i}" for i in range(5)], "g2")
    with build_index(gallery, tmp_path / "g", camera_norm="standardize", calibration=[query]) as index:
        add_features(index, extra_file)
        _, hits = search_features(index, query, 45)
    stored = _standardized(extra.astype(np.float32).astype(np.float64), g)  # the build-time g2 statistics
    expected = _standardized(q[:1], q) @ stored.T
    got = {h.vehicle_id: h.score for h in hits[0]}
    assert [got[f"x{i}"] for i in range(5)] == pytest.approx(expected[0], abs=1e-5)


def test_mode_follows_the_config_beside_the_features_and_the_cli_overrides_it(tmp_path, two_cameras, caplog):
    query, gallery, _, _ = two_cameras
    cfg = load_config(None, ["TEST.CAMERA_NORM.MODE", "center", "TEST.CAMERA_NORM.MIN_IMAGES", "35"])
    (tmp_path / "config.yaml").write_text(cfg.dump())
    assert main(["index", "build", "--features", str(gallery), str(tmp_path / "a")]) == 0
    with open_gallery(tmp_path / "a") as index:
        stats = camera_stats(index)
        assert stats.mode == "center" and stats.cameras == ("g2",)  # 40 >= 35 images: its own statistics
    assert main(["index", "build", "--features", str(gallery), "--calibration", str(query), str(tmp_path / "b")]) == 0
    with open_gallery(tmp_path / "b") as index:
        assert camera_stats(index).cameras == ("g2",)  # q1's 30 images are under MIN_IMAGES: pooled
    assert main(["index", "build", "--features", str(gallery), "--camera-norm", "none", str(tmp_path / "c")]) == 0
    with open_gallery(tmp_path / "c") as index:
        assert camera_stats(index) is None
    caplog.clear()
    assert main(["index", "build", "--features", str(gallery), "--camera-norm", "none", "--calibration", str(query),
                 str(tmp_path / "d")]) == 2
    assert "--calibration is only used with camera normalisation" in caplog.text
    small = _set(tmp_path / "small.npz", np.ones((3, 5)), ["a", "b", "c"], "q1")
    caplog.clear()
    assert main(["index", "build", "--features", str(gallery), "--calibration", str(small), str(tmp_path / "e")]) == 2
    assert "small.npz" in caplog.text and "5" in caplog.text


def test_a_config_asking_for_it_on_a_gallery_built_without_it_is_warned_about(tmp_path, two_cameras, caplog):
    _, gallery, _, _ = two_cameras
    cfg = load_config(None, ["TEST.CAMERA_NORM.MODE", "standardize"])
    (tmp_path / "model.yml").write_text(cfg.dump())
    with build_index(gallery, tmp_path / "g", camera_norm="none") as index:
        index_config(index, str(tmp_path / "model.yml"))
    assert "was built without camera statistics" in caplog.text


def test_broken_stored_statistics_are_a_clear_error(tmp_path, two_cameras):
    from vreid.errors import VreidError

    _, gallery, _, _ = two_cameras
    with build_index(gallery, tmp_path / "g", camera_norm="center") as index:
        index.set_metadata("camera_stats", '{"format": "vreid-camera-stats-1", "mode": "center"}')
        with pytest.raises(VreidError, match="broken camera statistics"):
            search_features(index, gallery, 3)


def test_query_camera_is_for_image_queries_only(tmp_path, two_cameras, caplog):
    query, gallery, _, _ = two_cameras
    build_index(gallery, tmp_path / "g", camera_norm="center").close()
    assert main(["search", "--index", str(tmp_path / "g"), "--features", str(query), "--query-camera", "q1"]) == 2
    assert "--features queries carry their cameras" in caplog.text
