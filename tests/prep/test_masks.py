"""Foreground masks: vehicle selection, the cache and its index, the folder source, local Mask R-CNN weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vreid.data.masks import MASK_INDEX, load_mask_index, mask_key, read_mask
from vreid.errors import DatasetError, VreidError
from vreid.prep.masks import VEHICLE_LABELS, FolderMaskSource, MaskRCNNSource, compute_masks, select_vehicle_mask

H, W = 12, 16
PERSON, CAR, BUS, TRUCK = 1, 3, 6, 8


def box_mask(box: tuple[int, int, int, int], prob: float = 0.9) -> torch.Tensor:
    x1, y1, x2, y2 = box
    m = torch.zeros(1, H, W)
    m[0, y1:y2, x1:x2] = prob
    return m


def detections(*dets: tuple[int, float, tuple[int, int, int, int]]) -> dict[str, torch.Tensor]:
    """A torchvision-style detector output from (label, score, box) triples, each box's mask filling its box."""
    if not dets:
        return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0),
                "masks": torch.zeros(0, 1, H, W)}
    return {
        "boxes": torch.tensor([d[2] for d in dets], dtype=torch.float32),
        "labels": torch.tensor([d[0] for d in dets]),
        "scores": torch.tensor([d[1] for d in dets]),
        "masks": torch.stack([box_mask(d[2]) for d in dets]),
    }


CENTRE = (4, 3, 12, 9)  # covers the centre (8, 6)
CORNER = (0, 0, 4, 4)
OTHER_CENTRE = (2, 2, 14, 10)


def test_vehicle_labels_match_torchvision_categories():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    categories = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # metadata only, no download
    assert {i: categories[i] for i in VEHICLE_LABELS} == VEHICLE_LABELS


def test_selection_ignores_non_vehicles_and_takes_the_best_vehicle():
    out = detections((PERSON, 0.99, OTHER_CENTRE), (CAR, 0.7, OTHER_CENTRE), (TRUCK, 0.9, CENTRE))
    mask = select_vehicle_mask(out)
    assert mask is not None and mask.dtype == bool and mask.shape == (H, W)
    assert mask.sum() == 8 * 6 and mask[3:9, 4:12].all()  # the truck's box, not the car's or the person's


def test_selection_prefers_the_vehicle_covering_the_centre():
    out = detections((CAR, 0.99, CORNER), (BUS, 0.6, CENTRE))
    assert select_vehicle_mask(out)[3:9, 4:12].all()
    assert select_vehicle_mask(detections((CAR, 0.99, CORNER)))[0:4, 0:4].all()  # no central one: best overall


def test_selection_thresholds():
    assert select_vehicle_mask(detections((CAR, 0.49, CENTRE))) is None  # score below 0.5
    assert select_vehicle_mask(detections((PERSON, 0.99, CENTRE))) is None
    assert select_vehicle_mask(detections()) is None
    out = detections((CAR, 0.9, CENTRE))
    out["masks"][0, 0, 3:9, 4:8] = 0.4  # left half of the box below the mask threshold
    mask = select_vehicle_mask(out)
    assert mask[3:9, 8:12].all() and not mask[:, :8].any()
    out["masks"][:] = 0.3  # nothing above 0.5: no mask at all
    assert select_vehicle_mask(out) is None
    assert select_vehicle_mask(detections((CAR, 0.9, CORNER)), min_area=0.2) is None  # 16 px of 192


class FakeDetector:
    """Returns the canned output of each image by its mean red value; counts the images it saw."""

    def __init__(self, by_red: dict[int, dict[str, torch.Tensor]]):
        self.by_red, self.seen = by_red, 0

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.seen += len(images)
        return [self.by_red[round(float(img[0].mean()) * 255)] for img in images]


def write_png(path: Path, red: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (red, 0, 0)).save(path)  # PNG: lossless, so the fake can recognise it
    return path


def test_compute_masks_keys_by_relative_path_and_caches(tmp_path):
    root = tmp_path / "data"
    real = write_png(root / "real" / "000001.png", 10)
    synth = write_png(root / "synth" / "000001.png", 20)  # same basename, other dataset (docs/method.md)
    empty = write_png(root / "real" / "000002.png", 30)
    fake = FakeDetector({10: detections((CAR, 0.9, CENTRE)), 20: detections((CAR, 0.9, CORNER)),
                         30: detections((PERSON, 0.9, CENTRE))})
    cache = root / "masks"
    result = compute_masks([real, synth, empty, real], cache, MaskRCNNSource(detector=fake), batch_size=2,
                           progress=False)
    assert fake.seen == 3
    assert result == {real: cache / "real/000001.png", synth: cache / "synth/000001.png"}
    assert read_mask(result[real])[3:9, 4:12].all() and read_mask(result[synth])[0:4, 0:4].all()
    assert not read_mask(result[real])[0, 0] and not read_mask(result[synth])[6, 8]
    assert set(np.unique(np.asarray(Image.open(result[real])))) == {0, 255}
    index = load_mask_index(cache)
    assert index == {"real/000001.png": "real/000001.png", "synth/000001.png": "synth/000001.png",
                     "real/000002.png": None}
    assert json.loads((cache / MASK_INDEX).read_text()) == index
    again = compute_masks([real, synth, empty], cache, MaskRCNNSource(detector=fake), progress=False)
    assert fake.seen == 3 and again == result  # nothing recomputed, not even the image without a vehicle
    (cache / "real/000001.png").unlink()  # a lost mask file is recomputed
    compute_masks([real], cache, MaskRCNNSource(detector=fake), progress=False)
    assert fake.seen == 4


