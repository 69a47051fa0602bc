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
from pathlib import Path
from typing import Any

import numpy as np

from vreid.deploy.backend import (  # the interface, re-exported: users import it from here
    BATCH,
    DEFAULT_COLLECTION,
    DEFAULT_FILE,
    LEGACY_FORMAT,
    LEGACY_MANIFEST,
    UPLOADS,
    Batch,
    Gallery,
    Hit,
    Location,
    Sighting,
    parse_uri,
)
from vreid.errors import VreidError
from vreid.runfiles import CONFIG_FILE

log = logging.getLogger(__name__)

__all__ = ["BATCH", "DEFAULT_COLLECTION", "DEFAULT_FILE", "LEGACY_FORMAT", "LEGACY_MANIFEST", "UPLOADS", "Batch",
           "Gallery", "Hit", "Location", "Sighting", "create_gallery", "migrate", "open_gallery", "parse_uri",
           "upload_folder"]


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
        config = Path(folder) / CONFIG_FILE
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
