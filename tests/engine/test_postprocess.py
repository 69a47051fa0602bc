"""From saved FeatureSets: post-processing order, fusion checks, metrics and the rerank/ensemble/submit commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vreid.cli import EXIT_BAD_INPUT, main
from vreid.config import load_config
from vreid.engine.postprocess import final_distance, metrics_from_distance, ranking, ranking_distance
from vreid.errors import ConfigError, VreidError
from vreid.features import FeatureSet
from vreid.retrieval import evaluate, k_reciprocal_rerank


def feature_sets(tmp_path, num_ids=12, per_id=4, dim=16, seed=0, name="feats"):
    """Clustered unit features: query = first image of each id, gallery = the rest, tracks per id."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    feats, ids, cams, tracks, paths = [], [], [], [], []
    for i in range(num_ids):
        for k in range(per_id):
            feats.append(centres[i] + 0.6 * rng.normal(size=dim))
            ids.append(f"{i:04d}")
            cams.append(f"c{k % 3}")
            tracks.append(f"t{i}-{k % 3}")
            paths.append(f"/x/{len(paths) + 1:06d}.jpg")
    feats = np.asarray(feats, np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    q = np.arange(0, num_ids * per_id, per_id)
    g = np.setdiff1d(np.arange(num_ids * per_id), q)

    def fs(idx, renumber):
        names = [f"/x/{j + 1:06d}.jpg" for j in range(len(idx))] if renumber else [paths[j] for j in idx]
        return FeatureSet(feats[idx], np.array(ids)[idx], np.array(cams)[idx], np.array(tracks)[idx], np.array(names))

    folder = tmp_path / name
    query, gallery = fs(q, False), fs(g, True)
    folder.mkdir(parents=True, exist_ok=True)
    query.save(folder / "query.npz")
    gallery.save(folder / "gallery.npz")
    return folder, query, gallery


def test_final_distance_plain_and_reranked(tmp_path):
    _, q, g = feature_sets(tmp_path)
    plain = final_distance(load_config(None, ["TEST.METRIC", "cosine"]), q, g)
    assert np.allclose(plain, 1 - q.features @ g.features.T, atol=1e-5)
    cfg = load_config(None, ["TEST.RERANK.ENABLED", "True", "TEST.RERANK.K1", "5", "TEST.RERANK.K2", "2"])
    assert np.allclose(final_distance(cfg, q, g), k_reciprocal_rerank(q.features, g.features, 5, 2, 0.3), atol=1e-6)


def test_fusion_needs_rerank_and_matching_images(tmp_path):
    folder, q, g = feature_sets(tmp_path)
    other, _, _ = feature_sets(tmp_path, seed=1, name="ori")  # same paths, other features
    cfg = load_config(None, ["TEST.FUSION.ORIENTATION_DIR", str(other)])
    with pytest.raises(VreidError, match="needs TEST.RERANK.ENABLED"):
        final_distance(cfg, q, g)
    fused = load_config(None, ["TEST.FUSION.ORIENTATION_DIR", str(other), "TEST.RERANK.ENABLED", "True",
                               "TEST.RERANK.K1", "5", "TEST.RERANK.K2", "2"])
    o_q, o_g = FeatureSet.load(other / "query.npz"), FeatureSet.load(other / "gallery.npz")
    expected = k_reciprocal_rerank(q.features, g.features, 5, 2, 0.3,
                                   extra_distance=[(np.concatenate([o_q.features, o_g.features]), -0.1)])
    assert np.allclose(final_distance(fused, q, g), expected, atol=1e-6)
    shuffled, _, _ = feature_sets(tmp_path, num_ids=11, name="bad")
    with pytest.raises(VreidError, match="same query/gallery"):
        final_distance(load_config(None, ["TEST.FUSION.CAMERA_DIR", str(shuffled), "TEST.RERANK.ENABLED", "True"]),
                       q, g)


def test_ranking_and_track_rerank_keep_tracks_together(tmp_path):
    _, q, g = feature_sets(tmp_path)
    dist = final_distance(load_config(), q, g)
    ranked = ranking(load_config(), dist, g, top_k=10)
    assert np.array_equal(ranked, np.argsort(dist, axis=1, kind="stable")[:, :10])
    tracked = ranking(load_config(None, ["TEST.TRACK_RERANK", "True"]), dist, g, top_k=len(g))
    for row in tracked:
        seen = [g.track_ids[i] for i in row]
        blocks = [t for k, t in enumerate(seen) if k == 0 or seen[k - 1] != t]
        assert len(blocks) == len(set(blocks))  # each track appears as one block
    pseudo = ranking_distance(ranked, len(g))
    assert np.array_equal(np.argsort(pseudo, axis=1, kind="stable")[:, :10], ranked)


def test_metrics_include_both_protocols(tmp_path):
    _, q, g = feature_sets(tmp_path)
    cfg = load_config()
    dist = final_distance(cfg, q, g)
    m = metrics_from_distance(cfg, dist, q, g)
    ref = evaluate(dist, q.vehicle_ids, g.vehicle_ids, q.camera_ids, g.camera_ids)
    assert m["mAP"] == pytest.approx(ref["mAP"]) and m["num_query"] == 12
    aic_map, aic_rank1 = brute_force_aic(dist, q.vehicle_ids, g.vehicle_ids, top_k=100)
    assert m["aic_mAP@100"] == pytest.approx(aic_map) and m["aic_rank1"] == pytest.approx(aic_rank1)


def brute_force_aic(dist, query_ids, gallery_ids, top_k):
    """AI City rank-K mAP, one query at a time: the precision at each true match within the first K of the sorted
    list, summed, over min(true matches, K); and the share of queries whose first item is a true match."""
    aps, first = [], []
    for i in range(len(dist)):
        match = gallery_ids[np.argsort(dist[i], kind="stable")] == query_ids[i]
        if not match.any():
            continue
        hits = [rank for rank in range(min(top_k, len(match))) if match[rank]]
        aps.append(sum((n + 1) / (rank + 1) for n, rank in enumerate(hits)) / min(int(match.sum()), top_k))
        first.append(bool(match[0]))
    return float(np.mean(aps)), float(np.mean(first))


def test_aic_map_counts_only_the_first_100_of_a_long_gallery():
    """300 gallery images of 3 ids (100 true matches per query, spread over the ranking): rank 100 cuts the list."""
    hand = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])  # matches (id a) at ranks 1 and 3; at 2 and 4
    got = brute_force_aic(hand, np.array(["a", "a"]), np.array(["a", "b", "a", "b"]), top_k=3)
    assert got[0] == pytest.approx(((1 / 1 + 2 / 3) / 2 + (1 / 2) / 2) / 2) and got[1] == 0.5
    rng = np.random.default_rng(3)
    ids = np.array([f"{i % 3}" for i in range(310)])
    feats = rng.normal(size=(310, 8)).astype(np.float32)
    feats[:, 0] += 0.8 * (ids == "0")  # a weak signal: some matches rank early, many after 100
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)

    def fs(idx, camera):
        return FeatureSet(feats[idx], ids[idx], np.array([camera] * len(idx)), np.array([""] * len(idx)),
                          np.array([f"/x/{j}.jpg" for j in idx]))

    q, g = fs(np.arange(10), "c1"), fs(np.arange(10, 310), "c2")
    cfg = load_config()
    dist = final_distance(cfg, q, g)
    m = metrics_from_distance(cfg, dist, q, g)
    aic_map, aic_rank1 = brute_force_aic(dist, q.vehicle_ids, g.vehicle_ids, top_k=100)
    assert m["aic_mAP@100"] == pytest.approx(aic_map) and m["aic_rank1"] == pytest.approx(aic_rank1)
    assert aic_map != pytest.approx(brute_force_aic(dist, q.vehicle_ids, g.vehicle_ids, top_k=300)[0])


