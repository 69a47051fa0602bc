"""Training / test transforms: normalisation, switching steps off, erasing fill, RandomPatch, AugMix, seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from vreid.config import get_defaults
from vreid.data.transforms import (
    AUGMIX_OPS,
    AugMix,
    RandomErasing,
    RandomPatch,
    RandomResolution,
    build_test_transform,
    build_train_transform,
)

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])
SIZE = (32, 24)  # (height, width)

PROB_KEYS = {
    "FLIP_PROB": v2.RandomHorizontalFlip,
    "RANDOM_PATCH_PROB": RandomPatch,
    "COLOR_JITTER.PROB": v2.ColorJitter,
    "AUGMIX_PROB": AugMix,
    "BLUR_PROB": v2.GaussianBlur,
    "ERASING.PROB": RandomErasing,
}


def make_cfg(**input_overrides):
    """Defaults with a small SIZE_TRAIN; keys like ``ERASING__PROB`` set nested INPUT keys."""
    cfg = get_defaults()
    cfg.INPUT.SIZE_TRAIN = SIZE
    cfg.INPUT.SIZE_TEST = SIZE
    for key, value in input_overrides.items():
        *parents, leaf = key.split("__")
        node = cfg.INPUT
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def all_off(**overrides):
    base = {"FLIP_PROB": 0.0, "PADDING": 0, "RANDOM_PATCH_PROB": 0.0, "COLOR_JITTER__PROB": 0.0,
            "AUGMIX_PROB": 0.0, "BLUR_PROB": 0.0, "ERASING__PROB": 0.0}
    return make_cfg(**{**base, **overrides})


def textured(seed: int = 0, size: tuple[int, int] = (40, 50), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def step_types(transform) -> list[type]:
    """Types of the pipeline's steps, looking inside RandomApply."""
    out = []
    for t in transform.transforms:
        out.extend(type(inner) for inner in t.transforms) if isinstance(t, v2.RandomApply) else out.append(type(t))
    return out


def test_constant_grey_maps_exactly_to_normalised_value():
    grey = Image.new("RGB", (50, 40), (100, 100, 100))
    expected = ((torch.tensor(100.0) / 255 - MEAN) / STD)[:, None, None].expand(3, *SIZE)
    train = build_train_transform(all_off())
    assert step_types(train) == [v2.Resize, v2.ToImage, v2.ToDtype, v2.Normalize]
    for transform in (train, build_test_transform(make_cfg())):
        out = transform(grey)
        assert out.shape == (3, *SIZE) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_test_transform_resizes_to_size_test_without_randomness():
    cfg = make_cfg()
    cfg.INPUT.SIZE_TEST = (20, 10)
    transform = build_test_transform(cfg)
    img = textured()
    seed_all(0)
    a = transform(img)
    seed_all(1)
    assert a.shape == (3, 20, 10)
    assert torch.equal(a, transform(img))


def test_default_pipeline_has_every_step_in_the_official_order():
    types = step_types(build_train_transform(make_cfg()))
    assert types == [v2.Resize, v2.RandomHorizontalFlip, v2.RandomCrop, RandomPatch, v2.ColorJitter, AugMix,
                     v2.GaussianBlur, v2.ToImage, v2.ToDtype, v2.Normalize, RandomErasing]


@pytest.mark.parametrize("key", [*PROB_KEYS, "PADDING"])
def test_probability_zero_leaves_the_step_out(key):
    full = step_types(build_train_transform(make_cfg()))
    without = step_types(build_train_transform(make_cfg(**{key.replace(".", "__"): 0})))
    removed = v2.RandomCrop if key == "PADDING" else PROB_KEYS[key]
    assert removed in full and removed not in without
    assert without == [t for t in full if t is not removed]


