"""From a folder of images to a searchable gallery with the command line: extract, index build/add/remove, search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vreid.cli import main
from vreid.config import load_config
from vreid.deploy.store import open_gallery
from vreid.features import FeatureSet
from vreid.models import build_model


def _image(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def model_config(tmp_path):
    torch.manual_seed(0)
    opts = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "(32, 32)", "SOLVER.AMP", "off",
            "DATALOADER.NUM_WORKERS", "0"]
    torch.save(build_model(load_config(None, opts), 0).state_dict(), tmp_path / "model.pth")
    cfg = load_config(None, [*opts, "TEST.WEIGHT", str(tmp_path / "model.pth")])
    (tmp_path / "model.yml").write_text(cfg.dump())
    return tmp_path / "model.yml"


def _six_photos_indexed(tmp_path, model_config, out: str):
    """Six photos (ids 000-005, cameras 0-2) extracted and built into a gallery at ``out``."""
    for i in range(6):
        _image(tmp_path / "photos" / f"{i:03d}_c{i % 3}.jpg", i)
    feats = tmp_path / "feats"
    assert main(["extract", "--images", str(tmp_path / "photos"), "--config-file", str(model_config),
                 "OUTPUT_DIR", str(feats)]) == 0
    assert main(["index", "build", "--features", str(feats / "gallery.npz"), out]) == 0
    return feats


def test_three_commands_then_updates(tmp_path, model_config, capsys):
    idx = tmp_path / "idx"
    feats = _six_photos_indexed(tmp_path, model_config, str(idx))
    capsys.readouterr()
    query = tmp_path / "photos" / "004_c1.jpg"
    assert main(["search", "--index", str(idx), "--image", str(query), "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    hits = out[0]["results"]
    assert out[0]["query"] == str(query) and len(hits) == 3
    assert hits[0]["path"] == str(query) and hits[0]["vehicle_id"] == "004" and hits[0]["camera_id"] == "1"
    # the same scores as a brute-force cosine over the extracted FeatureSet
    gallery = FeatureSet.load(feats / "gallery.npz")
    q = gallery.features[list(gallery.paths).index(str(query))]
    cos = gallery.features @ q / np.linalg.norm(gallery.features, axis=1) / np.linalg.norm(q)
    assert [h["path"] for h in hits] == [gallery.paths[j] for j in np.argsort(-cos, kind="stable")[:3]]
    assert [h["score"] for h in hits] == pytest.approx(np.sort(cos)[::-1][:3], abs=1e-5)

    # a table for people; several queries; overrides after the images are overrides, not images
    other = tmp_path / "photos" / "001_c1.jpg"
    assert main(["search", "--index", str(idx), "--image", str(query), "--image", str(other), "--top-k", "2",
                 "TEST.IMS_PER_BATCH", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"query {query}" and table[1].split()[0] == "1" and table[1].endswith(str(query))
    assert table[3] == f"query {other}" and table[4].endswith(str(other)) and len(table) == 6

    # add a new folder, remove by path and by id; no rebuild, ids stay
    _image(tmp_path / "more" / "new_c9.jpg", 99)
    assert main(["index", "add", "--index", str(idx), "--images", str(tmp_path / "more")]) == 0
    assert main(["index", "remove", "--index", str(idx), "--paths", str(query), "--ids", "1"]) == 0
    with open_gallery(idx) as gallery:  # a plain folder: FOLDER/gallery.db
        assert sorted(i for b in gallery.batches() for i in b.ids.tolist()) == [2, 3, 4, 6, 7]
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--image", str(tmp_path / "more" / "new_c9.jpg"), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert hits[0]["id"] == 7 and str(query) not in [h["path"] for h in hits] and len(hits) == 5
    assert main(["index", "info", "--index", str(idx)]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 5


def test_gallery_command_errors(tmp_path, model_config, caplog):
    assert main(["index", "build", "--features", str(tmp_path / "none.npz"), str(tmp_path / "i")]) == 2
    assert "none.npz" in caplog.text
    caplog.clear()
    assert main(["search", "--index", str(tmp_path), "--image", "q.jpg"]) == 2
    assert "no gallery there" in caplog.text
    caplog.clear()
    _image(tmp_path / "p" / "a_c1.jpg", 1)
    assert main(["extract", "--images", str(tmp_path / "p"), "--config-file", str(model_config),
                 "OUTPUT_DIR", str(tmp_path / "f")]) == 0
    assert main(["index", "build", "--features", str(tmp_path / "f" / "gallery.npz"), str(tmp_path / "i")]) == 0
    assert main(["index", "build", "--features", str(tmp_path / "f" / "gallery.npz"), str(tmp_path / "i")]) == 2
    assert "--overwrite" in caplog.text
    caplog.clear()
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert main(["search", "--index", str(tmp_path / "i"), "--image", str(tmp_path / "bad.jpg")]) == 2
    assert "bad.jpg" in caplog.text
    caplog.clear()
    assert main(["index", "remove", "--index", str(tmp_path / "i"), "--ids", "7"]) == 2
    assert "ids not in the gallery: [7]" in caplog.text
    caplog.clear()
    assert main(["extract", "--images", str(tmp_path / "nothing"), "--config-file", str(model_config)]) == 2
    caplog.clear()
    other = ["MODEL.BACKBONE", "mobilenet_v2", "MODEL.LAST_STRIDE", "2"]
    torch.save(build_model(load_config(None, other), 0).state_dict(), tmp_path / "other.pth")
    assert main(["search", "--index", str(tmp_path / "i"), "--image", str(tmp_path / "p" / "a_c1.jpg"),
                 "--config-file", str(model_config), *other, "TEST.WEIGHT", str(tmp_path / "other.pth")]) == 2
    assert "index holds 512-d features but the model gives 1280-d" in caplog.text


def _legacy_folder(folder, n=12, dim=8):
    """An index folder as vreid 0.1 wrote it: index.json naming a .npz of arrays (fixed-width text columns)."""
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    ids = np.array([i for i in range(n + 2) if i not in (4, 9)][:n], np.int64)  # two ids removed back then
    folder.mkdir(parents=True)
    np.savez(folder / "gallery.abc.npz", ids=ids, features=feats, paths=np.array([f"p/{i}.jpg" for i in ids]),
             vehicle_ids=np.array([f"v{i % 3}" for i in ids]), camera_ids=np.array([f"c{i % 2}" for i in ids]),
             track_ids=np.array(["" for _ in ids]))
    manifest = {"format": "vreid-gallery-index", "version": 1, "dim": dim, "count": n, "next_id": int(ids[-1]) + 5,
                "engine": "numpy", "arrays": "gallery.abc.npz", "faiss_index": "", "hidden": [], "trained_nlist": 0,
                "kind": "exact", "nlist": 0, "nprobe": 16, "hnsw_m": 32, "ef_search": 128}
    (folder / "index.json").write_text(json.dumps(manifest))
    (folder / "config.yaml").write_text("MODEL:\n  BACKBONE: resnet18\n")
    return ids, feats


def test_old_index_folders_migrate_explicitly_or_on_first_open(tmp_path, capsys):
    ids, feats = _legacy_folder(tmp_path / "old")
    new = f"sqlite://{tmp_path}/new.db"
    assert main(["index", "migrate", str(tmp_path / "old"), new]) == 0
    with open_gallery(new) as gallery:
        rows = list(gallery.batches())
        assert [i for b in rows for i in b.ids.tolist()] == ids.tolist()  # the old ids are kept
        np.testing.assert_allclose(np.concatenate([b.features for b in rows]),
                                   feats / np.linalg.norm(feats, axis=1, keepdims=True), atol=1e-6)
        assert rows[0].sightings[1].path == f"p/{ids[1]}.jpg" and rows[0].sightings[1].camera_id == f"c{ids[1] % 2}"
        assert gallery.model_config == "MODEL:\n  BACKBONE: resnet18\n"
        [added] = gallery.add(feats[:1], [gallery.get([int(ids[0])])[int(ids[0])]])
        assert added == ids[-1] + 5  # new ids continue past the old next_id: never reused
    # the old folder used as before: read into FOLDER/gallery.db once, then that database is used
    capsys.readouterr()
    assert main(["index", "info", "--index", str(tmp_path / "old")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 12 and info["cameras"] == 2 and info["identities"] == 3 and info["backend"] == "sqlite"
    assert (tmp_path / "old" / "gallery.db").is_file()
    manifest = json.loads((tmp_path / "old" / "index.json").read_text())
    (tmp_path / "old" / "index.json").write_text(json.dumps({**manifest, "dim": "8"}))
    assert main(["index", "migrate", str(tmp_path / "old"), str(tmp_path / "other")]) == 2
    (tmp_path / "old" / "index.json").write_text(json.dumps({**manifest, "count": 5}))
    assert main(["index", "migrate", str(tmp_path / "old"), str(tmp_path / "other")]) == 2
    assert not (tmp_path / "other" / "gallery.db").exists()  # nothing half-made from a broken folder


def test_filters_and_capture_times_on_the_command_line(tmp_path, model_config, capsys):
    idx = tmp_path / "idx"
    _six_photos_indexed(tmp_path, model_config, f"sqlite://{idx}.db")
    _image(tmp_path / "later" / "100_c1.jpg", 100)
    assert main(["index", "add", "--index", f"{idx}.db", "--images", str(tmp_path / "later"),
                 "--captured-at", "2026-12-01T10:00:00", "--attributes", '{"lane": 2}']) == 0
    capsys.readouterr()
    query = str(tmp_path / "photos" / "001_c1.jpg")
    assert main(["search", "--index", f"{idx}.db", "--image", query, "--camera", "1", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert sorted(h["path"].rsplit("/", 1)[1] for h in hits) == ["001_c1.jpg", "004_c1.jpg", "100_c1.jpg"]
    assert main(["search", "--index", f"{idx}.db", "--image", query, "--from", "2026-12-01T09:59:59",
                 "--to", "2026-12-01T10:00:00Z", "--json"]) == 0
    [hit] = json.loads(capsys.readouterr().out)[0]["results"]
    assert hit["path"].endswith("100_c1.jpg") and hit["attributes"] == {"lane": 2}
    assert hit["captured_at"] == 1796119200.0
    assert main(["search", "--index", f"{idx}.db", "--image", query, "--from", "noon"]) == 2
    assert main(["index", "add", "--index", f"{idx}.db", "--images", str(tmp_path / "later"),
                 "--attributes", "[1]"]) == 2
