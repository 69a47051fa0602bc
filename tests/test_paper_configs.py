"""The shipped AIC21 / VeRi configs say what the paper and its official code do (docs/method.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vreid.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MEMBERS = ("resnext101_ibn_a", "resnet50_ibn_a", "resnet152")


def cfg(name: str):
    return load_config(CONFIGS / name)


@pytest.mark.parametrize("folder", ["aic21", "aic21/submission"])
def test_members_carry_the_papers_post_processing(folder):
    for member in MEMBERS:
        t = cfg(f"{folder}/{member}.yml").TEST
        assert (t.RERANK.ENABLED, t.RERANK.K1, t.RERANK.K2, t.RERANK.LAMBDA) == (True, 50, 15, 0.5)
        assert tuple(t.FUSION.WEIGHTS) == (0.1, 0.1) and t.TRACK_RERANK and t.FLIP


def test_mixstyle_only_in_the_resnext_member_and_no_flip_for_orientation_and_camera():
    assert cfg("aic21/resnext101_ibn_a.yml").MODEL.MIXSTYLE.ENABLED
    assert cfg("aic21/resnext101_ibn_a.yml").DATALOADER.SAMPLER == "pk_domain"
    for name in ("resnet50_ibn_a", "resnet152", "orientation", "camera"):
        assert not cfg(f"aic21/{name}.yml").MODEL.MIXSTYLE.ENABLED, name
    for name in ("orientation", "camera"):
        assert not cfg(f"aic21/{name}.yml").TEST.FLIP, name


def test_training_ids_follow_the_paper():
    """Split-Test: 80 held out, the 360 others all train; submission: all 440; VeRi-776: all 576."""
    for member in (*MEMBERS, "camera"):
        split = cfg(f"aic21/{member}.yml").DATASETS
        assert (split.LOCAL_SPLIT.NUM_IDS, split.VAL_IDS) == (80, 0)
        full = cfg(f"aic21/submission/{member}.yml").DATASETS
        assert (full.LOCAL_SPLIT.NUM_IDS, full.VAL_IDS) == (0, 0)
    veri = cfg("veri776/resnext101_ibn_a.yml")
    assert (veri.DATASETS.LOCAL_SPLIT.NUM_IDS, veri.DATASETS.VAL_IDS) == (0, 0)
    assert not veri.TEST.RERANK.ENABLED and not veri.TEST.TRACK_RERANK  # Table 5: no post-processing


def test_paper_configs_expect_imagenet_weights_and_demo_opts_out():
    for member in (*MEMBERS, "orientation", "camera"):
        assert cfg(f"aic21/{member}.yml").MODEL.PRETRAIN
    assert not cfg("demo/city.yml").MODEL.PRETRAIN
    assert cfg("vehicle2cam/mobilenetv2.yml").MODEL.PRETRAIN_PATH == "../shared/weights/mobilenet_v2-b0353104.pth"
