"""Backbones: IBN-a checkpoint names/shapes, parameter counts, IBN arithmetic, shapes, gradients, the factory."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from vreid.models.backbones import create_backbone
from vreid.models.backbones.resnet_ibn import IBN


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def expected_ibn_a_keys(layers: tuple[int, ...]) -> list[str]:
    """The official IBN-Net key layout, written from the architecture rules (not from our module)."""
    keys = ["conv1.weight", *bn_keys("bn1")]
    for stage, blocks in enumerate(layers, start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            keys.append(f"{p}.conv1.weight")
            if stage <= 3:  # IBN-a in layer1..3, every block
                keys += [f"{p}.bn1.IN.weight", f"{p}.bn1.IN.bias", *bn_keys(f"{p}.bn1.BN")]
            else:
                keys += bn_keys(f"{p}.bn1")
            keys += [f"{p}.conv2.weight", *bn_keys(f"{p}.bn2"), f"{p}.conv3.weight", *bn_keys(f"{p}.bn3")]
            if block == 0:
                keys += [f"{p}.downsample.0.weight", *bn_keys(f"{p}.downsample.1")]
    return keys


@pytest.fixture(scope="module")
def r50() -> nn.Module:
    return create_backbone("resnet50_ibn_a")


@pytest.fixture(scope="module")
def x101() -> nn.Module:
    return create_backbone("resnext101_ibn_a")


def test_resnet50_ibn_a_keys_and_shapes(r50: nn.Module) -> None:
    state = r50.state_dict()
    assert list(state) == expected_ibn_a_keys((3, 4, 6, 3))
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.bn1.IN.weight": (32,),
        "layer1.0.bn1.BN.running_mean": (32,),
        "layer2.3.bn1.IN.bias": (64,),
        "layer3.5.bn1.IN.weight": (128,),
        "layer3.5.bn1.BN.running_var": (128,),
        "layer4.0.bn1.weight": (512,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("fc.") for k in state)
    assert all(m.bias is None for m in r50.modules() if isinstance(m, nn.Conv2d))  # official: bias=False


def test_resnext101_ibn_a_keys_and_shapes(x101: nn.Module) -> None:
    state = x101.state_dict()
    assert list(state) == expected_ibn_a_keys((3, 4, 23, 3))
    for stage, half in ((1, 64), (2, 128), (3, 256)):  # bottleneck width D*C = 128/256/512
        assert tuple(state[f"layer{stage}.0.bn1.IN.weight"].shape) == (half,)
        assert tuple(state[f"layer{stage}.1.bn1.BN.running_mean"].shape) == (half,)
    assert tuple(state["layer4.0.bn1.weight"].shape) == (1024,)
    assert tuple(state["layer1.0.conv2.weight"].shape) == (128, 4, 3, 3)  # 32 groups of 4 channels
    assert tuple(state["layer4.0.conv2.weight"].shape) == (1024, 32, 3, 3)
    assert x101.layer3[0].conv2.groups == 32


def test_ibn_channel_split_resnet50(r50: nn.Module) -> None:
    for stage, half in ((1, 32), (2, 64), (3, 128)):
        for block in getattr(r50, f"layer{stage}"):
            assert isinstance(block.bn1, IBN)
            assert block.bn1.IN.num_features == half and block.bn1.BN.num_features == half
            assert block.bn1.IN.affine and not block.bn1.IN.track_running_stats
    assert all(isinstance(block.bn1, nn.BatchNorm2d) for block in r50.layer4)


def test_parameter_counts(r50: nn.Module, x101: nn.Module) -> None:
    # IBN splits one BN's affine pair into IN + BN pairs of the same total size: counts equal plain ResNet's.
    ref50 = torchvision.models.resnet50()
    assert n_params(r50) == n_params(ref50) - n_params(ref50.fc) == 23_508_032
    r101 = create_backbone("resnet101_ibn_a")
    ref101 = torchvision.models.resnet101()
    assert n_params(r101) == n_params(ref101) - n_params(ref101.fc) == 42_500_160

    def bottleneck(cin: int, width: int, cout: int, groups: int, down: bool) -> int:
        convs = cin * width + width * (width // groups) * 9 + width * cout
        norms = 2 * width + 2 * width + 2 * cout
        return convs + norms + ((cin * cout + 2 * cout) if down else 0)

    total, cin = 3 * 64 * 7 * 7 + 2 * 64, 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 23, 3), strict=True):
        width = (planes * 4 // 64) * 32
        for block in range(blocks):
            total += bottleneck(cin, width, planes * 4, 32, block == 0)
            cin = planes * 4
    ref_x101 = ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)  # torchvision's 32x4d layout
    assert n_params(x101) == total == n_params(ref_x101) - n_params(ref_x101.fc) == 42_128_704


def test_init_follows_official_rule(r50: nn.Module) -> None:
    conv = r50.layer3[0].conv1  # 1x1, 256 out: std sqrt(2/256)
    assert conv.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)
    assert torch.all(r50.layer1[0].bn1.IN.weight == 1) and torch.all(r50.layer1[0].bn1.BN.bias == 0)


def test_ibn_layer_matches_independent_in_and_bn() -> None:
    torch.manual_seed(0)
    layer = IBN(6)
    with torch.no_grad():
        for norm in (layer.IN, layer.BN):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 6, 5, 7) * 3 + 1
    eps = 1e-5
    first, rest = x[:, :3], x[:, 3:]
    mean_in, var_in = first.mean(dim=(2, 3), keepdim=True), first.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected_in = (first - mean_in) / torch.sqrt(var_in + eps) * layer.IN.weight.view(1, -1, 1, 1) \
        + layer.IN.bias.view(1, -1, 1, 1)
    mean_bn, var_bn = rest.mean(dim=(0, 2, 3), keepdim=True), rest.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected_bn = (rest - mean_bn) / torch.sqrt(var_bn + eps) * layer.BN.weight.view(1, -1, 1, 1) \
        + layer.BN.bias.view(1, -1, 1, 1)
    layer.train()
    torch.testing.assert_close(layer(x), torch.cat([expected_in, expected_bn], dim=1), rtol=1e-5, atol=1e-5)
    # eval: IN still uses per-instance statistics, BN its running statistics
    layer.eval()
    with torch.no_grad():
        layer.BN.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.BN.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
    expected_bn_eval = (rest - layer.BN.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        layer.BN.running_var.view(1, -1, 1, 1) + eps) * layer.BN.weight.view(1, -1, 1, 1) + layer.BN.bias.view(
        1, -1, 1, 1)
    torch.testing.assert_close(layer(x), torch.cat([expected_in, expected_bn_eval], dim=1), rtol=1e-5, atol=1e-5)


def test_ibn_odd_channels() -> None:
    layer = IBN(5)
    assert layer.IN.num_features == 2 and layer.BN.num_features == 3
    assert layer(torch.randn(2, 5, 3, 3)).shape == (2, 5, 3, 3)


def first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def check_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    for last_stride, size in ((1, 4), (2, 2)):
        backbone = create_backbone(name, last_stride=last_stride)
        out = backbone(x)
        assert out.shape == (4, backbone.out_channels, size, size)
        (out * torch.randn_like(out)).sum().backward()
        grad = first_conv(backbone).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet50_ibn_a", "resnet101_ibn_a", "resnext101_ibn_a", "resnet152", "mobilenet_v2"])
def test_forward_backward(name: str) -> None:
    check_forward_backward(name)


def test_out_channels() -> None:
    assert create_backbone("resnet50_ibn_a").out_channels == 2048
    assert create_backbone("mobilenet_v2").out_channels == 1280
    assert create_backbone("resnet18", last_stride=2).out_channels == 512
    assert create_backbone("efficientnet_b0").out_channels == 1280


@pytest.mark.parametrize(
    ("name", "last_stride", "stages", "channels"),
    [
        ("resnet50_ibn_a", 1, ("layer1", "layer2", "layer3", "layer4"), (256, 512, 1024, 2048)),
        ("resnet50", 2, ("layer1", "layer2", "layer3", "layer4"), (256, 512, 1024, 2048)),
        ("mobilenet_v2", 2, ("features.3", "features.6", "features.13", "features.18"), (24, 32, 96, 1280)),
        ("regnet_y_400mf", 1, tuple(f"trunk_output.block{i}" for i in range(1, 5)), (48, 104, 208, 440)),
        ("densenet121", 2, ("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"),
         (256, 512, 1024, 1024)),
        ("convnext_tiny", 2, ("features.1", "features.3", "features.5", "features.7"), (96, 192, 384, 768)),
    ],
)
def test_stage_names_hookable(name: str, last_stride: int, stages: tuple[str, ...], channels: tuple[int, ...]) -> None:
    backbone = create_backbone(name, last_stride=last_stride)
    assert backbone.stage_names == stages
    modules = dict(backbone.named_modules())
    seen: list[tuple[int, ...]] = []
    handles = [modules[s].register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape))) for s in stages]
    backbone.eval()
    with torch.no_grad():
        backbone(torch.randn(1, 3, 64, 64))
    for handle in handles:
        handle.remove()
    assert tuple(shape[1] for shape in seen) == channels
    strides = [64 // shape[-1] for shape in seen]
    expected_strides = [4, 8, 16, 16 if last_stride == 1 else 32]
    assert strides == expected_strides


def test_last_stride_one_keeps_stride_16_torchvision() -> None:
    for name in ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "mnasnet0_5"):
        backbone = create_backbone(name).eval()
        with torch.no_grad():
            assert backbone(torch.randn(1, 3, 64, 64)).shape[-2:] == (4, 4), name


def test_factory_errors() -> None:
    with pytest.raises(ValueError, match=r"resnet50_ibn_a.*torchvision"):
        create_backbone("resnet9000")
    with pytest.raises(ValueError, match="last_stride"):
        create_backbone("resnet50_ibn_a", last_stride=3)
    with pytest.raises(ValueError, match="last_stride"):
        create_backbone("resnet18", last_stride=4)
    with pytest.raises(ValueError, match="last_stride=2 is required"):
        create_backbone("squeezenet1_1", last_stride=1)
    with pytest.raises(ValueError, match="not supported"):
        create_backbone("vit_b_16", last_stride=2)


def test_timm_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ValueError, match="timm is not installed"):
        create_backbone("timm:resnet50", last_stride=2)


class _TinyTimmNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.stages = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1))
        self.num_features = 32
        self.feature_info = [{"module": "stem", "num_chs": 8, "reduction": 4},
                             {"module": "stages.0", "num_chs": 16, "reduction": 8},
                             {"module": "stages.1", "num_chs": 32, "reduction": 16}]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def test_timm_wrapper_with_fake_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict]] = []

    def create_model(name: str, **kwargs: object) -> nn.Module:
        calls.append((name, kwargs))
        return _TinyTimmNet()

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    backbone = create_backbone("timm:tiny", last_stride=2)
    assert calls[0][0] == "tiny" and calls[0][1]["pretrained"] is False
    assert backbone.out_channels == 32
    assert backbone.stage_names == ("body.stem", "body.stages.0", "body.stages.1")
    assert set(backbone.stage_names) <= dict(backbone.named_modules()).keys()
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 32, 4, 4)
    with pytest.raises(ValueError, match="last_stride=2 is required"):
        create_backbone("timm:tiny", last_stride=1)
