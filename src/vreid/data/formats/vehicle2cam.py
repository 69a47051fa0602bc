"""vehicle-2cam: real two-camera vehicle crops (the public "Vehicle-Re-ID-Dataset").

Layout::

    train.txt val.txt test.txt     bare file names, one per line (any of them may be absent)
    images/train/                  files of train.txt and val.txt
    images/test/                   files of test.txt

File name ``{type}_{NNNN}_cam{C}.jpg``: identity ``{type}_{NNNN}``, camera C, type an attribute.
Training always uses ``train.txt``. The test protocol takes one list (``val`` or ``test``): its
camera-1 images are the queries and its camera-2 images the gallery (one true match per query).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from vreid.data.formats.common import check_images_exist, find_root, read_name_list
from vreid.data.records import GALLERY, QUERY, TRAIN, Dataset, ImageRecord
from vreid.errors import DatasetError

log = logging.getLogger(__name__)

LIST_FILES = {"train": "train", "val": "train", "test": "test"}  # list name -> image subfolder
QUERY_CAMERA, GALLERY_CAMERA = "1", "2"
_NAME = re.compile(r"^(?P<type>[A-Za-z]+)_(?P<num>\d+)_cam(?P<cam>\d+)\.(?:jpe?g|png)$", re.I)


def read_list(base: Path, list_name: str) -> list[ImageRecord]:
    """Records of one list file, labelled from the file names."""
    list_path = base / f"{list_name}.txt"
    folder = base / "images" / LIST_FILES[list_name]
    names = read_name_list(list_path, f"{list_name} list")
    check_images_exist(names, folder, list_path)
    records = []
    for lineno, name in names:
        m = _NAME.match(name)
        if m is None:
            raise DatasetError(f"file name {name!r} does not follow {{type}}_{{NNNN}}_cam{{C}}.jpg", list_path, lineno)
        records.append(ImageRecord(
            path=folder / name,
            vehicle_id=f"{m['type'].lower()}_{m['num']}",
            camera_id=m["cam"],
            attrs={"type": m["type"].lower()},
        ))
    return records


def read(root: str | Path, test_split: str = "", seed: int = 0) -> Dataset:
    """Read every list present; query/gallery come from ``test_split`` ("" = test if present, else val)."""
    base = find_root(root, ("vehicle-2cam", "Vehicle-Re-ID-Dataset"), "images")
    present = {name: (base / f"{name}.txt").is_file() for name in LIST_FILES}
    log.info("vehicle2cam at %s: lists present: %s; absent: %s", base,
             [n for n, p in present.items() if p] or "none", [n for n, p in present.items() if not p] or "none")
    if not present["train"]:
        raise DatasetError("missing train list (train.txt): training always uses it", path=base / "train.txt")
    if test_split and test_split not in ("val", "test"):
        raise ValueError(f"test_split: vehicle2cam takes 'val' or 'test' (a list file), got {test_split!r}")
    if test_split and not present[test_split]:
        raise DatasetError(f"missing {test_split} list, asked for by test_split={test_split!r}",
                           path=base / f"{test_split}.txt")
    chosen = test_split or next((n for n in ("test", "val") if present[n]), "")

    lists = {name: read_list(base, name) for name, ok in present.items() if ok}
    splits: dict[str, list[ImageRecord]] = {TRAIN: lists["train"]}
    for name in ("val", "test"):
        if name in lists:
            splits[name] = lists[name]
    if chosen:
        splits[QUERY] = [r for r in lists[chosen] if r.camera_id == QUERY_CAMERA]
        splits[GALLERY] = [r for r in lists[chosen] if r.camera_id == GALLERY_CAMERA]
    # A name can sit in two lists only by mistake: training on test images would inflate every figure.
    seen: dict[str, str] = {}
    for name, records in lists.items():
        for r in records:
            if r.name in seen:
                raise DatasetError(f"image {r.name!r} is in both {seen[r.name]}.txt and {name}.txt",
                                   path=base / f"{name}.txt")
            seen[r.name] = name
    return Dataset("vehicle2cam", base, splits, meta={"lists_present": present, "test_list": chosen or None})
