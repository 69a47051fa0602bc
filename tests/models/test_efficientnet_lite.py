"""EfficientNet-Lite: the published layout and key names, TensorFlow SAME padding, the shared ImageNet files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import SHARED
from vreid.models.backbones import create_backbone, load_pretrained
from vreid.models.backbones.efficientnet_lite import SameConv2d, round_channels

WEIGHTS = {
    "efficientnet_lite0": SHARED / "weights" / "efficientnet-lite0-57934424.pth",
    "efficientnet_lite2": SHARED / "weights" / "efficientnet-lite2-9656183e.pth",
}
# Written from the published architecture (B0 table; Lite keeps the first and last stage at one block and the stem
# at 32 / head at 1280 channels): blocks per stage, output channels per stage, kernel per stage.
LAYOUT = {
    "efficientnet_lite0": ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet_lite2": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}
KERNELS = (3, 3, 5, 3, 5, 5, 3)
EXPAND = (1, 6, 6, 6, 6, 6, 6)
# ImageNet-1k classes that are road vehicles or their parts (ambulance ... trolleybus, moped, scooter, ...)
VEHICLE_CLASSES = {407, 436, 468, 511, 555, 569, 573, 575, 586, 603, 609, 612, 627, 654, 656, 661, 665, 670, 675,
                   705, 717, 734, 751, 757, 779, 803, 817, 829, 847, 864, 866, 867, 874}


def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    repeats, channels = LAYOUT[name]
    shapes: dict[str, tuple[int, ...]] = {"_conv_stem.weight": (32, 3, 3, 3), "_bn0.weight": (32,)}
    block, cin = 0, 32
    for stage, (n, cout) in enumerate(zip(repeats, channels, strict=True)):
        for _ in range(n):
            mid = cin * EXPAND[stage]
            if EXPAND[stage] != 1:
                shapes[f"_blocks.{block}._expand_conv.weight"] = (mid, cin, 1, 1)
            shapes[f"_blocks.{block}._depthwise_conv.weight"] = (mid, 1, KERNELS[stage], KERNELS[stage])
            shapes[f"_blocks.{block}._project_conv.weight"] = (cout, mid, 1, 1)
            block, cin = block + 1, cout
    shapes["_conv_head.weight"] = (1280, cin, 1, 1)
    shapes["_bn1.weight"] = (1280,)
    return shapes


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_layout_matches_the_published_architecture(name: str) -> None:
    state = create_backbone(name, last_stride=2).state_dict()
    kept = ("conv.weight", "_conv_stem.weight", "_conv_head.weight")
    convs = {k: tuple(v.shape) for k, v in state.items() if k.endswith(kept) or k in ("_bn0.weight", "_bn1.weight")}
    assert convs == expected_shapes(name)
    assert not any("_se_" in k for k in state)  # Lite has no squeeze-and-excitation


def test_round_channels_known_values() -> None:
    assert [round_channels(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert [round_channels(c, 1.4) for c in (16, 24, 40, 80, 112, 192, 320)] == [24, 32, 56, 112, 160, 272, 448]


@pytest.mark.parametrize(("size", "kernel", "stride"), [(7, 3, 2), (8, 3, 2), (9, 5, 2), (10, 5, 2), (8, 3, 1)])
def test_same_padding_is_tensorflows(size: int, kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, kernel, stride=stride, bias=False)
    x = torch.randn(1, 2, size, size)
    out_size = math.ceil(size / stride)
    total = max((out_size - 1) * stride + kernel - size, 0)
    before, after = total // 2, total - total // 2  # TF puts the odd pixel after
    reference = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=stride)
    assert conv(x).shape[-1] == out_size
    torch.testing.assert_close(conv(x), reference)


def test_last_stride_one_halves_the_output_stride() -> None:
    x = torch.randn(1, 3, 64, 96)
    assert create_backbone("efficientnet_lite0", last_stride=2).eval()(x).shape == (1, 1280, 2, 3)
    assert create_backbone("efficientnet_lite0", last_stride=1).eval()(x).shape == (1, 1280, 4, 6)


def test_stage_names_end_at_each_output_stride() -> None:
    backbone = create_backbone("efficientnet_lite0", last_stride=2).eval()
    sizes = {}
    handles = [backbone.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: sizes.__setitem__(n, out.shape[-1])) for n in backbone.stage_names]
    backbone(torch.zeros(1, 3, 64, 64))
    for h in handles:
        h.remove()
    assert [sizes[n] for n in backbone.stage_names] == [16, 8, 4, 2]  # output strides 4, 8, 16, 32


def _vehicle_batch(root, size: int, count: int = 32) -> torch.Tensor:
    paths = sorted((root / "images" / "train").glob("*.jpg"))[::8][:count]
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
              for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_shared_imagenet_weights_recognise_vehicles(name: str, shared_vehicle2cam) -> None:
    """A strict load is not enough: the network must still be an ImageNet classifier. Its own ``_fc`` applied to the
    pooled trunk names a road vehicle for nearly every vehicle-2cam crop, with inputs scaled to [-1, 1]; and the
    stem's BatchNorm statistics from training match [-1, 1] inputs far better than ImageNet mean/std inputs."""
    if not WEIGHTS[name].is_file():
        pytest.skip(f"{WEIGHTS[name]} is not present on this machine")
    backbone = create_backbone(name, last_stride=2)
    report = load_pretrained(backbone, WEIGHTS[name], strict=True)
    assert report.missing == [] and report.unexpected == []
    backbone.eval()
    state = torch.load(WEIGHTS[name], map_location="cpu", weights_only=True)
    x = _vehicle_batch(shared_vehicle2cam, 224)
    signed = x * 2 - 1
    imagenet = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None,
                                                                                                            None]
    with torch.no_grad():
        logits = backbone(signed).mean((2, 3)) @ state["_fc.weight"].T + state["_fc.bias"]
        share = np.mean([int(c) in VEHICLE_CLASSES for c in logits.argmax(1)])
        running_mean, running_std = backbone._bn0.running_mean, backbone._bn0.running_var.sqrt()
        alive = running_std > 1e-2

        def stem_mean_error(inputs: torch.Tensor) -> float:
            mean = backbone._conv_stem(inputs).mean((0, 2, 3))
            return ((mean - running_mean).abs() / running_std)[alive].mean().item()

        assert share >= 0.85, share
        assert stem_mean_error(signed) < 0.5 * stem_mean_error(imagenet)