@pytest.mark.parametrize("key", list(PROB_KEYS))
def test_each_step_alone_changes_the_image(key):
    img = textured(1)
    seed_all(0)
    baseline = build_train_transform(all_off())(img)
    transform = build_train_transform(all_off(**{key.replace(".", "__"): 1.0}))
    if key == "RANDOM_PATCH_PROB":
        for i in range(99):  # fill the pool up to the 100 patches it needs before pasting
            transform(textured(100 + i))
    outs = []
    for seed in range(5):
        seed_all(seed)
        outs.append(transform(img))
    assert any(not torch.equal(o, baseline) for o in outs)
    if key == "FLIP_PROB":
        assert all(torch.equal(o, baseline.flip(-1)) for o in outs)


def test_pad_and_crop_shifts_content_with_zero_fill():
    grey = Image.new("RGB", (50, 40), (200, 200, 200))
    transform = build_train_transform(all_off(PADDING=10))
    black = (-MEAN / STD)[:, None]
    shifted = 0
    for seed in range(10):
        seed_all(seed)
        out = transform(grey)
        assert out.shape == (3, *SIZE)
        border = (out - black[..., None]).abs().amax(0) < 1e-5  # pixels that came from the zero padding
        shifted += bool(border.any())
    assert shifted > 0


@pytest.mark.parametrize("value", ["zero", "random"])
def test_erasing_fill_is_zero_or_noise_never_the_imagenet_mean(value):
    grey = Image.new("RGB", (50, 40), (90, 140, 200))
    baseline = build_train_transform(all_off())(grey)
    transform = build_train_transform(all_off(ERASING__PROB=1.0, ERASING__VALUE=value))
    for seed in range(10):
        seed_all(seed)
        out = transform(grey)
        erased = (out != baseline).any(0)
        assert erased.any()
        region = out[:, erased]  # (3, n)
        for c in range(3):
            assert not torch.isclose(region[c], MEAN[c]).any(), "filled with the ImageNet mean constant"
        if value == "zero":
            assert torch.equal(region, torch.zeros_like(region))
        else:
            assert region.unique().numel() > region.numel() // 2  # per-pixel noise, not a constant
    seed_all(0)
    big = build_train_transform(all_off(ERASING__PROB=1.0, ERASING__VALUE="random", ERASING__MAX_AREA=0.9))
    outs = [big(grey) for _ in range(5)]
    noise = torch.cat([o[:, (o != baseline).any(0)].flatten() for o in outs])
    assert abs(noise.mean().item()) < 0.2 and 0.8 < noise.std().item() < 1.2  # N(0, 1) after normalisation


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="INPUT.ERASING.VALUE"):
        build_train_transform(make_cfg(ERASING__VALUE="mean"))
    with pytest.raises(ValueError, match="INPUT.BLUR_PROB"):
        build_train_transform(make_cfg(BLUR_PROB=1.5))
    with pytest.raises(ValueError, match="INPUT.SIZE_TRAIN"):
        build_train_transform(make_cfg(SIZE_TRAIN=(32,)))


def test_random_patch_pastes_only_once_the_pool_has_100_patches():
    seed_all(0)
    patcher = RandomPatch(p=1.0)
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    for i in range(99):
        out = patcher(red)
        assert len(patcher.pool) == i + 1
        assert np.array_equal(np.asarray(out), np.asarray(red))
    blue = Image.new("RGB", (40, 30), (0, 0, 255))
    pasted = 0
    for _ in range(10):
        out = np.asarray(patcher(blue))
        assert out.shape == (30, 40, 3)
        pasted += bool((out != (0, 0, 255)).any())  # red (or rotation-corner black) on the blue image
    assert pasted >= 8  # at most one in ~100 pooled patches is blue
    assert np.array_equal(np.asarray(blue), np.full((30, 40, 3), (0, 0, 255), dtype=np.uint8))  # input intact


