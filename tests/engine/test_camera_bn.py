"""Per-camera batch-norm statistics at test time: the statistics written out, the model restored, and the invariance
the method exists for (a camera whose gain and offset differ embeds the same vehicles to the same features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vreid.config import load_config
from vreid.data.records import ImageRecord
from vreid.data.transforms import build_test_transform
from vreid.engine.camera_bn import POOLED, camera_groups, embed_per_camera, statistics_of
from vreid.engine.extract import extract_features
from vreid.engine.inference import InferenceSetup


class Tiny(nn.Module):
    """Unpadded convolutions (a gain and an offset of the input stay a gain and an offset until the first norm)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                                  nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.neck = nn.BatchNorm1d(16)

    def forward(self, x):
        return self.neck(self.body(x))


class TinyEmbedder:
    """What embed_per_camera uses of vreid.engine.inference.Embedder, around :class:`Tiny`."""

    def __init__(self, model, cfg):
        self.setup = InferenceSetup(model, torch.device("cpu"), {"flip": False, "amp_dtype": None,
                                                                 "channels_last": False})
        self.transform, self.batch_size, self.num_workers = build_test_transform(cfg), 64, 0

    def embed_records(self, records):
        return extract_features(self.setup.model, records, self.transform, batch_size=8, progress=False)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():  # the model's own statistics: something other than the reset values
        for bn in (m.body[1], m.body[4], m.neck):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return m.eval()


def test_statistics_inside_are_those_of_the_images_and_the_models_own_come_back(model):
    x = torch.randn(12, 3, 10, 10)
    own = [t.clone() for t in (model.body[1].running_mean, model.body[1].running_var, model.neck.running_var)]
    model.neck.train()  # mixed modes come back as they were
    with statistics_of(model, iter([x[:9], x[9:], x[:1]])):  # unequal batches; the batch of one image is skipped
        conv = model.body[0](x)  # written out: the first norm's input, mean and unbiased variance over N, H, W
        assert torch.allclose(model.body[1].running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(model.body[1].running_var, conv.var(dim=(0, 2, 3), unbiased=True), atol=1e-5)
        assert not model.body[1].training and not model.neck.training
    assert torch.equal(model.body[1].running_mean, own[0]) and torch.equal(model.body[1].running_var, own[1])
    assert torch.equal(model.neck.running_var, own[2]) and model.neck.momentum == 0.1
    assert model.neck.training and not model.body[1].training and not model.training
    with statistics_of(model, iter([x]), weight=0.25):  # a quarter the images', three quarters the model's own
        conv = model.body[0](x).double()
        m_c, v_c = conv.mean(dim=(0, 2, 3)), conv.var(dim=(0, 2, 3), unbiased=True)
        m_o, v_o = own[0].double(), own[1].double()
        mixture_var = 0.25 * v_c + 0.75 * v_o + 0.25 * 0.75 * (m_c - m_o) ** 2  # the variance of the mixture
        assert torch.allclose(model.body[1].running_mean.double(), 0.25 * m_c + 0.75 * m_o, atol=1e-5)
        assert torch.allclose(model.body[1].running_var.double(), mixture_var, atol=1e-5)
    with pytest.raises(RuntimeError, match="inside"), statistics_of(model, iter([x])):
        raise RuntimeError("inside")
    assert torch.equal(model.body[1].running_mean, own[0])  # restored after an error too


def test_a_camera_with_another_gain_and_offset_embeds_the_same_vehicles_alike(tmp_path, model):
    cfg = load_config(None, ["INPUT.SIZE_TEST", "(16,16)"])
    rng = np.random.default_rng(0)
    query, gallery = [], []
    for i in range(10):
        pixels = rng.integers(50, 121, size=(16, 16, 3))
        other = 2 * pixels + np.array([-40, -10, 5])  # camera 2: gain 2, an offset per channel (exact in uint8)
        for name, arr, side, cam in (("q", pixels, query, "1"), ("g", other, gallery, "2")):
            path = tmp_path / f"{name}{i}.png"
            Image.fromarray(arr.astype(np.uint8)).save(path)
            side.append(ImageRecord(path, f"v{i}", cam))
    embedder = TinyEmbedder(model, cfg)
    own = model.body[1].running_mean.clone()
    adapted = embed_per_camera(embedder, {"query": query, "gallery": gallery}, min_images=5)
    plain_q, plain_g = embedder.embed_records(query).features, embedder.embed_records(gallery).features
    q, g = adapted["query"].features, adapted["gallery"].features
    gap = 1 - (q * g).sum(axis=1)  # the same vehicles, the same features, although camera 2 renders them otherwise
    plain_gap = 1 - (plain_q * plain_g).sum(axis=1)  # with the model's own statistics they differ
    assert gap.max() < 1e-4 and plain_gap.min() > 1e-3
    assert (np.argmax(q @ g.T, axis=1) == np.arange(10)).all()
    assert list(adapted["gallery"].paths) == [str(r.path) for r in gallery]
    assert torch.equal(model.body[1].running_mean, own)
    # one camera too small for statistics of its own: all 20 images estimate them, its features change
    small = embed_per_camera(embedder, {"query": query, "gallery": gallery}, min_images=11)
    assert not np.allclose(small["query"].features, adapted["query"].features, atol=1e-3)


def test_small_cameras_share_one_pooled_group():
    assert camera_groups(["a"] * 5 + ["b", "c"], 3) == {"a": [0, 1, 2, 3, 4], POOLED: [5, 6]}
    assert camera_groups(["a", "a", "b"], 1) == {"a": [0, 1], POOLED: [2]}  # one image cannot give a variance
