"""Background swap: composition, hole filling, probability, masks, reproducibility, never its own background."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vreid.data.background_swap import BackgroundSwap, compose, fill_background, soft_mask
from vreid.data.masks import load_mask_index
from vreid.data.records import ImageRecord
from vreid.errors import DatasetError
from vreid.prep.masks import FolderMaskSource, compute_masks

H, W = 12, 16
BOX = (slice(3, 9), slice(4, 12))  # the vehicle of every test image


def make_image(vehicle: tuple[int, int, int], background: tuple[int, int, int], size=(W, H)) -> Image.Image:
    a = np.empty((size[1], size[0], 3), np.uint8)
    a[:] = background
    a[3:9, 4:12] = vehicle
    return Image.fromarray(a)


def make_set(tmp_path: Path, colours, masked=None, sizes=None) -> tuple[list[Path], Path]:
    """Images ``<root>/train/<i>.png`` with (vehicle, background) colours; masks for ``masked``; the cache."""
    root = tmp_path / "data"
    user = tmp_path / "user_masks" / "train"
    user.mkdir(parents=True)
    paths = []
    for i, (vehicle, background) in enumerate(colours):
        size = sizes[i] if sizes else (W, H)
        path = root / "train" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_image(vehicle, background, size).save(path)
        paths.append(path)
        if masked is None or i in masked:
            m = np.zeros((size[1], size[0]), np.uint8)
            m[BOX] = 255
            Image.fromarray(m).save(user / f"{i}.png")
    cache = root / "masks"
    compute_masks(paths, cache, FolderMaskSource(tmp_path / "user_masks"), progress=False)
    return paths, cache


RED, GREEN, BLUE, GREY, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (250, 250, 250)


def swap_of(paths, cache, **kwargs) -> BackgroundSwap:
    return BackgroundSwap(paths, load_mask_index(cache), cache, **kwargs)


def test_compose_formula():
    fg = np.full((2, 3, 3), 200, np.uint8)
    bg = np.full((2, 3, 3), 100, np.uint8)
    m = np.array([[1.0, 0.0, 0.25], [0.5, 1.0, 0.0]], np.float32)
    out = compose(fg, bg, m)
    assert out[..., 0].tolist() == [[200, 100, 125], [150, 200, 100]]
    with pytest.raises(ValueError, match="shapes"):
        compose(fg, bg[:1], m)


def test_soft_mask_keeps_the_inside_exact_and_feathers_outwards():
    mask = np.zeros((9, 9), bool)
    mask[3:6, 3:6] = True
    soft = soft_mask(mask, feather=1)
    assert (soft[mask] == 1.0).all() and 0 < soft[2, 4] < 1 and soft[0, 0] == 0
    assert (soft_mask(mask, feather=0) == mask).all()


def test_fill_leaves_no_trace_of_the_vehicle():
    img = np.asarray(make_image(RED, GREY))
    tight = np.zeros((H, W), bool)
    tight[4:8, 5:11] = True  # a mask one pixel inside the vehicle: the dilation must cover the red rim
    for fill in ("blur", "mean"):
        out = fill_background(img, tight, fill)
        assert np.abs(out.astype(int) - 128).max() <= 2, fill
    gradient = np.asarray(make_image(RED, GREY)).copy()
    gradient[..., 2] = np.linspace(0, 250, W).astype(np.uint8)[None]
    gradient[BOX] = RED
    out = fill_background(gradient, tight, "blur")
    assert (out[BOX][..., 0] == 128).all() and (np.diff(out[6, :, 2].astype(int)) >= 0).all()  # continues the ramp
    assert (out[0] == gradient[0]).all()  # known pixels untouched
    with pytest.raises(ValueError, match="fill"):
        fill_background(img, tight, "inpaint")


def test_swap_puts_the_vehicle_on_the_other_filled_background(tmp_path):
    paths, cache = make_set(tmp_path, [(RED, BLUE), (GREEN, GREY)])
    swap = swap_of(paths, cache, p=1.0, feather=0)
    image = Image.open(paths[0]).convert("RGB")
    out = np.asarray(swap(image, paths[0]))
    assert (out[BOX] == RED).all()  # the vehicle is pasted exactly
    outside = np.ones((H, W), bool)
    outside[BOX] = False
    assert np.abs(out[outside].astype(int) - 128).max() <= 2  # the other image's filled background, no green
    # feathered: still exact inside the vehicle
    out = np.asarray(swap_of(paths, cache, p=1.0, feather=2)(image, paths[0]))
    assert (out[BOX] == RED).all()


def test_background_is_resized_to_the_image_not_the_vehicle(tmp_path):
    paths, cache = make_set(tmp_path, [(RED, BLUE), (GREEN, GREY)], sizes=[(W, H), (2 * W, 3 * H)])
    image = Image.open(paths[0]).convert("RGB")
    out = swap_of(paths, cache, p=1.0, fill="mean")(image, paths[0])
    assert out.size == image.size and (np.asarray(out)[BOX] == RED).all()


def test_probability_and_images_without_masks(tmp_path):
    paths, cache = make_set(tmp_path, [(RED, BLUE), (GREEN, GREY), (BLUE, WHITE)], masked={0, 1})
    image = Image.open(paths[0]).convert("RGB")
    never = swap_of(paths, cache, p=0.0)
    assert all(never(image, paths[0]) is image for _ in range(5))
    always = swap_of(paths, cache, p=1.0)
    for seed in range(10):
        torch.manual_seed(seed)
        assert not np.array_equal(np.asarray(always(image, paths[0])), np.asarray(image))
    unmasked = Image.open(paths[2]).convert("RGB")
    assert always(unmasked, paths[2]) is unmasked
    assert always(image, Path("/elsewhere/0.png")) is image  # outside the mask root: no mask
    half = swap_of(paths, cache, p=0.5)
    torch.manual_seed(0)
    swapped = sum(half(image, paths[0]) is not image for _ in range(200))
    assert 70 < swapped < 130


def test_reproducible_and_never_its_own_background(tmp_path):
    backgrounds = [BLUE, GREY, WHITE, (0, 0, 60), (90, 90, 0)]
    paths, cache = make_set(tmp_path, [(RED, bg) for bg in backgrounds])
    swap = swap_of(paths, cache, p=1.0, cache_size=2)
    image = Image.open(paths[0]).convert("RGB")

    def background_of(seed: int) -> tuple[int, ...]:
        torch.manual_seed(seed)
        return tuple(np.asarray(swap(image, paths[0]))[0, 0])

    picked = [background_of(s) for s in range(40)]
    assert picked == [background_of(s) for s in range(40)]  # same seed, same output (LRU hits and misses alike)
    assert BLUE not in picked  # its own background is never chosen
    assert set(picked) == set(backgrounds[1:])
    records = [ImageRecord(path=p, vehicle_id="1", camera_id="c1") for p in paths[:1]]
    alone = BackgroundSwap(records, load_mask_index(cache), cache, p=1.0)
    assert alone.num_backgrounds == 1 and alone(image, paths[0]) is image  # no other background: unchanged
    clone = pickle.loads(pickle.dumps(swap))  # loader workers may be spawned
    torch.manual_seed(3)
    assert tuple(np.asarray(clone(image, paths[0]))[0, 0]) == background_of(3)


def test_arguments_are_validated(tmp_path):
    paths, cache = make_set(tmp_path, [(RED, BLUE)])
    index = load_mask_index(cache)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p must be"):
            BackgroundSwap(paths, index, cache, p=p)
    with pytest.raises(ValueError, match="fill must be one of"):
        BackgroundSwap(paths, index, cache, fill="inpaint")
    with pytest.raises(ValueError, match="feather"):
        BackgroundSwap(paths, index, cache, feather=-1)


def test_stale_mask_is_an_error(tmp_path):
    paths, cache = make_set(tmp_path, [(RED, BLUE), (GREEN, GREY)])
    swap = BackgroundSwap.from_cache(paths, cache, p=1.0)
    with pytest.raises(DatasetError, match="recompute"):
        swap(make_image(RED, BLUE, size=(W + 2, H)), paths[0])
