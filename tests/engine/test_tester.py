"""The tester: loading a trained model (independent of the ImageNet file used at training time), its outputs
(distance, metrics, per-query table) and rank-list rows against computations written out here."""

from __future__ import annotations

import pytest
import torch

from vreid.config import load_config
from vreid.engine.inference import load_inference_model
from vreid.errors import VreidError
from vreid.models import build_model
from vreid.models.backbones import create_backbone


def test_trained_weights_load_without_the_pretrained_file(tmp_path):
    imagenet = tmp_path / "imagenet.pth"
    torch.save(create_backbone("resnet18").state_dict(), imagenet)
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAIN_PATH", str(imagenet)])
    trained = build_model(cfg, 5)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)  # "training": differs from both the ImageNet file and a fresh random init
    torch.save(trained.state_dict(), tmp_path / "model_final.pth")
    imagenet.unlink()  # the saved config.yaml still names it

    cfg.defrost()
    cfg.TEST.WEIGHT = str(tmp_path / "model_final.pth")
    model = load_inference_model(cfg, torch.device("cpu"))
    expected = {k: v for k, v in trained.state_dict().items() if not k.startswith("classifier")}
    got = model.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    cfg.TEST.WEIGHT = ""  # evaluating the pretrained backbone itself does need the file
    with pytest.raises(Exception, match="imagenet.pth"):
        load_inference_model(cfg, torch.device("cpu"))
    cfg.MODEL.PRETRAIN_PATH = ""
    with pytest.raises(VreidError, match="TEST.WEIGHT is empty"):
        load_inference_model(cfg, torch.device("cpu"))


def _feature_sets():
    """4 ids x 4 images on 3 cameras; the first image of each id is its query. Each gallery image's camera is picked so
    that some true matches share the query's camera (junk under the VeRi protocol)."""
    import numpy as np

    from vreid.features import FeatureSet

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, 6))
    feats = np.concatenate([centres[i] + 0.9 * rng.normal(size=(4, 6)) for i in range(4)]).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    ids = np.repeat([f"v{i}" for i in range(4)], 4)
    cams = np.array([f"c{k % 3}" for k in range(16)])
    paths = np.array([f"/data/{k:03d}.jpg" for k in range(16)])
    q, g = np.arange(0, 16, 4), np.setdiff1d(np.arange(16), np.arange(0, 16, 4))
    make = lambda idx: FeatureSet(feats[idx], ids[idx], cams[idx], np.array([""] * len(idx)), paths[idx])  # noqa: E731
    return make(q), make(g)


def _brute_force_veri(dist, query, gallery):
    """Per query, over the gallery sorted by distance without its junk (same id and camera): AP, INP and the 0-based
    rank of the first true match."""
    import numpy as np

    rows = []
    for i in range(len(query)):
        order = np.argsort(dist[i], kind="stable")
        same = gallery.vehicle_ids[order] == query.vehicle_ids[i]
        junk = same & (gallery.camera_ids[order] == query.camera_ids[i])
        match = same[~junk]
        hits = np.flatnonzero(match)
        ap = sum((n + 1) / (r + 1) for n, r in enumerate(hits)) / len(hits)
        rows.append((ap, len(hits) / (hits[-1] + 1), int(hits[0])))
    return rows


def test_write_test_results_writes_what_a_brute_force_evaluation_gives(tmp_path):
    """write_test_results: distance.npy, metrics.json and per_query.csv against distances and a VeRi evaluation written
    out here."""
    import csv
    import json

    import numpy as np

    from vreid.engine.results import write_test_results

    query, gallery = _feature_sets()
    cfg = load_config(None, ["TEST.METRIC", "cosine", "TEST.RANKLIST_QUERIES", "0"])
    metrics = write_test_results(cfg, query, gallery, tmp_path)
    dist = np.load(tmp_path / "distance.npy")
    assert np.allclose(dist, 1 - query.features @ gallery.features.T, atol=1e-6)
    rows = _brute_force_veri(dist, query, gallery)
    assert any(r[0] < 1 for r in rows) and any(  # not trivial: an imperfect ranking, and junk to remove
        ((gallery.vehicle_ids == query.vehicle_ids[i]) & (gallery.camera_ids == query.camera_ids[i])).any()
        for i in range(len(query)))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics and not (tmp_path / "ranklist.png").exists()
    assert saved["mAP"] == pytest.approx(np.mean([r[0] for r in rows]))
    assert saved["mINP"] == pytest.approx(np.mean([r[1] for r in rows]))
    assert saved["rank1"] == pytest.approx(np.mean([r[2] == 0 for r in rows]))
    assert (saved["num_query"], saved["num_gallery"], saved["rerank"]) == (4, 12, False)
    with (tmp_path / "per_query.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(t["query"], t["vehicle_id"], t["camera_id"]) for t in table] == [
        ("000.jpg", "v0", "c0"), ("004.jpg", "v1", "c1"), ("008.jpg", "v2", "c2"), ("012.jpg", "v3", "c0")]
    for t, (ap, inp, first) in zip(table, rows, strict=True):
        assert float(t["ap"]) == pytest.approx(ap, abs=1e-6) and float(t["inp"]) == pytest.approx(inp, abs=1e-6)
        assert int(t["first_match_rank"]) == first + 1


def test_rank_row_colours_matches_and_greys_junk():
    import numpy as np

    from vreid.viz.ranklist import rank_row

    query, gallery = _feature_sets()
    dist = 1 - query.features @ gallery.features.T
    for qi in range(len(query)):
        row = rank_row(query, gallery, dist, qi, top_k=5)
        order = np.argsort(dist[qi], kind="stable")[:5]
        assert list(row.gallery_paths) == list(gallery.paths[order]) and row.query_path == query.paths[qi]
        expected = []
        for g in order:
            if gallery.vehicle_ids[g] != query.vehicle_ids[qi]:
                expected.append(False)
            else:
                expected.append(None if gallery.camera_ids[g] == query.camera_ids[qi] else True)
        assert row.matches == expected
