"""Loading a trained model for testing: independent of the ImageNet file used at training time."""

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