def test_random_patch_pool_is_a_bounded_fifo_with_patches_of_1_to_16_percent():
    seed_all(1)
    patcher = RandomPatch(p=0.0, pool_size=20)
    for i in range(50):
        patcher(textured(i, size=(60, 50)))
    assert len(patcher.pool) == 20
    for patch in patcher.pool:
        frac = patch.width * patch.height / (60 * 50)
        assert 0.005 < frac < 0.18
        assert 0.05 < patch.height / patch.width < 20


def test_random_patch_is_reproducible_for_the_same_stream_and_seeds():
    def run():
        patcher = RandomPatch(p=0.5, min_pool=5)
        outs = []
        for i in range(20):
            seed_all(1000 + i)
            outs.append(np.asarray(patcher(textured(i))))
        return outs

    assert all(np.array_equal(a, b) for a, b in zip(run(), run(), strict=True))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_augmix_keeps_size_and_mode_and_m0_is_identity(mode, monkeypatch):
    img = textured(2, size=(37, 23), mode=mode)
    aug = AugMix(p=1.0)
    for seed in range(5):
        seed_all(seed)
        out = aug(img)
        assert isinstance(out, Image.Image) and out.size == img.size and out.mode == mode
        assert np.array_equal(np.asarray(aug.augment_and_mix(img, m=0.0)), np.asarray(img))
    monkeypatch.setattr(AugMix, "sample_mixing", lambda self: ([1 / 3] * 3, 0.0))
    assert np.array_equal(np.asarray(aug(img)), np.asarray(img))
    assert AugMix(p=0.0)(img) is img


def test_augmix_mixes_chains_when_m_is_one():
    img = textured(3)
    aug = AugMix(p=1.0)
    changed = 0
    for seed in range(10):
        seed_all(seed)
        changed += not np.array_equal(np.asarray(aug.augment_and_mix(img, m=1.0)), np.asarray(img))
    assert changed >= 5


def test_augmix_ops_have_severity_1_magnitudes():
    img = textured(4, size=(300, 40))
    arr = np.asarray(img)
    for seed in range(10):
        seed_all(seed)
        for name, op in AUGMIX_OPS.items():
            out = op(img, 1.0)
            assert out.size == img.size and out.mode == img.mode, name
        assert (np.asarray(AUGMIX_OPS["posterize"](img, 1.0)) % 16 == 0).all()  # 4 bits kept
        solar = np.asarray(AUGMIX_OPS["solarize"](img, 1.0))
        assert np.array_equal(solar[arr < 231], arr[arr < 231])  # threshold in 231..254
    line = np.zeros((40, 300), dtype=np.uint8)
    line[:, 150] = 255
    for seed in range(20):
        seed_all(seed)
        moved = np.asarray(AUGMIX_OPS["translate_x"](Image.fromarray(line), 1.0))
        cols = np.flatnonzero(moved.max(0) > 0)
        assert cols.size and np.abs(cols - 150).max() <= 10  # at most width / 30 pixels


def test_train_transform_is_reproducible_under_per_sample_seeding():
    cfg = make_cfg(FLIP_PROB=0.5, RANDOM_PATCH_PROB=1.0, COLOR_JITTER__PROB=1.0, AUGMIX_PROB=1.0, BLUR_PROB=1.0,
                   ERASING__PROB=1.0)
    images = [textured(i) for i in range(3)]

    def run(seeds):
        transform = build_train_transform(cfg)  # fresh RandomPatch pool, as in a fresh worker
        outs = []
        for img, s in zip(images, seeds, strict=True):
            seed_all(s)
            outs.append(transform(img))
        return outs

    a, b, c = run([5, 6, 7]), run([5, 6, 7]), run([8, 9, 10])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(not torch.equal(x, y) for x, y in zip(a, c, strict=True))
    # The default pipeline, reused across calls, also depends only on the seed.
    transform = build_train_transform(make_cfg())
    seed_all(3)
    first = transform(images[0])
    transform(images[1])
    seed_all(3)
    assert torch.equal(first, transform(images[0]))


