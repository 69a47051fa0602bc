"""IBN-a on a pretrained torchvision block trunk (MODEL.IBN_STAGES): where the norms go, their arithmetic, the keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vreid.config import load_config
from vreid.errors import ConfigError
from vreid.models import build_model
from vreid.models.backbones import create_backbone
from vreid.models.backbones.resnet_ibn import IBN


def _randomise_norms(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics, as ImageNet weights have."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen))
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def test_mobilenet_v2_gets_ibn_on_the_expansion_norm_of_each_block_of_the_first_stages():
    backbone = create_backbone("mobilenet_v2", last_stride=2)
    replaced = backbone.use_instance_norm(2)
    # torchvision MobileNetV2: features.0 is the stride-2 stem and features.1 is still at stride 2; stage 1
    # (stride 4) is features.2-3, stage 2 (stride 8) features.4-6. Each block's first norm follows its 1x1
    # expansion conv (conv.0 = Conv2dNormActivation, whose [1] is the norm).
    assert replaced == [f"features.{i}.conv.0.1" for i in range(2, 7)]
    widths = [backbone.get_submodule(name).half * 2 for name in replaced]
    assert widths == [16 * 6, 24 * 6, 24 * 6, 32 * 6, 32 * 6]  # input channels x expansion ratio 6
    assert not any(isinstance(m, IBN) for m in backbone.get_submodule("features.7").modules())
    assert backbone(torch.rand(2, 3, 64, 64)).shape == (2, 1280, 2, 2)


def test_converted_norm_is_instance_norm_then_batch_norm_with_the_trained_parameters():
    backbone = create_backbone("mobilenet_v2", last_stride=2)
    _randomise_norms(backbone)
    old = backbone.get_submodule("features.3.conv.0.1")
    weight, bias = old.weight.detach().clone(), old.bias.detach().clone()
    mean, var, eps = old.running_mean.clone(), old.running_var.clone(), old.eps
    backbone.use_instance_norm(1)
    new = backbone.get_submodule("features.3.conv.0.1").eval()
    x = torch.randn(3, 144, 5, 7) * 2 + 1
    h = 72
    # written out: per image and channel over h x w (biased variance) for the first half, running stats after
    mu, sd = x[:, :h].mean(dim=(2, 3), keepdim=True), (x[:, :h].var(dim=(2, 3), unbiased=False, keepdim=True)
                                                       + eps).sqrt()
    first = (x[:, :h] - mu) / sd * weight[:h, None, None] + bias[:h, None, None]
    rest = (x[:, h:] - mean[h:, None, None]) / (var[h:, None, None] + eps).sqrt() * weight[h:, None, None] \
        + bias[h:, None, None]
    assert torch.allclose(new(x), torch.cat([first, rest], dim=1), atol=1e-5)


def _cfg(stages: int, backbone: str = "mobilenet_v2"):
    return load_config(None, ["MODEL.BACKBONE", backbone, "MODEL.LAST_STRIDE", "2", "MODEL.POOLING", "avg",
                              "MODEL.IBN_STAGES", str(stages)])


def test_trained_weights_load_back_into_the_same_config():
    model = build_model(_cfg(2), num_classes=5, pretrained=False)
    assert sum(isinstance(m, IBN) for m in model.modules()) == 5
    state = model.state_dict()
    assert "backbone.features.2.conv.0.1.IN.weight" in state and "backbone.features.2.conv.0.1.BN.running_var" in state
    again = build_model(_cfg(2), num_classes=5, pretrained=False)
    again.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(model.eval()(x), again.eval()(x))
    assert not any(isinstance(m, IBN) for m in build_model(_cfg(0), 5, pretrained=False).modules())


@pytest.mark.parametrize(("stages", "backbone", "message"), [
    (4, "mobilenet_v2", "must be in 1..3"),
    (1, "resnet18", "no blocks with a BatchNorm"),
])
def test_bad_ibn_stages_name_the_key(stages, backbone, message):
    with pytest.raises(ConfigError, match=f"MODEL.IBN_STAGES.*{message}"):
        build_model(_cfg(stages, backbone), num_classes=5, pretrained=False)
