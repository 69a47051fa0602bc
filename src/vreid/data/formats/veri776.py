"""VeRi-776 reader.

On disk (``VeRi/`` or ``VeRi_with_plate/``, or the folder holding either)::

    image_train/ image_query/ image_test/     JPEGs named VVVV_cCCC_FFFFFFFF_I.jpg
    name_train.txt name_query.txt name_test.txt   one file name per line (order matters)
    train_label.xml test_label.xml            <Item imageName vehicleID cameraID colorID typeID .../>
    test_track.txt                            "<vid>_c<cam> name name ..." per track (optional)
    gt_index.txt jk_index.txt                 per query: 1-based indices into name_test.txt (optional)

Query images are labelled by ``test_label.xml``. Where a label XML is missing or lacks an image, the
identity and camera come from the file name (every public reader does that, and the names are
reliable). Every other XML attribute (``colorID``, ``typeID``, ...) is kept in ``attrs`` under its
own name, as in the AIC21 readers. The official train XML has a
known erratum (typeID="0" for vehicles 3, 7, 41): we keep values as given.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

from vreid.data.formats.common import (
    IMAGE_SUFFIXES,
    XmlItem,
    check_images_exist,
    find_root,
    labels_by_name,
    list_images,
    read_name_list,
    read_tracks,
)
from vreid.data.records import GALLERY, QUERY, REAL, TRAIN, Dataset, ImageRecord
from vreid.errors import DatasetError

log = logging.getLogger(__name__)

NAME = "veri776"
SUBDIRS = ("VeRi", "VeRi_with_plate")
MARKER = "image_train"
TEST_SPLITS = ("",)

# (split, name list, image folder, label XML)
_SPLITS = (
    (TRAIN, "name_train.txt", "image_train", "train_label.xml"),
    (QUERY, "name_query.txt", "image_query", "test_label.xml"),
    (GALLERY, "name_test.txt", "image_test", "test_label.xml"),
)
_TRACK_FILE = "test_track.txt"
_INDEX_FILES = (("gt_index", "gt_index.txt"), ("jk_index", "jk_index.txt"))
OPTIONAL_FILES = (
    "name_train.txt",
    "name_query.txt",
    "name_test.txt",
    "train_label.xml",
    "test_label.xml",
    _TRACK_FILE,
    *(f for _, f in _INDEX_FILES),
)

# VVVV_cCCC_FFFFFFFF_I.jpg: vehicle, camera, frame/timestamp, index
_NAME_RE = re.compile(r"^(\d+)_(c\d+)_(\d+)_(\d+)\.(?:jpe?g|png|bmp)$", re.IGNORECASE)
_ID_KEYS = ("imageName", "vehicleID", "cameraID")


def read(root: str | Path, test_split: str = "", seed: int = 0) -> Dataset:
    """Read VeRi-776 into train/query/gallery; ``seed`` is unused (the split is fixed)."""
    del seed  # the official split has no randomness
    if test_split not in TEST_SPLITS:
        raise ValueError(
            f"test_split must be one of {list(TEST_SPLITS)} for {NAME} (it has one test set), "
            f"got {test_split!r}"
        )
    root = find_root(root, SUBDIRS, MARKER)
    present = [f for f in OPTIONAL_FILES if (root / f).is_file()]

    label_cache: dict[str, dict[str, XmlItem] | None] = {}
    splits: dict[str, list[ImageRecord]] = {}
    from_names = 0
    for split, list_name, folder_name, xml_name in _SPLITS:
        if xml_name not in label_cache:
            xml_path = root / xml_name
            label_cache[xml_name] = labels_by_name(xml_path, _ID_KEYS) if xml_path.is_file() else None
            if label_cache[xml_name] is None:
                log.warning("%s: absent; labelling images by their file names", xml_path)
        records, n = _read_split(root, list_name, folder_name, root / xml_name, label_cache[xml_name])
        splits[split] = records
        from_names += n
    if from_names:
        log.info("%s: %d images labelled from their file names (not in a label XML)", root, from_names)

    meta: dict[str, object] = {"lists_present": present, "labels_from_names": from_names}
    if _TRACK_FILE in present:
        splits[QUERY], splits[GALLERY] = _apply_tracks(root / _TRACK_FILE, splits[QUERY], splits[GALLERY])

    for key, file_name in _INDEX_FILES:
        if file_name not in present:
            continue
        if not all(f in present for f in ("name_query.txt", "name_test.txt")):
            # the indices refer to the order of the name lists, which a folder listing need not match
            log.warning(
                "%s: ignored, because name_query.txt/name_test.txt are absent and it indexes their order",
                root / file_name,
            )
            continue
        meta[key] = _read_index(root / file_name, len(splits[QUERY]), len(splits[GALLERY]))

    log.info(
        "%s at %s: train %d, query %d, gallery %d images",
        NAME,
        root,
        len(splits[TRAIN]),
        len(splits[QUERY]),
        len(splits[GALLERY]),
    )
    return Dataset(name=NAME, root=root, splits=splits, meta=meta)


def _read_split(
    root: Path, list_name: str, folder_name: str, xml_path: Path, labels: dict[str, XmlItem] | None
) -> tuple[list[ImageRecord], int]:
    """Records of one split in name-list order, and how many were labelled from file names."""
    folder = root / folder_name
    existing = list_images(folder)
    list_path = root / list_name
    if list_path.is_file():
        listed = read_name_list(list_path)
        check_images_exist(listed, folder, list_path, existing)
        names: list[tuple[int | None, str]] = list(listed)
        source = list_path
    else:
        names = [(None, n) for n in sorted(existing) if n.lower().endswith(IMAGE_SUFFIXES)]
        log.warning("%s: absent; using the %d images of %s in sorted order", list_path, len(names), folder)
        source = folder

    records: list[ImageRecord] = []
    from_names = 0
    for lineno, name in names:
        item = labels.get(name) if labels is not None else None
        if item is not None:
            vid = item.attrs["vehicleID"].strip()
            cam = item.attrs["cameraID"].strip()
            attrs = {k: v for k, v in item.attrs.items() if k not in _ID_KEYS}
        else:
            m = _NAME_RE.match(name)
            if m is None:
                where = f"not in {xml_path}" if labels is not None else f"{xml_path} is absent"
                raise DatasetError(
                    f"cannot label image {name!r}: {where} and its name does not follow "
                    "VVVV_cCCC_FFFFFFFF_I.jpg",
                    source,
                    lineno,
                )
            vid, cam = m.group(1), m.group(2)
            attrs = {}
            from_names += 1
        records.append(
            ImageRecord(path=folder / name, vehicle_id=vid, camera_id=cam, domain=REAL, attrs=attrs)
        )
    return records, from_names


def _apply_tracks(
    path: Path, query: list[ImageRecord], gallery: list[ImageRecord]
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Give gallery (and query) records the track id of the test_track.txt line that lists them."""
    tracks = read_tracks(path, has_key=True, prefix="test_track:")

    def tag(records: list[ImageRecord]) -> tuple[list[ImageRecord], int]:
        out = []
        for r in records:
            t = tracks.get(r.name)
            out.append(r if t is None else replace(r, track_id=t))
        return out, sum(r.name in tracks for r in records)

    query, nq = tag(query)
    gallery, ng = tag(gallery)
    if ng < len(gallery):
        log.warning("%s: %d of %d gallery images are in no track", path, len(gallery) - ng, len(gallery))
    log.info("%s: %d tracks; %d gallery and %d query images tracked", path, len(set(tracks.values())), ng, nq)
    return query, gallery


