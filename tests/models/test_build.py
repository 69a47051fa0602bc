"""The assembled network: outputs per mode, where MixStyle sits, and the config builder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vreid.config import load_config
from vreid.models import build_model
from vreid.models.build import ReIDNet
from vreid.models.heads import BNNeck
from vreid.models.layers import GeM, MixStyle
from vreid.models.summary import block_sizes, count_flops


class TinyBackbone(nn.Module):
    """Three named stages; each records what it received so MixStyle's position can be checked."""

    stage_names = ("s1", "s2", "s3")
    out_channels = 4

    def __init__(self):
        super().__init__()
        self.s1, self.s2, self.s3 = (nn.Conv2d(c, 4, 1) for c in (3, 4, 4))
        self.seen: dict[str, torch.Tensor] = {}
        for name in self.stage_names:
            getattr(self, name).register_forward_pre_hook(lambda m, a, n=name: self.seen.__setitem__(n, a[0]))

    def forward(self, x):
        return self.s3(self.s2(self.s1(x)))


class RecordingMixStyle(MixStyle):
    def __init__(self):
        super().__init__(p=1.0)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, domains=None):
        self.calls.append((x, domains))
        return x + 100.0 if self.training else x


def test_mixstyle_goes_after_the_chosen_stages_in_training_only():
    backbone = TinyBackbone()
    mix = RecordingMixStyle()
    net = ReIDNet(backbone, GeM(), BNNeck(4), None, mixstyle=mix, mixstyle_after=(1,))
    x = torch.rand(4, 3, 5, 5)
    domains = torch.tensor([0, 1, 0, 1])
    net.train()(x, domains=domains)
    assert len(mix.calls) == 1 and torch.equal(mix.calls[0][1], domains)
    conv = lambda m, t: torch.nn.functional.conv2d(t, m.weight, m.bias)  # noqa: E731 (bypasses the hooks)
    assert torch.allclose(backbone.seen["s2"], conv(backbone.s1, x) + 100.0)  # stage 2 received the mixed map
    assert torch.allclose(backbone.seen["s3"], conv(backbone.s2, backbone.seen["s2"]))  # nothing after stage 2
    assert net._domains is None  # not kept past the forward
    net.eval()(x)
    assert torch.allclose(backbone.seen["s2"], conv(backbone.s1, x))
    with pytest.raises(ValueError, match="MixStyle position 3"):
        ReIDNet(TinyBackbone(), GeM(), BNNeck(4), None, mixstyle=MixStyle(), mixstyle_after=(3,))


def test_outputs_per_mode_and_neck_feat():
    torch.manual_seed(0)
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.HEAD.NAME", "multihead", "MODEL.HEAD.GROUPS", "4",
                             "MODEL.HEAD.DIM", "64", "MODEL.HEAD.RANK", "8", "MODEL.MIXSTYLE.ENABLED", "True"])
    model = build_model(cfg, num_classes=7)
    x = torch.rand(4, 3, 64, 64)
    out = model.train()(x, labels=torch.tensor([0, 1, 2, 3]))
    assert out["logits"].shape == (4, 7) and out["features"].shape == (4, 64) and out["bn_features"].shape == (4, 64)
    assert out["group_logits"].shape == (4, 4) and out["group_labels"].shape == (4,)
    out["logits"].sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        after = model(x)
        model.neck_feat = "before"
        before = model(x)
    assert after.shape == before.shape == (4, 64)
    bn = model.neck.bn
    expected = (before - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    assert torch.allclose(after, expected, atol=1e-5)
    assert model.embedding_dim == 64


def test_no_classifier_without_classes_and_margin_classifier_from_config():
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.CLASSIFIER.NAME", "arcface", "MODEL.POOLING", "avg"])
    assert build_model(cfg, 0).classifier is None
    model = build_model(cfg, 5)
    assert type(model.classifier).__name__ == "ArcFace" and model.classifier.scale == 64.0
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)


