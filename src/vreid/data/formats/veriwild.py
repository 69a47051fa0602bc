"""VeRi-Wild (PKU-IMRE) reader.

On disk (``VeRI-Wild/``, ``VERI-Wild/`` or ``veri-wild/``, or the folder holding one)::

    images/<vid>/<imgid>.jpg
    train_test_split/train_list.txt                  lines "vid/imgid"
    train_test_split/test_{3000,5000,10000}.txt      the test set of each size, queries included
    train_test_split/test_{N}_query.txt              its queries (one image per identity)
    train_test_split/vehicle_info.txt                header, then "vid/imgid;camera;time;model;type;color"

``vehicle_info.txt`` is the only source of camera ids, which the same-camera junk rule of the
evaluation needs, so every test image must have an entry; training images without one get
``camera_id=None``. ``vehicle_info.txt`` is also accepted at the release root.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from vreid.data.formats.common import find_root, read_lines, read_name_list, require_file
from vreid.data.records import GALLERY, QUERY, REAL, TRAIN, Dataset, ImageRecord
from vreid.errors import DatasetError

log = logging.getLogger(__name__)

NAME = "veriwild"
SUBDIRS = ("VeRI-Wild", "VERI-Wild", "veri-wild")
MARKER = "train_test_split"
TEST_SPLITS: dict[str, int] = {
    "": 3000,
    "small": 3000,
    "3000": 3000,
    "medium": 5000,
    "5000": 5000,
    "large": 10000,
    "10000": 10000,
}
_INFO_FIELDS = ("time", "model", "type", "color")  # after "vid/imgid;camera"
_KEY_RE = re.compile(r"^([^/\s]+)/([^/\s]+?)(?:\.jpg)?$", re.IGNORECASE)
_DATA_KEY_RE = re.compile(r"^\d+/\d+")  # ids are numeric; the header's "id/image" is not


def read(root: str | Path, test_split: str = "", seed: int = 0) -> Dataset:
    """Read VeRi-Wild: train list and the chosen test size; ``seed`` is unused (the split is fixed)."""
    del seed
    key = str(test_split).strip().lower()
    if key not in TEST_SPLITS:
        raise ValueError(f"test_split must be one of {list(TEST_SPLITS)} for {NAME}, got {test_split!r}")
    size = TEST_SPLITS[key]
    root = find_root(root, SUBDIRS, MARKER)
    split_dir = root / MARKER
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DatasetError("missing image folder", path=image_dir)

    info_path = split_dir / "vehicle_info.txt"
    if not info_path.is_file() and (root / "vehicle_info.txt").is_file():
        info_path = root / "vehicle_info.txt"
    info = _read_vehicle_info(info_path)

    listings: dict[str, set[str]] = {}
    train, _ = _read_list(split_dir / "train_list.txt", image_dir, listings, info, need_camera=False)
    test_path = split_dir / f"test_{size}.txt"
    query_path = split_dir / f"test_{size}_query.txt"
    test, _ = _read_list(test_path, image_dir, listings, info, need_camera=True)
    query, query_lines = _read_list(query_path, image_dir, listings, info, need_camera=True)

    # Gallery = test list minus the queries. The test list includes its queries: train (277,797) plus
    # test_10000 (138,517) is exactly the 416,314 images of the release, so the 10,000 queries must lie
    # inside test_10000.txt. fast-reid (fastreid/data/datasets/veriwild.py) uses the whole test list as
    # its gallery and relies on the same-id-same-camera junk rule to drop each query's own copy; we
    # remove the queries instead, so no query ever appears as a gallery distractor for another query.
    test_paths = {r.path for r in test}
    for lineno, r in zip(query_lines, query, strict=True):
        if r.path not in test_paths:
            raise DatasetError(f"query image {r.path} is not in {test_path.name}", query_path, lineno)
    query_paths = {r.path for r in query}
    gallery = [r for r in test if r.path not in query_paths]

    log.info(
        "%s at %s: train %d images; test %d: query %d, gallery %d",
        NAME,
        root,
        len(train),
        size,
        len(query),
        len(gallery),
    )
    meta = {
        "test_size": size,
        "test_list": test_path.name,
        "query_list": query_path.name,
        "gallery_excludes_queries": True,
    }
    return Dataset(name=NAME, root=root, splits={TRAIN: train, QUERY: query, GALLERY: gallery}, meta=meta)


def _parse_key(text: str, path: Path, lineno: int) -> tuple[str, str]:
    """``vid/imgid`` (an optional ``.jpg`` tolerated) -> (vid, imgid)."""
    m = _KEY_RE.match(text)
    if m is None:
        raise DatasetError(f"expected 'vid/imgid', got {text!r}", path, lineno)
    return m.group(1), m.group(2)


def _read_vehicle_info(path: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """``vid/imgid`` -> (camera id, attrs) from vehicle_info.txt, skipping its header line."""
    require_file(path, "vehicle_info.txt (camera ids)")
    out: dict[str, tuple[str, dict[str, str]]] = {}
    first: dict[str, int] = {}
    for i, (lineno, line) in enumerate(read_lines(path, "vehicle info file")):
        fields = [f.strip() for f in line.split(";")]
        if i == 0 and not _DATA_KEY_RE.match(fields[0]):
            continue  # header ("id/image;Camera ID;Time;Model;Type;Color"); kept if the file lacks one
        if not 2 <= len(fields) <= 2 + len(_INFO_FIELDS) or not fields[1]:
            raise DatasetError(
                f"expected 'vid/imgid;camera;time;model;type;color', got {line!r}", path, lineno
            )
        vid, img = _parse_key(fields[0], path, lineno)
        key = f"{vid}/{img}"
        if key in out:
            raise DatasetError(f"duplicate image {key!r} (first on line {first[key]})", path, lineno)
        first[key] = lineno
        attrs = {k: v for k, v in zip(_INFO_FIELDS, fields[2:], strict=False) if v}
        out[key] = (fields[1], attrs)
    return out


def _read_list(
    path: Path,
    image_dir: Path,
    listings: dict[str, set[str]],
    info: dict[str, tuple[str, dict[str, str]]],
    need_camera: bool,
) -> tuple[list[ImageRecord], list[int]]:
    """Records of one ``vid/imgid`` list and their line numbers; images must exist.

    Each vehicle folder is listed once (cached in ``listings`` across lists), not stat'ed per image.
    """
    records: list[ImageRecord] = []
    lines: list[int] = []
    no_camera = 0
    for lineno, text in read_name_list(path, "split list"):
        vid, img = _parse_key(text, path, lineno)
        folder = image_dir / vid
        if vid not in listings:
            try:
                listings[vid] = set(os.listdir(folder))
            except FileNotFoundError:
                raise DatasetError(
                    f"lists image {text!r}, but folder {folder} does not exist", path, lineno
                ) from None
        file_name = f"{img}.jpg"
        if file_name not in listings[vid]:
            raise DatasetError(f"lists image {text!r}, which is not in {folder}", path, lineno)
        entry = info.get(f"{vid}/{img}")
        if entry is None:
            if need_camera:
                raise DatasetError(
                    f"image {text!r} has no entry in vehicle_info.txt, so its camera is unknown", path, lineno
                )
            no_camera += 1
            camera, attrs = None, {}
        else:
            camera, attrs = entry
        records.append(
            ImageRecord(path=folder / file_name, vehicle_id=vid, camera_id=camera, domain=REAL, attrs=attrs)
        )
        lines.append(lineno)
    if no_camera:
        log.warning("%s: %d images have no vehicle_info.txt entry (camera unknown)", path, no_camera)
    return records, lines
