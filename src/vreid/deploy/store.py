"""The gallery's store of record: one interface, two backends chosen by a URI.

    sqlite:///abs/path/gallery.db   embedded SQLite (the default; also a plain path: FOLDER -> FOLDER/gallery.db,
    sqlite://rel/gallery.db         or FILE.db); the search structure lives in memory, kept in step with the db
    milvus://host:port[/collection][?token=..&db=..&consistency=Strong]   a Milvus server or cluster (pymilvus)
    milvus-lite:///abs/path/milvus.db[?collection=..]                     Milvus Lite, Milvus's embedded engine

Every backend stores sightings: an embedding plus what is known about the image (path, vehicle id, camera,
track, optional capture time, free-form attributes), and answers top-k cosine searches filtered on camera,
track and a capture-time window. Ids are handed out by the store and never reused.
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

from vreid.errors import VreidError
from vreid.retrieval.index import SearchFilter

log = logging.getLogger(__name__)

DEFAULT_FILE = "gallery.db"  # the database inside a gallery folder given as a plain path
LEGACY_MANIFEST = "index.json"  # the folder format before the database (vreid <= 0.1): read by `index migrate`
LEGACY_FORMAT = "vreid-gallery-index"
DEFAULT_COLLECTION = "vreid_gallery"
BATCH = 4096  # rows per batch when iterating or copying a gallery
UPLOADS = "uploads"  # `vreid serve` keeps uploaded gallery images in this folder beside a SQLite gallery


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

    @property
    @abstractmethod
    def model_config(self) -> str | None:
        """The YAML config of the model that embeds this gallery's queries, if one was stored."""

    @abstractmethod
    def set_model_config(self, text: str | None) -> None: ...

    def close(self) -> None:  # noqa: B027  (backends without resources have nothing to close)
        pass

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_rows(self, features: np.ndarray, sightings: Sequence[Sighting]) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise VreidError(f"{self.uri}: features of shape {features.shape}, the gallery holds {self.dim}-d")
        if len(features) != len(sightings):
            raise VreidError(f"{self.uri}: {len(features)} features but {len(sightings)} sightings")
        if not np.isfinite(features).all():
            raise VreidError(f"{self.uri}: features contain NaN or infinity")
        return np.ascontiguousarray(features)


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


def open_gallery(uri: str | Path, engine: str | None = None) -> Gallery:
    """An existing gallery. ``engine`` (SQLite only): override the stored in-memory search engine."""
    where = parse_uri(uri)
    if where.backend == "milvus":
        from vreid.deploy.milvus_store import MilvusGallery

        return MilvusGallery(where, str(uri))
    from vreid.deploy.sqlite_store import SqliteGallery

    if where.legacy_folder and not Path(where.target).exists():
        migrate_once(Path(where.legacy_folder), where.target)
    return SqliteGallery(where.target, str(uri), engine=engine)


def create_gallery(uri: str | Path, dim: int, overwrite: bool = False, **options: Any) -> Gallery:
    """A new, empty gallery. ``options``: the search settings (kind, engine, nlist, nprobe, hnsw_m, ef_search)."""
    where = parse_uri(uri)
    if where.backend == "milvus":
        from vreid.deploy.milvus_store import MilvusGallery

        return MilvusGallery.create(where, str(uri), dim, overwrite=overwrite, **options)
    from vreid.deploy.sqlite_store import SqliteGallery

    return SqliteGallery.create(where.target, str(uri), dim, overwrite=overwrite, **options)


def upload_folder(uri: str | Path) -> Path:
    """Where `vreid serve` keeps uploaded gallery images: beside a SQLite database, else ./vreid_uploads."""
    where = parse_uri(uri)
    return Path(where.target).parent / UPLOADS if where.backend == "sqlite" else Path("vreid_uploads")


# ------------------------------------------------------------------------------------------------- migration
def read_legacy(folder: str | Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[Sighting]]:
    """An index folder of the old format: (manifest, ids, features, sightings)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / LEGACY_MANIFEST).read_text())
    except FileNotFoundError:
        raise VreidError(f"{folder}: not a gallery index folder (no {LEGACY_MANIFEST})") from None
    except json.JSONDecodeError as exc:
        raise VreidError(f"{folder / LEGACY_MANIFEST}: broken manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != LEGACY_FORMAT:
        raise VreidError(f"{folder / LEGACY_MANIFEST}: not a {LEGACY_FORMAT} manifest")
    missing = [k for k in ("dim", "nlist", "nprobe", "hnsw_m", "ef_search", "next_id", "count")
               if type(manifest.get(k)) is not int] + ([] if isinstance(manifest.get("kind"), str) else ["kind"])
    if missing:
        raise VreidError(f"{folder / LEGACY_MANIFEST}: broken manifest (missing or invalid: {', '.join(missing)})")
    arrays = folder / manifest.get("arrays", "gallery.npz")
    try:
        with np.load(arrays, allow_pickle=False) as data:
            ids, features = data["ids"].astype(np.int64), data["features"].astype(np.float32)
            meta = {k: data[k].astype(str).tolist() for k in ("paths", "vehicle_ids", "camera_ids", "track_ids")}
    except (OSError, KeyError, ValueError) as exc:
        raise VreidError(f"{arrays}: unreadable gallery arrays ({exc})") from None
    if len(ids) != manifest.get("count") or features.shape[1:] != (manifest.get("dim"),):
        raise VreidError(f"{arrays}: holds {features.shape} features, the manifest says {manifest.get('count')} x "
                         f"{manifest.get('dim')}")
    sightings = [Sighting(p, v, c, t) for p, v, c, t in zip(meta["paths"], meta["vehicle_ids"], meta["camera_ids"],
                                                             meta["track_ids"], strict=True)]
    return manifest, ids, features, sightings


def migrate(folder: str | Path, uri: str | Path) -> Gallery:
    """``vreid index migrate``: an old-format index folder (and its config.yaml) -> a new gallery at ``uri``.
    SQLite keeps the old ids; Milvus hands out new ones."""
    manifest, ids, features, sightings = read_legacy(folder)
    options = {k: manifest[k] for k in ("kind", "nlist", "nprobe", "hnsw_m", "ef_search") if k in manifest}
    gallery = create_gallery(uri, int(manifest["dim"]), engine=manifest.get("engine", "auto"), **options)
    try:
        importer = getattr(gallery, "import_rows", None)
        if importer is not None:
            importer(ids, features, sightings, int(manifest.get("next_id", 0)))
        else:
            log.warning("%s: the new gallery hands out its own ids (the old ids are not kept)", uri)
            for start in range(0, len(ids), BATCH):
                gallery.add(features[start:start + BATCH], sightings[start:start + BATCH])
        config = Path(folder) / "config.yaml"
        if config.is_file():
            gallery.set_model_config(config.read_text())
    except BaseException:
        gallery.close()
        raise
    log.info("migrated %s (%d images) to %s", folder, len(ids), uri)
    return gallery


def migrate_once(folder: Path, target: str) -> None:
    """A plain folder of the old format is read into FOLDER/gallery.db the first time it is opened: built under
    another name and renamed into place under a lock, so concurrent openers migrate it once."""
    import fcntl
    import os

    with open(folder / ".migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if Path(target).exists():
            return
        tmp = f"{target}.migrating"
        for suffix in ("", "-wal", "-shm"):
            Path(tmp + suffix).unlink(missing_ok=True)
        migrate(folder, f"sqlite://{tmp}").close()
        os.replace(tmp, target)
        log.info("%s: the old index files were read into %s (they can be deleted)", folder, target)