def test_rerank_ensemble_submit_commands(tmp_path, caplog):
    folder, q, g = feature_sets(tmp_path)
    assert main(["rerank", "--features", str(folder), "--out", str(tmp_path / "rr"), "TEST.RERANK.K1", "5",
                 "TEST.RERANK.K2", "2"]) == 0
    metrics = json.loads((tmp_path / "rr" / "metrics.json").read_text())
    assert metrics["rerank"] is True and (tmp_path / "rr" / "per_query.csv").read_text().count("\n") == 13
    d1 = tmp_path / "rr" / "distance.npy"
    np.save(tmp_path / "d2.npy", np.load(d1) * 3)
    assert main(["ensemble", "--distances", str(d1), str(tmp_path / "d2.npy"), "--weights", "1", "1",
                 "--out", str(tmp_path / "ens.npy")]) == 0
    assert np.allclose(np.load(tmp_path / "ens.npy"), 2 * np.load(d1), atol=1e-5)
    out = tmp_path / "track2.txt"
    assert main(["submit", "--distance", str(d1), "--features", str(folder), "--out", str(out), "--top-k", "20"]) == 0
    lines = out.read_text().splitlines()
    best = np.argsort(np.load(d1), axis=1, kind="stable")[:, :20] + 1  # gallery names are 000001.jpg...
    assert [list(map(int, line.split())) for line in lines] == best.tolist()
    root = tmp_path / "AIC21_Track2_ReID"
    root.mkdir()
    (root / "name_query.txt").write_text("".join(f"{i + 1:06d}.jpg\n" for i in range(len(q))))
    (root / "name_test.txt").write_text("".join(f"{i + 1:06d}.jpg\n" for i in range(len(g))))
    assert main(["submit", "--check", str(out), "--root", str(tmp_path), "--top-k", "20"]) == 0
    out.write_text("\n".join(lines[:-1]) + "\n")
    assert main(["submit", "--check", str(out), "--root", str(tmp_path), "--top-k", "20"]) == EXIT_BAD_INPUT
    assert "track2.txt" in caplog.text


