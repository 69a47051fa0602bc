"""VehicleID (PKU) reader.

On disk (``VehicleID_V1.0/`` or ``VehicleID/``, or the folder holding either)::

    image/<image_id>.jpg
    train_test_split/train_list.txt, test_list_{800,1600,2400,3200,6000,13164}.txt
                                          lines "<image_id> <vehicle_id>"
    attribute/model_attr.txt, color_attr.txt   lines "<vehicle_id> <attr id>" (optional)

There are no cameras (``camera_id`` is None) and no fixed query/gallery split: the protocol draws,
for every test identity, one image into the gallery and makes all its other images queries, and
repeats this random draw (10 trials in the literature). Here ``seed`` is the trial index: the same
seed gives the same split, trials 0..9 give the ten draws. :func:`sample_gallery` redoes the draw
on records already read, so N trials need one read.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

from vreid.data.formats.common import check_images_exist, find_root, list_images, read_lines
from vreid.data.records import GALLERY, QUERY, REAL, TRAIN, Dataset, ImageRecord
from vreid.errors import DatasetError

log = logging.getLogger(__name__)

NAME = "vehicleid"
SUBDIRS = ("VehicleID_V1.0", "VehicleID")
MARKER = "train_test_split"
TEST_SIZES = (800, 1600, 2400, 3200, 6000, 13164)
# "" and the paper's names map to sizes; the default is the small (800-id) set, as in the paper
TEST_SPLITS: dict[str, int] = {
    "": 800,
    "small": 800,
    "medium": 1600,
    "large": 2400,
    **{str(n): n for n in TEST_SIZES},
}
_ATTR_FILES = (("model", "model_attr.txt"), ("color", "color_attr.txt"))


def read(root: str | Path, test_split: str = "", seed: int = 0) -> Dataset:
    """Read VehicleID: train list, plus one random gallery draw (trial ``seed``) of the chosen test list."""
    test_size = _test_size(test_split)
    root = find_root(root, SUBDIRS, MARKER)
    split_dir = root / MARKER
    image_dir = root / "image"
    existing = list_images(image_dir)
    attrs = _read_attributes(root / "attribute")

    train = _read_list(split_dir / "train_list.txt", image_dir, existing, attrs)
    test_list = split_dir / f"test_list_{test_size}.txt"
    test = _read_list(test_list, image_dir, existing, attrs)
    query, gallery = sample_gallery(test, seed)
    log.info(
        "%s at %s: train %d images; test list %s: %d ids, query %d, gallery %d (trial seed %d)",
        NAME,
        root,
        len(train),
        test_list.name,
        len(gallery),
        len(query),
        len(gallery),
        seed,
    )
    meta = {
        "test_size": test_size,
        "test_list": test_list.name,
        "trial_seed": seed,
        "attributes_present": sorted(attrs),
    }
    return Dataset(name=NAME, root=root, splits={TRAIN: train, QUERY: query, GALLERY: gallery}, meta=meta)


def sample_gallery(records: Sequence[ImageRecord], seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """One trial of the VehicleID protocol: (query, gallery) with one random gallery image per identity.

    Pure and order-independent: identities are visited in sorted order and each identity's images
    sorted by path before ``random.Random(seed)`` picks, so the result depends only on the set of
    records and the seed (``sample_gallery(query + gallery, s)`` repeats ``read(..., seed=s)``).
    An identity with a single image goes to the gallery and yields no query.
    """
    by_id: dict[str, list[ImageRecord]] = {}
    for r in records:
        if r.vehicle_id is None:
            raise ValueError(f"the VehicleID protocol needs labelled images; {r.path} has no vehicle id")
        by_id.setdefault(r.vehicle_id, []).append(r)
    rng = random.Random(seed)
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    for vid in sorted(by_id):
        items = sorted(by_id[vid], key=lambda r: str(r.path))
        pick = rng.randrange(len(items))
        gallery.append(items[pick])
        query.extend(r for i, r in enumerate(items) if i != pick)
    return query, gallery


def _test_size(test_split: str) -> int:
    key = str(test_split).strip().lower()
    if key not in TEST_SPLITS:
        raise ValueError(f"test_split must be one of {list(TEST_SPLITS)} for {NAME}, got {test_split!r}")
    return TEST_SPLITS[key]


def _norm_vid(vid: str) -> str:
    """Vehicle ids compared without zero padding, in case the attribute files spell them differently."""
    return str(int(vid)) if vid.isdigit() else vid


def _read_pairs(path: Path, what: str, first: str, second: str) -> list[tuple[int, str, str]]:
    """Lines of exactly two whitespace-separated fields, refusing duplicate first fields."""
    out: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for lineno, line in read_lines(path, what):
        fields = line.split()
        if len(fields) != 2:
            raise DatasetError(f"expected '<{first}> <{second}>', got {line!r}", path, lineno)
        a, b = fields
        if a in seen:
            raise DatasetError(f"duplicate {first} {a!r} (first on line {seen[a]})", path, lineno)
        seen[a] = lineno
        out.append((lineno, a, b))
    return out


def _read_attributes(folder: Path) -> dict[str, dict[str, str]]:
    """Attribute name -> (normalized vehicle id -> value), for the attribute files present."""
    out: dict[str, dict[str, str]] = {}
    for key, file_name in _ATTR_FILES:
        path = folder / file_name
        if not path.is_file():
            log.info("%s: absent; no %r attribute", path, key)
            continue
        out[key] = {_norm_vid(v): a for _, v, a in _read_pairs(path, "attribute file", "vehicle_id", key)}
    return out


def _read_list(
    path: Path, image_dir: Path, existing: set[str], attrs: dict[str, dict[str, str]]
) -> list[ImageRecord]:
    """Records of one split list, in list order; every listed image must exist."""
    pairs = _read_pairs(path, "split list", "image_id", "vehicle_id")
    check_images_exist(((lineno, f"{img}.jpg") for lineno, img, _ in pairs), image_dir, path, existing)
    records = []
    for _, img, vid in pairs:
        key = _norm_vid(vid)
        record_attrs = {name: values[key] for name, values in attrs.items() if key in values}
        records.append(
            ImageRecord(
                path=image_dir / f"{img}.jpg", vehicle_id=vid, camera_id=None, domain=REAL, attrs=record_attrs
            )
        )
    return records