def test_pad_resize_keeps_the_aspect_and_fills_with_the_mean():
    """A 40 x 20 (w x h) red image into 32 x 24 (h x w): scale min(24/40, 32/20) = 0.6 -> 24 x 12, centred with
    10 rows of the mean colour above and below, which normalisation maps to exactly 0."""
    cfg = make_cfg(RESIZE_MODE="pad")
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    out = build_test_transform(cfg)(img)
    assert out.shape == (3, 32, 24)
    torch.testing.assert_close(out[:, :10], torch.zeros(3, 10, 24), atol=0.01, rtol=0)
    torch.testing.assert_close(out[:, 22:], torch.zeros(3, 10, 24), atol=0.01, rtol=0)
    red = (torch.tensor([1.0, 0.0, 0.0]) - MEAN) / STD
    torch.testing.assert_close(out[:, 12:20].mean((1, 2)), red, atol=0.02, rtol=0)


def test_stretch_is_the_default_and_fills_the_whole_input():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    out = build_test_transform(make_cfg())(img)
    red = (torch.tensor([1.0, 0.0, 0.0]) - MEAN) / STD
    torch.testing.assert_close(out.mean((1, 2)), red, atol=1e-4, rtol=0)


def test_random_resolution_downscales_sides_within_the_range():
    torch.manual_seed(0)
    step = RandomResolution(p=1.0, min_scale=0.5)
    img = Image.new("RGB", (100, 60))
    sizes = [step(img).size for _ in range(200)]
    widths = [w for w, _ in sizes]
    assert min(widths) >= 50 and max(widths) <= 100
    assert max(widths) - min(widths) > 30  # the factor is drawn, not fixed
    assert all(abs(h - 0.6 * w) <= 1 for w, h in sizes)  # one factor for both sides: the aspect is kept
    assert RandomResolution(p=0.0, min_scale=0.5)(img) is img


def test_random_resolution_is_in_the_pipeline_only_when_asked_and_checked():
    steps = build_train_transform(make_cfg()).transforms
    assert not any(isinstance(s, RandomResolution) for s in steps)
    steps = build_train_transform(make_cfg(RANDOM_RESOLUTION__PROB=0.5)).transforms
    assert isinstance(steps[0], RandomResolution)
    with pytest.raises(ValueError, match="INPUT.RANDOM_RESOLUTION.MIN_SCALE"):
        build_train_transform(make_cfg(RANDOM_RESOLUTION__PROB=0.5, RANDOM_RESOLUTION__MIN_SCALE=0.0))
    with pytest.raises(ValueError, match="INPUT.RESIZE_MODE"):
        build_test_transform(make_cfg(RESIZE_MODE="crop"))


def test_erasing_geometry_is_the_official_one():
    """Aspect h/w uniform in [0.3, 1/0.3] (mean 1.82; log-uniform would give 1.26), areas in [0.02, 0.4] x HW."""
    erasing = RandomErasing(p=1.0, max_area=0.4)
    torch.manual_seed(0)
    boxes = [erasing.sample_box(1000, 1000) for _ in range(2000)]
    assert all(b is not None for b in boxes)
    aspects = np.array([h / w for _, _, h, w in boxes])
    areas = np.array([h * w for _, _, h, w in boxes]) / 1e6
    assert abs(aspects.mean() - (0.3 + 1 / 0.3) / 2) < 0.08
    assert abs(np.median(aspects) - (0.3 + 1 / 0.3) / 2) < 0.15  # log-uniform's median would be 1.0
    assert 0.019 < areas.min() and areas.max() < 0.41 and abs(areas.mean() - 0.21) < 0.02
    assert all(0 <= t and t + h <= 1000 and 0 <= left and left + w <= 1000 for t, left, h, w in boxes)
    # A rectangle that can never fit: all 100 tries fail, the image is left alone
    assert RandomErasing(p=1.0, min_area=0.99, max_area=1.0, min_aspect=1.0).sample_box(10, 10) is None
