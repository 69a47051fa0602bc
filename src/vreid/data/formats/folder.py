"""Users' own data: CSV lists, or folders of images labelled by a file-name pattern.

CSV mode (used when any of ``train.csv``, ``query.csv``, ``gallery.csv`` exists in the root)::

    path,vehicle_id,camera_id[,track_id][,orientation][,any other column...]
    images/0001_a.jpg,0001,c1,7

Paths are relative to the root (or absolute). Extra columns are kept as attributes.

Folder mode: ``train/``, ``query/``, ``gallery/`` (any present) hold images, searched recursively;
ids come from the regular expression ``pattern`` matched against each image's path relative to its
split folder, with named groups ``vehicle_id`` and ``camera_id`` (and optionally ``track_id``).
The default reads VeRi-style names such as ``0002_c002_00030600_0.jpg``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from vreid.data.formats.common import IMAGE_SUFFIXES, parse_float
from vreid.data.records import GALLERY, QUERY, TRAIN, Dataset, ImageRecord
from vreid.errors import DatasetError

DEFAULT_PATTERN = r"^(?P<vehicle_id>[^_/]+)_c?(?P<camera_id>[^_/.]+)"
SPLITS = (TRAIN, QUERY, GALLERY)
REQUIRED_COLUMNS = ("path", "vehicle_id", "camera_id")
_OPTIONAL_COLUMNS = ("track_id", "orientation")


def _read_csv(root: Path, csv_path: Path) -> list[ImageRecord]:
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"CSV header must contain {', '.join(REQUIRED_COLUMNS)}; missing {missing} "
                               f"(header is {header})", csv_path, 1)
        reader.fieldnames = header
        records = []
        seen: dict[Path, int] = {}
        for row in reader:
            line = reader.line_num
            if None in row or any(row.get(c) is None for c in header):
                raise DatasetError(f"expected {len(header)} columns ({','.join(header)})", csv_path, line)
            values = {k: v.strip() for k, v in row.items()}
            if not values["path"] or not values["vehicle_id"]:
                raise DatasetError("path and vehicle_id must not be empty", csv_path, line)
            path = Path(values["path"])
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise DatasetError(f"lists image {values['path']!r}, which does not exist ({path})", csv_path, line)
            if path in seen:
                raise DatasetError(f"duplicate image {values['path']!r} (first on line {seen[path]})", csv_path, line)
            seen[path] = line
            records.append(ImageRecord(
                path=path,
                vehicle_id=values["vehicle_id"],
                camera_id=values["camera_id"] or None,
                track_id=values.get("track_id") or None,
                orientation=parse_float(values.get("orientation"), "orientation", csv_path, line),
                attrs={k: v for k, v in values.items() if k not in REQUIRED_COLUMNS + _OPTIONAL_COLUMNS},
            ))
    return records


def _read_folder(folder: Path, pattern: re.Pattern[str], strict: bool = True) -> list[ImageRecord]:
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = path.relative_to(folder).as_posix()
        m = pattern.search(rel)
        if m is None and strict:
            raise DatasetError(f"file name {rel!r} does not match the pattern {pattern.pattern!r} "
                               "(set DATASETS.FOLDER_PATTERN)", path)
        groups = m.groupdict() if m else {}
        records.append(ImageRecord(path, groups.get("vehicle_id"), groups.get("camera_id"), groups.get("track_id")))
    return records


def image_records(folder: str | Path, pattern: str = DEFAULT_PATTERN) -> list[ImageRecord]:
    """Every image under ``folder`` (recursive, sorted); ids from ``pattern`` where the name matches, else None.

    For galleries of users' own images, which need not be labelled.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("image folder does not exist or is not a folder", path=folder)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"DATASETS.FOLDER_PATTERN is not a valid regular expression: {exc}") from None
    records = _read_folder(folder, compiled, strict=False)
    if not records:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", path=folder)
    return records


def read(root: str | Path, test_split: str = "", seed: int = 0, pattern: str = DEFAULT_PATTERN) -> Dataset:
    """Read CSV lists if any exist in ``root``, else split folders labelled by ``pattern``."""
    if test_split:
        raise ValueError(f"test_split: the folder format takes its query/gallery from query.* and gallery.*, "
                         f"leave it empty (got {test_split!r})")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("dataset root does not exist or is not a folder", path=root)
    csvs = {s: root / f"{s}.csv" for s in SPLITS if (root / f"{s}.csv").is_file()}
    if csvs:
        splits = {s: _read_csv(root, p) for s, p in csvs.items()}
        mode = "csv"
    else:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"DATASETS.FOLDER_PATTERN is not a valid regular expression: {exc}") from None
        if "vehicle_id" not in compiled.groupindex:
            raise ValueError(f"DATASETS.FOLDER_PATTERN needs a named group (?P<vehicle_id>...): {pattern!r}")
        splits = {s: _read_folder(root / s, compiled) for s in SPLITS if (root / s).is_dir()}
        mode = "folders"
    if not splits:
        raise DatasetError("no data: expected train.csv/query.csv/gallery.csv or train/ query/ gallery/ "
                           "folders", path=root)
    return Dataset("folder", root, splits, meta={"mode": mode})