def test_compute_masks_rejects_bad_layouts(tmp_path):
    root = tmp_path / "data"
    a, b = write_png(root / "a.png", 10), write_png(root / "a.jpg", 10)
    fake = FakeDetector({10: detections((CAR, 0.9, CENTRE))})
    with pytest.raises(DatasetError, match="share the mask file"):
        compute_masks([a, b], root / "masks", MaskRCNNSource(detector=fake), progress=False)
    with pytest.raises(ValueError, match="not under the mask root"):
        compute_masks([a], root / "masks", MaskRCNNSource(detector=fake), root=tmp_path / "elsewhere", progress=False)
    assert mask_key(root / "x" / "y.jpg", root) == "x/y.jpg"
    with pytest.raises(ValueError, match="exactly one"):
        MaskRCNNSource()
    with pytest.raises(DatasetError, match="mask index not found"):
        load_mask_index(tmp_path / "none")


def test_folder_source(tmp_path):
    root = tmp_path / "data"
    images = [write_png(root / "cam1" / f"{i}.jpg", 10) for i in range(4)]
    user = tmp_path / "user_masks" / "cam1"
    user.mkdir(parents=True)
    m = np.zeros((H, W), np.uint8)
    m[2:10, 3:13] = 255
    Image.fromarray(m).save(user / "0.png")
    Image.fromarray((m > 0).astype(np.uint8)).save(user / "1.png")  # a 0/1 mask
    Image.fromarray(np.zeros((H, W), np.uint8)).save(user / "2.png")  # empty: no vehicle; 3.png missing
    result = compute_masks(images, root / "masks", FolderMaskSource(tmp_path / "user_masks"), progress=False)
    assert sorted(result) == images[:2]
    for path in result.values():
        assert (read_mask(path) == (m > 0)).all()
    index = load_mask_index(root / "masks")
    assert index["cam1/2.jpg"] is None and index["cam1/3.jpg"] is None
    write_png(root / "cam1" / "4.jpg", 10)
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(user / "4.png")
    with pytest.raises(DatasetError, match="recompute"):
        compute_masks([root / "cam1" / "4.jpg"], root / "masks", FolderMaskSource(tmp_path / "user_masks"),
                      progress=False)


def test_missing_weights_file_is_an_error_not_a_download(tmp_path):
    source = MaskRCNNSource(tmp_path / "nope.pth")
    with pytest.raises(VreidError, match="never downloaded"):
        source.predict([write_png(tmp_path / "a.png", 10)], ["a.png"])


@pytest.mark.slow
def test_real_maskrcnn_from_a_local_state_dict(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    small = {"min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 10,
             "box_detections_per_img": 5}
    state = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **small).state_dict()
    # torchvision's published file comes from frozen BN layers: no num_batches_tracked counters
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "w.pth")
    image = tmp_path / "data" / "img.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    source = MaskRCNNSource(tmp_path / "w.pth", score_threshold=0.0, **small)
    (mask,) = source.predict([image], ["img.png"])
    assert mask is None or (mask.dtype == bool and mask.shape == (64, 64))
    result = compute_masks([image], tmp_path / "data" / "masks", source, progress=False)
    assert list(load_mask_index(tmp_path / "data" / "masks")) == ["img.png"]
    assert set(result) <= {image}
    torch.save({"backbone.body.conv1.weight": state["backbone.body.conv1.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(VreidError, match="missing keys"):
        MaskRCNNSource(tmp_path / "bad.pth", **small).predict([image], ["img.png"])


def test_a_mask_that_is_not_a_png_is_refused_without_other_decoders(tmp_path):
    """Masks are read with the PNG decoder alone: a GIF (a format Pillow would otherwise open) is unreadable."""
    path = tmp_path / "m.png"
    Image.new("L", (4, 3), 255).save(path, "GIF")
    with pytest.raises(DatasetError, match="unreadable mask"):
        read_mask(path)
    Image.new("L", (4, 3), 255).save(path, "PNG")
    assert read_mask(path).all()