def test_rerank_device_option(tmp_path, caplog, monkeypatch):
    """--device cpu keeps the numpy path; the torch path (here on the CPU device) writes the same results;
    --device cuda without a GPU stops with exit status 2 and a message."""
    import torch

    from vreid.cli import EXIT_BAD_INPUT
    from vreid.engine import postprocess

    folder, _, _ = feature_sets(tmp_path)

    def rerank(out: str, *extra: str) -> int:
        return main(["rerank", "--features", str(folder), "--out", str(tmp_path / out), *extra, "TEST.RERANK.K1", "5",
                     "TEST.RERANK.K2", "2"])

    assert rerank("np", "--device", "cpu") == 0
    with monkeypatch.context() as m:
        m.setattr(postprocess, "retrieval_device", lambda choice: "cpu")  # torch on the CPU device
        assert rerank("torch") == 0
    a = json.loads((tmp_path / "np" / "metrics.json").read_text())
    b = json.loads((tmp_path / "torch" / "metrics.json").read_text())
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-6) and a["rank1"] == b["rank1"]
    np.testing.assert_allclose(np.load(tmp_path / "np" / "distance.npy"), np.load(tmp_path / "torch" / "distance.npy"),
                               atol=1e-5)
    if not torch.cuda.is_available():
        assert rerank("gpu", "--device", "cuda") == EXIT_BAD_INPUT
        assert "no CUDA device" in caplog.text


def test_camera_norm_runs_before_the_distance_and_its_keys_are_checked(tmp_path):
    _, q, g = feature_sets(tmp_path)
    cfg = load_config(None, ["TEST.CAMERA_NORM.MODE", "center", "TEST.CAMERA_NORM.MIN_IMAGES", "2"])
    feats = np.concatenate([q.features, g.features]).astype(np.float64)
    cams = np.concatenate([q.camera_ids, g.camera_ids])
    centred = np.empty_like(feats)
    for cam in set(cams):  # written out: each camera's mean over its query and gallery images
        centred[cams == cam] = feats[cams == cam] - feats[cams == cam].mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    expected = np.linalg.norm(centred[: len(q), None] - centred[None, len(q):], axis=2)
    assert np.allclose(final_distance(cfg, q, g), expected, atol=1e-5)
    assert not np.allclose(final_distance(load_config(), q, g), expected, atol=1e-3)
    with pytest.raises(ConfigError, match="TEST.CAMERA_NORM.MODE"):
        final_distance(load_config(None, ["TEST.CAMERA_NORM.MODE", "mean"]), q, g)
    with pytest.raises(ConfigError, match="TEST.CAMERA_NORM.MIN_IMAGES"):
        final_distance(load_config(None, ["TEST.CAMERA_NORM.MIN_IMAGES", "0"]), q, g)