def test_summary_counts_and_flops_against_independent_numbers():
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.LAST_STRIDE", "2"])
    model = build_model(cfg, 10)
    rows = {r.name: r for r in block_sizes(model)}
    assert sum(r.parameters for r in rows.values()) == sum(p.numel() for p in model.parameters())
    assert rows["classifier"].parameters == 512 * 10
    assert rows["neck"].parameters == 1024 and rows["neck"].trainable == 512  # bias frozen
    import torchvision

    tv = torchvision.models.resnet18()
    tv_backbone = sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))
    assert sum(r.parameters for n, r in rows.items() if n.startswith("backbone.")) == tv_backbone
    # FLOPs of resnet18 at 224 are ~1.82 GMACs (published figure); ours adds only pooling/BN/FC
    flops = count_flops(model, 224, 224)
    assert 3.5e9 < flops < 3.8e9


def test_frozen_backbone_gets_no_gradient_and_keeps_its_bn_statistics():
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.MIXSTYLE.ENABLED", "True", "MODEL.MIXSTYLE.P", "1.0"])
    model = build_model(cfg, 3).train()
    model.freeze_backbone(True)
    bn = model.backbone.bn1
    before = bn.running_mean.clone()
    out = model(torch.rand(4, 3, 64, 64), labels=torch.tensor([0, 1, 2, 0]))
    out["logits"].sum().backward()
    assert torch.equal(bn.running_mean, before)  # BN statistics frozen (the official code forgets this)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.classifier.weight.grad is not None and not model.mixstyle.training
    model.eval()
    model.train()  # going back to training keeps the backbone frozen
    assert not model.backbone.training and model.neck.training
    model.freeze_backbone(False)
    assert model.backbone.training and model.mixstyle.training
    model(torch.rand(4, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)


def test_training_refuses_to_start_from_random_weights_unless_told(tmp_path):
    """An empty MODEL.PRETRAIN_PATH names the key and the expected file; MODEL.PRETRAIN False opts out."""
    from vreid.errors import ConfigError
    from vreid.models.build import pretrain_path

    cfg = load_config(None, ["MODEL.BACKBONE", "resnext101_ibn_a"])
    with pytest.raises(ConfigError) as exc:
        pretrain_path(cfg)
    assert "MODEL.PRETRAIN_PATH" in str(exc.value) and "resnext101_ibn_a-6ace051d.pth" in str(exc.value)
    assert "\n" not in str(exc.value)
    cfg = load_config(None, ["MODEL.BACKBONE", "mobilenet_v2"])
    with pytest.raises(ConfigError, match="mobilenet_v2-b0353104.pth"):
        pretrain_path(cfg)
    assert pretrain_path(load_config(None, ["MODEL.PRETRAIN", "False"])) is None
    assert pretrain_path(load_config(None, ["MODEL.PRETRAIN_PATH", "/w/x.pth"])) == "/w/x.pth"
    with pytest.raises(ConfigError, match="clear one"):
        pretrain_path(load_config(None, ["MODEL.PRETRAIN", "False", "MODEL.PRETRAIN_PATH", "/w/x.pth"]))


def test_train_command_refuses_without_weights_and_exits_2(tmp_path, caplog):
    from vreid.cli import main

    cfg = "configs/aic21/resnext101_ibn_a.yml"
    assert main(["train", "--config-file", cfg, "OUTPUT_DIR", str(tmp_path / "run")]) == 2
    assert "MODEL.PRETRAIN_PATH" in caplog.text and "resnext101_ibn_a-6ace051d.pth" in caplog.text
    assert not (tmp_path / "run").exists()  # refused before writing anything


@pytest.mark.parametrize("config", ["configs/demo/city.yml"])
def test_demo_configs_opt_out_of_imagenet_weights(config):
    from vreid.models.build import pretrain_path

    assert pretrain_path(load_config(config)) is None
