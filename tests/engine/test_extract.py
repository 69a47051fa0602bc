"""Feature extraction and FeatureSet files: flip averaging, normalisation, a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import write_jpeg, write_noise_png
from vreid.data.records import ImageRecord
from vreid.engine.extract import extract_features
from vreid.errors import VreidError
from vreid.features import FeatureSet


class ColumnMeans(nn.Module):
    """A 'model' whose embedding is known in closed form: the mean of each image column of channel 0."""

    def forward(self, x):
        return x[:, 0].mean(dim=1)


def to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def test_flip_average_and_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        path = write_noise_png(tmp_path / f"{i}.png", rng, (4, 6))
        records.append(ImageRecord(path, str(i), "c1", track_id="t1" if i else None))
    fs = extract_features(ColumnMeans(), records, to_tensor, batch_size=2, flip=True, progress=False)
    for i, r in enumerate(records):
        x = to_tensor(Image.open(r.path).convert("RGB"))[0].mean(dim=0).numpy()
        expected = (x + x[::-1]) / 2
        expected /= np.linalg.norm(expected)
        assert np.allclose(fs.features[i], expected, atol=1e-6)
    assert list(fs.vehicle_ids) == ["0", "1", "2"] and list(fs.track_ids) == ["", "t1", "t1"]
    raw = extract_features(ColumnMeans(), records, to_tensor, flip=False, normalize=False, progress=False)
    assert not np.allclose(np.linalg.norm(raw.features, axis=1), 1.0)


def test_featureset_round_trip_and_bad_file(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    records = [ImageRecord(tmp_path / "a.jpg", "7", None), ImageRecord(tmp_path / "b.jpg", None, "c2")]
    fs = FeatureSet.from_records(np.eye(2, 3, dtype=np.float32), records)
    path = fs.save(tmp_path / "f" / "query.npz")
    back = FeatureSet.load(path)
    assert np.array_equal(back.features, fs.features) and list(back.camera_ids) == ["", "c2"]
    assert list(back.vehicle_ids) == ["7", ""] and back.paths[0].endswith("a.jpg") and len(back) == 2
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(VreidError, match="bad.npz: not a vreid feature file"):
        FeatureSet.load(tmp_path / "bad.npz")


def test_batched_test_transform_gives_the_per_image_tensors(tmp_path):
    """The loader's uint8 half + the per-batch float half == the whole pipeline applied image by image."""
    from torchvision.transforms import v2

    from vreid.config import load_config
    from vreid.data.transforms import build_test_transform

    cfg = load_config(None, ["INPUT.SIZE_TEST", "(20, 12)"])
    rng = np.random.default_rng(1)
    records = []
    for i in range(5):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (30 + i, 17, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path, str(i), "c1"))
    transform = build_test_transform(cfg)
    assert transform.per_image(Image.open(records[0].path).convert("RGB")).dtype == torch.uint8
    reference = v2.Compose([v2.Resize((20, 12), antialias=True), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(mean=list(cfg.INPUT.PIXEL_MEAN), std=list(cfg.INPUT.PIXEL_STD))])
    flat = nn.Flatten()
    got = extract_features(flat, records, transform, batch_size=2, normalize=False, progress=False).features
    expected = np.stack([flat(reference(Image.open(r.path).convert("RGB"))[None])[0].numpy() for r in records])
    np.testing.assert_array_equal(got, expected)
