"""FeatureSet: embeddings of a list of images with what is known about each image, saved as ``.npz``.

What every stage after extraction reads (re-ranking, ensembles, evaluation, submissions, reports, the
gallery), so it lives in a torch-free leaf: those stages never need the model, a GPU or torch.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vreid.errors import VreidError
from vreid.fileio import atomic_write_bytes
from vreid.runfiles import GALLERY_FILE, QUERY_FILE

FIELDS = ("features", "vehicle_ids", "camera_ids", "track_ids", "paths")


class Described(Protocol):
    """What FeatureSet needs of a record (``vreid.data.records.ImageRecord`` has it)."""

    path: str
    vehicle_id: object
    camera_id: object
    track_id: object


def _column(values: Iterable[object]) -> np.ndarray:
    return np.array(["" if v is None else str(v) for v in values], dtype=str)


@dataclass
class FeatureSet:
    """Embeddings of a list of images with what is known about each image.

    Ids, cameras and tracks are strings ("" where unknown: the one spelling of an unknown value once
    features are saved), paths as strings.
    """

    features: np.ndarray
    vehicle_ids: np.ndarray
    camera_ids: np.ndarray
    track_ids: np.ndarray
    paths: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    @classmethod
    def from_records(cls, features: np.ndarray, records: Iterable[Described]) -> FeatureSet:
        records = list(records)
        return cls(features.astype(np.float32), _column(r.vehicle_id for r in records),
                   _column(r.camera_id for r in records), _column(r.track_id for r in records),
                   _column(r.path for r in records))

    def save(self, path: str | Path) -> Path:
        buffer = io.BytesIO()
        np.savez(buffer, **{name: getattr(self, name) for name in FIELDS})
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        path = Path(path)
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise VreidError(f"{path}: not a vreid feature file ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array: no paths or ids to go with it
            raise VreidError(f"{path}: not a vreid feature file (a single array; `vreid extract` writes .npz "
                             "files with features, paths and ids)")
        try:
            with data:
                return cls(*(data[k] for k in FIELDS))
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise VreidError(f"{path}: not a vreid feature file ({exc})") from None


def load_pair(folder: str | Path) -> tuple[FeatureSet, FeatureSet]:
    """The query and gallery FeatureSets of a `vreid extract` / `vreid test` folder."""
    folder = Path(folder)
    return FeatureSet.load(folder / QUERY_FILE), FeatureSet.load(folder / GALLERY_FILE)


def check_feature_matrix(features: np.ndarray, where: str | Path, dim: int | None = None) -> np.ndarray:
    """``features`` as a contiguous float32 (N, D) matrix of finite values (D = ``dim`` if given), else a
    VreidError naming ``where``: the one check for features arriving from a file, a client or another model."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise VreidError(f"{where}: expected a 2-D feature matrix, got shape {features.shape}")
    if dim is not None and features.shape[1] != dim:
        raise VreidError(f"{where}: features of shape {features.shape}, the gallery holds {dim}-d")
    if not np.isfinite(features).all():
        raise VreidError(f"{where}: features contain NaN or infinity")
    return np.ascontiguousarray(features)


def load_distance(path: str | Path) -> np.ndarray:
    """A saved distance matrix (``distance.npy`` of `vreid test` / `rerank` / `ensemble`), or a VreidError naming
    the file: the one reader of the commands that take distances."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise VreidError(f"{path}: not a distance file written by vreid ({exc})") from None
