"""Plain records: what every dataset reader produces and everything downstream consumes.

A reader turns one on-disk format into :class:`ImageRecord` lists grouped into named splits
(``train``, ``query``, ``gallery``, ...). Ids stay as the dataset spells them (strings) until
:func:`relabel` maps them to class indices for training.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vreid.errors import UnlabelledSplitError

REAL = "real"
SYNTHETIC = "synthetic"
DOMAINS = (REAL, SYNTHETIC)

TRAIN, QUERY, GALLERY = "train", "query", "gallery"


@dataclass(frozen=True)
class ImageRecord:
    """One image and what is known about it.

    ``vehicle_id`` is None for unlabelled images (the AIC21 query/test sets); ``camera_id`` is None
    where the dataset has no cameras (VehicleID). ``attrs`` keeps every other attribute the dataset
    provides (colour, type, light, ...) as strings, unparsed.
    """

    path: Path
    vehicle_id: str | None
    camera_id: str | None
    track_id: str | None = None
    orientation: float | None = None
    domain: str = REAL
    attrs: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Dataset:
    """A dataset read from disk: named splits of records plus protocol details.

    ``meta`` carries format-specific facts that later stages may need (e.g. VeRi-776's official
    ``gt_index``/``jk_index`` lists, which list files were present).
    """

    name: str
    root: Path
    splits: dict[str, list[ImageRecord]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> list[ImageRecord]:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(
                f"dataset {self.name!r} at {self.root} has no split {split!r}; it has {sorted(self.splits)}"
            ) from None

    @property
    def train(self) -> list[ImageRecord]:
        return self.splits.get(TRAIN, [])

    @property
    def query(self) -> list[ImageRecord]:
        return self.splits.get(QUERY, [])

    @property
    def gallery(self) -> list[ImageRecord]:
        return self.splits.get(GALLERY, [])

    def is_labelled(self, split: str) -> bool:
        records = self[split]
        return all(r.vehicle_id is not None for r in records)

    def require_labels(self, split: str) -> list[ImageRecord]:
        """The split's records, or an error if any lacks an identity (evaluation needs labels)."""
        records = self[split]
        missing = sum(r.vehicle_id is None for r in records)
        if missing:
            raise UnlabelledSplitError(
                f"split {split!r} of dataset {self.name!r} has {missing} of {len(records)} images without a "
                "vehicle id, so it cannot be evaluated locally (the AIC21 test set has no public labels: "
                "use a local split (DATASETS.LOCAL_SPLIT.NUM_IDS) or write a submission instead)",
                path=self.root,
            )
        return records


def split_stats(records: Sequence[ImageRecord]) -> dict[str, int | None]:
    """Images, identities, cameras and tracks of one split; ``ids`` is None if any image is unlabelled."""
    labelled = all(r.vehicle_id is not None for r in records)
    return {
        "images": len(records),
        "ids": len({r.vehicle_id for r in records}) if labelled else None,
        "cameras": len({r.camera_id for r in records if r.camera_id is not None}),
        "tracks": len({r.track_id for r in records if r.track_id is not None}),
    }


def summarize(dataset: Dataset) -> dict[str, dict[str, int | None]]:
    return {name: split_stats(records) for name, records in dataset.splits.items()}


LABEL_KINDS = ("vehicle", "orientation", "camera")


def class_key(record: ImageRecord, label: str = "vehicle", orientation_bin: float = 10.0) -> str:
    """What makes a class: the vehicle (ReID), the orientation bin (Ori-ReID) or the camera (Cam-ReID).

    The orientation- and camera-ReID models of the paper are the same network trained on these
    other labels; bins are ``floor(orientation / orientation_bin)`` (36 bins of 10 degrees).
    """
    if label == "vehicle":
        value = record.vehicle_id
    elif label == "camera":
        value = record.camera_id
    elif label == "orientation":
        value = None if record.orientation is None else str(int((record.orientation % 360.0) // orientation_bin))
    else:
        raise ValueError(f"label must be one of {LABEL_KINDS}, got {label!r}")
    if value is None:
        raise UnlabelledSplitError(f"image has no {label} label, so it cannot train a {label} model", path=record.path)
    return value


def relabel(
    groups: Sequence[Sequence[ImageRecord]], label: str = "vehicle", orientation_bin: float = 10.0
) -> tuple[list[int], dict[tuple[int, str], int]]:
    """Map class keys (see :func:`class_key`) to contiguous class indices 0..N-1.

    Each group (one training dataset) gets its own id space, so "0001" of VeRi-776 and "0001" of
    VehicleX are different classes (orientation bins, too, stay per dataset). Classes are numbered
    in order of first appearance, which is deterministic for a given reader output. Returns the
    label of every record (groups concatenated) and the mapping ``(group index, key) -> class``.
    """
    mapping: dict[tuple[int, str], int] = {}
    labels: list[int] = []
    for gi, records in enumerate(groups):
        for r in records:
            key = (gi, class_key(r, label, orientation_bin))
            if key not in mapping:
                mapping[key] = len(mapping)
            labels.append(mapping[key])
    return labels, mapping


def hold_out_split(
    records: Sequence[ImageRecord],
    num_ids: int,
    seed: int = 0,
    queries_per_id: int = 2,
) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
    """Split labelled training records into (train, query, gallery) by identity (the paper's Split-Train/Test).

    ``num_ids`` identities, drawn with ``seed``, are held out. For each held-out identity up to
    ``queries_per_id`` images become queries, each from a different camera; the identity's other
    images form the gallery. A query is only chosen if the gallery keeps the same identity in
    another camera, so every query has a valid match under the same-camera junk rule. Records keep
    their track ids, so the gallery's track lists are the split's own (never the official test
    tracks, a defect of the paper's code).
    """
    by_id: dict[str, list[ImageRecord]] = {}
    for r in records:
        if r.vehicle_id is None:
            raise UnlabelledSplitError("a local split needs labelled training images", path=r.path)
        by_id.setdefault(r.vehicle_id, []).append(r)
    ids = sorted(by_id)
    if not 0 < num_ids < len(ids):
        raise ValueError(
            f"num_ids must be between 1 and {len(ids) - 1} (the dataset has {len(ids)} ids), got {num_ids}"
        )
    rng = random.Random(seed)
    held = set(rng.sample(ids, num_ids))
    train: list[ImageRecord] = []
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    for vid in ids:
        items = by_id[vid]
        if vid not in held:
            train.extend(items)
            continue
        order = list(range(len(items)))
        rng.shuffle(order)
        chosen: list[int] = []
        for i in order:
            if len(chosen) == queries_per_id:
                break
            cam = items[i].camera_id
            if cam is None:  # no cameras (VehicleID): any other image of the id is a valid match
                if len(items) - len(chosen) > 1:
                    chosen.append(i)
                continue
            if any(items[c].camera_id == cam for c in chosen):
                continue
            # keep i only if, without it and the queries already chosen, another camera still shows this id
            rest = {items[j].camera_id for j in range(len(items)) if j != i and j not in chosen}
            if rest - {cam}:
                chosen.append(i)
        query.extend(items[i] for i in sorted(chosen))
        gallery.extend(items[j] for j in range(len(items)) if j not in chosen)
    return train, query, gallery


def with_domain(records: Iterable[ImageRecord], domain: str) -> list[ImageRecord]:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return [replace(r, domain=domain) for r in records]