def _read_raw_lines(path: Path, what: str, expected: int) -> list[str]:
    """All lines, blank ones included (a blank index line is a query with no entries).

    ``common.read_lines`` drops blank lines, which would shift every later query's line here.
    Trailing blank lines beyond ``expected`` are dropped, so extra final newlines are accepted.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{what} is not UTF-8 text ({exc.reason})", path=path) from None
    lines = text.splitlines()
    while len(lines) > expected and not lines[-1].strip():
        lines.pop()
    return lines


def _read_index(path: Path, num_query: int, num_gallery: int) -> list[list[int]]:
    """One list of 0-based gallery indices per query, from a 1-based gt/jk index file."""
    lines = _read_raw_lines(path, "index file", num_query)
    if len(lines) != num_query:
        line = min(len(lines), num_query) + 1 if len(lines) > num_query else max(len(lines), 1)
        raise DatasetError(
            f"has {len(lines)} lines, expected one per query ({num_query} in name_query.txt)", path, line
        )
    out: list[list[int]] = []
    for lineno, line in enumerate(lines, 1):
        row = []
        for token in line.split():
            try:
                k = int(token)
            except ValueError:
                raise DatasetError(f"index {token!r} is not an integer", path, lineno) from None
            if not 1 <= k <= num_gallery:
                raise DatasetError(
                    f"index {k} is out of range 1..{num_gallery} (1-based into name_test.txt)", path, lineno
                )
            row.append(k - 1)
        out.append(row)
    return out
