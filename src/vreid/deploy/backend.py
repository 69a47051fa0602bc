"""What every gallery backend implements: the records it stores and returns, the Gallery interface, gallery URIs.

The backends (:mod:`vreid.deploy.sqlite_store`, :mod:`vreid.deploy.milvus_store`) import this; :mod:`vreid.deploy.store`
chooses one by URI. Kept apart from that choice so that no backend imports the module that imports it.
"""


from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from vreid.deploy.index import SearchFilter
from vreid.errors import VreidError
from vreid.features import check_feature_matrix

log = logging.getLogger(__name__)

DEFAULT_FILE = "gallery.db"  # the database inside a gallery folder given as a plain path
LEGACY_MANIFEST = "index.json"  # the folder format before the database (vreid <= 0.1): read by `index migrate`
LEGACY_FORMAT = "vreid-gallery-index"
DEFAULT_COLLECTION = "vreid_gallery"
BATCH = 4096  # rows per batch when iterating or copying a gallery
UPLOADS = "uploads"  # `vreid serve` keeps uploaded gallery images in this folder beside a SQLite gallery
# texts stored with a gallery: the model config that embeds its queries, the per-camera statistics its rows were
# normalised with (vreid.deploy.gallery)
MODEL_CONFIG_KEY, CAMERA_STATS_KEY = "model_config", "camera_stats"
METADATA_KEYS = (MODEL_CONFIG_KEY, CAMERA_STATS_KEY)


