"""AI City Challenge 2021 Track 2: the real CityFlowV2-ReID set and the synthetic VehicleX set.

Real set (``AIC21_Track2_ReID/``)::

    image_train/ image_query/ image_test/       6-digit names, 000001.jpg ...
    name_train.txt name_query.txt name_test.txt one image name per line
    train_label.xml                             <Item imageName vehicleID cameraID/>
    query_label.xml test_label.xml              optional, imageName + cameraID only
    train_track.txt test_track.txt              optional, one tracklet per line, all tokens image names

Query and gallery carry no identities in the release: their records have ``vehicle_id=None`` so
evaluation refuses them and submission accepts them. The built-in synthetic city also writes
``vreid_query_label.xml`` / ``vreid_test_label.xml`` (the real set has no such files) with the
identities, which this reader uses when present.

Synthetic set (``AIC21_Track2_ReID_Simulation/``)::

    sys_image_train/                            {vehicleID}_c{camera}_{n}.jpg
    train_label.xml                             imageName vehicleID cameraID orientation colorID typeID ...

A translated copy of ``sys_image_train`` (UNIT, ``vreid prep translate apply``; the official code reads
one from ``output_UNIT/``) is used instead when ``image_dir`` names it (``DATASETS.SYNTHETIC_IMAGES``):
same file names, same labels, other pixels.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from vreid.data.formats.common import (
    XmlItem,
    check_images_exist,
    find_root,
    labels_by_name,
    list_images,
    parse_float,
    read_name_list,
    read_tracks,
    require_attr,
)
from vreid.data.records import GALLERY, QUERY, SYNTHETIC, TRAIN, Dataset, ImageRecord
from vreid.errors import DatasetError

log = logging.getLogger(__name__)

REAL_FOLDER = "AIC21_Track2_ReID"
SYNTHETIC_FOLDER = "AIC21_Track2_ReID_Simulation"
# Files the real release lacks: identities of query/gallery, written by `vreid synth`.
EVAL_LABEL_FILES = {QUERY: "vreid_query_label.xml", GALLERY: "vreid_test_label.xml"}
_CAMERA_LABEL_FILES = {QUERY: "query_label.xml", GALLERY: "test_label.xml"}
_SPLIT_FILES = {TRAIN: ("name_train.txt", "image_train"), QUERY: ("name_query.txt", "image_query"),
                GALLERY: ("name_test.txt", "image_test")}
_TRACK_FILES = {TRAIN: "train_track.txt", GALLERY: "test_track.txt"}
_SYN_NAME = re.compile(r"^(?P<vid>\d+)_c(?P<cam>\d+)")
_KNOWN_ATTRS = {"imageName", "vehicleID", "cameraID", "orientation"}


def _attrs(item: XmlItem) -> dict[str, str]:
    return {k: v for k, v in item.attrs.items() if k not in _KNOWN_ATTRS}


def read(root: str | Path, test_split: str = "", seed: int = 0) -> Dataset:
    """Read the real AIC21 ReID set (train labelled; query/gallery labelled only if vreid wrote them)."""
    if test_split:
        raise ValueError(f"test_split: aic21 has one test set, leave it empty (got {test_split!r})")
    base = find_root(root, (REAL_FOLDER, f"{REAL_FOLDER}/{REAL_FOLDER}"), "name_train.txt")
    present = {}
    splits: dict[str, list[ImageRecord]] = {}
    for split, (list_name, folder_name) in _SPLIT_FILES.items():
        list_path, folder = base / list_name, base / folder_name
        if split != TRAIN and not list_path.exists():
            present[list_name] = False
            continue
        present[list_name] = True
        names = read_name_list(list_path)
        check_images_exist(names, folder, list_path)

        label_path = base / ("train_label.xml" if split == TRAIN else EVAL_LABEL_FILES[split])
        labelled = split == TRAIN or label_path.exists()
        if not labelled:
            label_path = base / _CAMERA_LABEL_FILES[split]
        labels = labels_by_name(label_path) if label_path.exists() or split == TRAIN else {}
        present[label_path.name] = bool(labels)

        tracks: dict[str, str] = {}
        if split in _TRACK_FILES and (base / _TRACK_FILES[split]).exists():
            tracks = read_tracks(base / _TRACK_FILES[split], has_key=False, prefix=f"{split}:")
            present[_TRACK_FILES[split]] = True

        records = []
        for lineno, name in names:
            item = labels.get(name)
            if labelled and item is None:
                raise DatasetError(f"image {name!r} (listed on line {lineno} of {list_name}) has no <Item> label",
                                   label_path)
            records.append(ImageRecord(
                path=folder / name,
                vehicle_id=require_attr(item, "vehicleID", label_path) if labelled else None,
                camera_id=item.attrs.get("cameraID") if item is not None else None,
                track_id=tracks.get(name),
                attrs=_attrs(item) if item is not None else {},
            ))
        splits[split] = records
    return Dataset("aic21", base, splits, meta={"files_present": present})


def read_synthetic(root: str | Path, test_split: str = "", seed: int = 0, image_dir: str | Path = "") -> Dataset:
    """Read the VehicleX synthetic training set, keeping orientation and every other attribute.

    ``image_dir``: the folder of the images ("" = ``sys_image_train``), relative to the synthetic set's
    folder or absolute; the labels stay those of ``train_label.xml``.
    """
    if test_split:
        raise ValueError(f"test_split: aic21_synthetic is a training set only (got {test_split!r})")
    if image_dir:
        marker = "train_label.xml" if Path(image_dir).is_absolute() else str(image_dir)
        base = find_root(root, (SYNTHETIC_FOLDER,), marker)
        folder = base / image_dir  # an absolute image_dir stays as it is
        if not folder.is_dir():
            raise DatasetError("DATASETS.SYNTHETIC_IMAGES: no such image folder", path=folder)
        log.info("synthetic images from %s (labels from %s)", folder, base / "train_label.xml")
    else:
        base = find_root(root, (SYNTHETIC_FOLDER,), "sys_image_train")
        folder = base / "sys_image_train"
    label_path = base / "train_label.xml"
    existing = list_images(folder)
    records = []
    if label_path.exists():
        for name, item in labels_by_name(label_path, required=("imageName", "vehicleID", "cameraID")).items():
            if name not in existing:
                raise DatasetError(f"labels image {name!r}, which is not in {folder}", label_path, item.line)
            records.append(ImageRecord(
                path=folder / name,
                vehicle_id=item.attrs["vehicleID"].strip(),
                camera_id=item.attrs["cameraID"].strip(),
                orientation=parse_float(item.attrs.get("orientation"), "orientation", label_path, item.line),
                domain=SYNTHETIC,
                attrs=_attrs(item),
            ))
    else:
        log.warning("%s is missing: taking ids and cameras from the file names in %s", label_path, folder)
        for name in sorted(existing):
            m = _SYN_NAME.match(name)
            if m is None:
                raise DatasetError(f"cannot read an id and camera from {name!r} (expected ID_cCAM_N.jpg)",
                                   folder / name)
            records.append(ImageRecord(folder / name, m["vid"], f"c{m['cam']}", domain=SYNTHETIC))
    return Dataset("aic21_synthetic", base, {TRAIN: records},
                   meta={"files_present": {"train_label.xml": label_path.exists()}})
