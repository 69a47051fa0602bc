"""Pretrained loading: checkpoint layouts, classifier dropping, error messages, torchvision weight files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import SHARED
from vreid.errors import VreidError
from vreid.models.backbones import create_backbone, load_pretrained

MOBILENET_V2 = SHARED / "weights" / "mobilenet_v2-b0353104.pth"


def classifier_checkpoint(seed: int = 1) -> dict[str, torch.Tensor]:
    """An ImageNet-classifier-shaped ResNet50-IBN-a state_dict: random backbone weights and stats plus ``fc``."""
    torch.manual_seed(seed)
    source = create_backbone("resnet50_ibn_a", last_stride=2)
    state = {}
    for key, value in source.state_dict().items():
        state[key] = value if key.endswith("num_batches_tracked") else torch.randn_like(value).abs() + 0.1
    state["fc.weight"] = torch.randn(1000, 2048)
    state["fc.bias"] = torch.randn(1000)
    return state


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return classifier_checkpoint()


def assert_holds(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


def test_plain_state_dict_loads_strictly(tmp_path: Path, checkpoint: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet50_ibn_a-d9d0bb7b.pth"
    torch.save(checkpoint, path)
    target = create_backbone("resnet50_ibn_a")
    assert not torch.equal(target.state_dict()["layer1.0.bn1.IN.weight"], checkpoint["layer1.0.bn1.IN.weight"])
    report = load_pretrained(target, path, strict=True)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert report.loaded == len(checkpoint) - 2
    assert_holds(target, checkpoint)


def test_pth_tar_with_module_prefix(tmp_path: Path, checkpoint: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet50_ibn_a.pth.tar"
    data_parallel = {f"module.{k}": v for k, v in checkpoint.items()}
    old_format = {"epoch": 100, "arch": "resnet50_ibn_a", "best_prec1": 77.5, "state_dict": data_parallel}
    torch.save(old_format, path)
    target = create_backbone("resnet50_ibn_a", pretrained_path=path)
    assert_holds(target, checkpoint)


def test_model_key_and_missing_batch_counters(tmp_path: Path, checkpoint: dict[str, torch.Tensor]) -> None:
    # checkpoints from before PyTorch 0.4.1 have no num_batches_tracked: not worth a warning
    path = tmp_path / "old.pth"
    torch.save({"model": {k: v for k, v in checkpoint.items() if not k.endswith("num_batches_tracked")}}, path)
    target = create_backbone("resnet50_ibn_a")
    report = load_pretrained(target, path, strict=True)
    assert report.missing == []
    assert_holds(target, {k: v for k, v in checkpoint.items() if not k.endswith("num_batches_tracked")})


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path, checkpoint: dict[str, torch.Tensor]) -> None:
    bad = dict(checkpoint)
    bad["layer1.0.bn1.IN.weight"] = torch.ones(64)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(VreidError, match=r"layer1\.0\.bn1\.IN\.weight.*\(64,\).*\(32,\)"):
        load_pretrained(create_backbone("resnet50_ibn_a"), path)


def test_missing_and_unexpected_reported(tmp_path: Path, checkpoint: dict[str, torch.Tensor],
                                         caplog: pytest.LogCaptureFixture) -> None:
    partial = {k: v for k, v in checkpoint.items() if not k.startswith("layer4.2.conv3")}
    partial["neck.weight"] = torch.ones(3)
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    target = create_backbone("resnet50_ibn_a")
    before = target.state_dict()["conv1.weight"].clone()
    with pytest.raises(VreidError, match=r"partial\.pth.*layer4\.2\.conv3\.weight.*neck\.weight"):
        load_pretrained(target, path, strict=True)
    assert torch.equal(target.state_dict()["conv1.weight"], before)  # strict failure copies nothing
    with caplog.at_level(logging.WARNING):
        report = load_pretrained(target, path)
    assert report.missing == ["layer4.2.conv3.weight"] and report.unexpected == ["neck.weight"]
    assert "layer4.2.conv3.weight" in caplog.text and "neck.weight" in caplog.text
    assert_holds(target, {k: v for k, v in partial.items() if k != "neck.weight"})


def test_drop_prefixes_configurable(tmp_path: Path, checkpoint: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "with_fc.pth"
    torch.save(checkpoint, path)
    report = load_pretrained(create_backbone("resnet50_ibn_a"), path, drop_prefixes=())
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]


class Payload:
    """Not a tensor container: weights_only loading must refuse to build it."""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a checkpoint", "not a loadable"),
        (None, "not a loadable"),  # an arbitrary pickled object
        (torch.zeros(3), "expected a state_dict"),
        ({"epoch": 3}, "no tensors"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "garbage.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(Payload() if content is None else content, path)
    with pytest.raises(VreidError, match=message) as info:
        load_pretrained(create_backbone("resnet18", last_stride=2), path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pth"
    with pytest.raises(VreidError, match="not found") as info:
        create_backbone("resnet18", last_stride=2, pretrained_path=path)
    assert str(path) in str(info.value)


def test_torchvision_resnet_file_lines_up(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    backbone = create_backbone("resnet18", last_stride=2).eval()
    assert load_pretrained(backbone, path, strict=True).dropped == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = full.maxpool(full.relu(full.bn1(full.conv1(x))))
        for layer in (full.layer1, full.layer2, full.layer3, full.layer4):
            expected = layer(expected)
        torch.testing.assert_close(backbone(x), expected)


def test_torchvision_regnet_file_lines_up(tmp_path: Path) -> None:
    full = torchvision.models.regnet_x_400mf().eval()
    path = tmp_path / "regnet.pth"
    torch.save(full.state_dict(), path)
    backbone = create_backbone("regnet_x_400mf", last_stride=2, pretrained_path=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), full.trunk_output(full.stem(x)))


def test_legacy_densenet_keys_are_renamed(tmp_path: Path) -> None:
    # torchvision's original DenseNet files spell "denselayer1.norm1." as "denselayer1.norm.1."
    legacy = {}
    for key, value in torchvision.models.densenet121().state_dict().items():
        if ".denselayer" in key:
            for part in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, path)
    report = load_pretrained(create_backbone("densenet121", last_stride=2), path, strict=True)
    assert report.missing == [] and report.unexpected == []


def test_shared_mobilenet_v2_weights(caplog: pytest.LogCaptureFixture) -> None:
    if not MOBILENET_V2.is_file():
        pytest.skip(f"{MOBILENET_V2} is not present on this machine")
    file_state = torch.load(MOBILENET_V2, map_location="cpu", weights_only=True)
    with caplog.at_level(logging.WARNING):
        backbone = create_backbone("mobilenet_v2", last_stride=2, pretrained_path=MOBILENET_V2).eval()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    report = load_pretrained(create_backbone("mobilenet_v2"), MOBILENET_V2, strict=True)  # last_stride=1 too
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len([k for k in file_state if not k.startswith("classifier.")])

    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(file_state)
    reference.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference.features(x))