@dataclass(frozen=True)
class Sighting:
    """What is known about one gallery image; ``captured_at`` in seconds since the epoch (UTC), or None."""

    path: str
    vehicle_id: str = ""
    camera_id: str = ""
    track_id: str = ""
    captured_at: float | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("path", "vehicle_id", "camera_id", "track_id"):
            if not isinstance(getattr(self, name), str):
                raise VreidError(f"sighting {self.path!r}: {name} must be a string, got {getattr(self, name)!r}")
        if self.captured_at is not None and not math.isfinite(self.captured_at):
            raise VreidError(f"sighting {self.path!r}: captured_at must be a finite time, got {self.captured_at}")
        if not isinstance(self.attributes, Mapping):
            raise VreidError(f"sighting {self.path!r}: attributes must be a JSON object, got {self.attributes!r}")

    def attributes_json(self) -> str:
        try:
            return json.dumps(dict(self.attributes), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise VreidError(f"sighting {self.path!r}: attributes are not JSON ({exc})") from None


@dataclass(frozen=True)
class Hit:
    """One search result with the sighting's stored metadata."""

    rank: int
    id: int
    score: float
    path: str
    vehicle_id: str
    camera_id: str
    track_id: str
    captured_at: float | None
    attributes: Mapping[str, Any]

    @classmethod
    def of(cls, rank: int, id_: int, score: float, s: Sighting) -> Hit:
        return cls(rank, id_, score, s.path, s.vehicle_id, s.camera_id, s.track_id, s.captured_at,
                   dict(s.attributes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Batch:
    """Consecutive gallery rows (by id) from :meth:`Gallery.batches`."""

    ids: np.ndarray
    features: np.ndarray
    sightings: list[Sighting]


class Gallery(ABC):
    """A gallery of sightings with search; every backend passes tests/deploy/test_store_contract.py."""

    uri: str
    dim: int

    @abstractmethod
    def add(self, features: np.ndarray, sightings: Sequence[Sighting]) -> list[int]:
        """Store rows in one transaction and return their new ids; on failure nothing is stored (VreidError)."""

    @abstractmethod
    def remove(self, ids: Sequence[int]) -> int:
        """Remove rows by id in one transaction; an unknown id is an error and then nothing is removed."""

    @abstractmethod
    def get(self, ids: Sequence[int]) -> dict[int, Sighting]:
        """The sightings of those ids that exist."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def search(self, queries: np.ndarray, top_k: int = 20, where: SearchFilter | None = None,
               device: str | None = None) -> list[list[Hit]]:
        """The ``top_k`` most similar rows that pass ``where`` for every query, best first (``device``: a torch
        device for an in-memory exact search; a server-side backend ignores it)."""

    @abstractmethod
    def batches(self, size: int = BATCH) -> Iterator[Batch]:
        """Every row, in increasing id order, ``size`` at a time."""

    @abstractmethod
    def ids_of_paths(self, paths: Sequence[str]) -> dict[str, list[int]]:
        """Ids stored under each of ``paths`` (a path missing from the result is not in the gallery)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Backend, dimension and search settings, for `vreid index info` and GET /health."""

    @abstractmethod
    def metadata(self, key: str) -> str | None:
        """A text stored with the gallery under one of :data:`METADATA_KEYS`, or None."""

    @abstractmethod
    def set_metadata(self, key: str, text: str | None) -> None:
        """Store (None: delete) the text under ``key``, one of :data:`METADATA_KEYS`."""

    @property
    def model_config(self) -> str | None:
        """The YAML config of the model that embeds this gallery's queries, if one was stored."""
        return self.metadata(MODEL_CONFIG_KEY)

    def set_model_config(self, text: str | None) -> None:
        self.set_metadata(MODEL_CONFIG_KEY, text)

    def close(self) -> None:  # noqa: B027  (backends without resources have nothing to close)
        pass

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_key(key: str) -> str:
        if key not in METADATA_KEYS:
            raise ValueError(f"unknown gallery metadata key {key!r}; known: {', '.join(METADATA_KEYS)}")
        return key

    def _check_rows(self, features: np.ndarray, sightings: Sequence[Sighting]) -> np.ndarray:
        features = check_feature_matrix(features, self.uri, self.dim)
        if len(features) != len(sightings):
            raise VreidError(f"{self.uri}: {len(features)} features but {len(sightings)} sightings")
        return features


# ------------------------------------------------------------------------------------------------------- URIs
@dataclass(frozen=True)
class Location:
    """A parsed gallery URI."""

    backend: str  # "sqlite" or "milvus"
    target: str  # sqlite: the database file; milvus: what pymilvus connects to (http://host:port or a file)
    collection: str = DEFAULT_COLLECTION
    token: str = ""
    db_name: str = ""
    consistency: str = "Strong"
    legacy_folder: str = ""  # a plain folder holding an index of the old format (read once into the database)


def parse_uri(uri: str | Path) -> Location:
    """A gallery URI, or a plain path (a folder -> FOLDER/gallery.db, a file -> that SQLite file)."""
    text = str(uri)
    if text.startswith("sqlite://"):
        path = text[len("sqlite://"):]
        if not path:
            raise VreidError(f"gallery URI {text!r}: give a file, e.g. sqlite:///data/gallery.db")
        return Location("sqlite", path)
    if text.startswith(("milvus://", "milvus-lite://")):
        parts = urlsplit(text)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"collection", "token", "db", "consistency"}
        if unknown:
            raise VreidError(f"gallery URI {text!r}: unknown parameter(s) {sorted(unknown)}; known: collection, "
                             "token, db, consistency")
        if parts.scheme == "milvus-lite":
            if not parts.path:
                raise VreidError(f"gallery URI {text!r}: give a file, e.g. milvus-lite:///data/milvus.db")
            return Location("milvus", parts.path, query.get("collection", DEFAULT_COLLECTION),
                            consistency=query.get("consistency", "Strong"))
        if not parts.hostname:
            raise VreidError(f"gallery URI {text!r}: give host:port, e.g. milvus://localhost:19530")
        collection = parts.path.strip("/") or query.get("collection", DEFAULT_COLLECTION)
        return Location("milvus", f"http://{parts.hostname}:{parts.port or 19530}", collection,
                        query.get("token", ""), query.get("db", ""), query.get("consistency", "Strong"))
    if "://" in text:
        raise VreidError(f"gallery URI {text!r}: unknown scheme; use sqlite://, milvus://, milvus-lite:// or a path")
    path = Path(text)
    if path.suffix == ".db" or path.is_file():
        return Location("sqlite", text)
    legacy = str(path) if (path / LEGACY_MANIFEST).is_file() else ""
    return Location("sqlite", str(path / DEFAULT_FILE), legacy_folder=legacy)
