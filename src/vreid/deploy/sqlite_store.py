"""The embedded gallery backend: SQLite (standard library) as the store of record, searched in memory.

Tables: ``sightings`` (id, metadata, float32 embedding BLOB), ``changes`` (a log of committed adds and removes,
ordered by ``seq``) and ``settings`` (format, dimension, search settings, model config, camera statistics). Every
change is one transaction (WAL journal, ``synchronous=FULL``: a committed change survives a killed process or a
crash), written with BEGIN IMMEDIATE so writers queue (``busy_timeout``) instead of failing.

Readers keep a :class:`~vreid.deploy.index.GalleryIndex` in memory: loaded once from ``sightings``, then
before every search they read the change-log rows after the last one applied and apply only those, all in one
read transaction (one snapshot), so a running service sees what other processes committed, costs nothing when
nothing changed, and memory only ever holds committed rows: a failed write leaves memory and disk in agreement.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vreid.deploy.backend import BATCH, CAMERA_STATS_KEY, Batch, Gallery, Hit, Sighting
from vreid.deploy.index import GalleryIndex, SearchFilter, check_options, index_options, unit_rows
from vreid.errors import VreidError

log = logging.getLogger(__name__)

FORMAT = "vreid-gallery-sqlite"
VERSION = 2  # read up to; 2 = holds camera statistics (older readers must refuse it, not ignore them)
PLAIN_VERSION = 1  # written by create: a gallery without camera statistics stays readable by version-1 readers
PAGE_SIZE = 8192  # a 512-d float32 row (2 KiB) and its metadata: three rows to a page
BUSY_TIMEOUT_S = 60.0  # a writer waits this long for another writer's transaction before failing
PARAMS = 500  # ids per IN (...) list
ADD, REMOVE = 1, -1
SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sightings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL, vehicle_id TEXT NOT NULL, camera_id TEXT NOT NULL, track_id TEXT NOT NULL,
    captured_at REAL, attributes TEXT NOT NULL, embedding BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS sightings_path ON sightings (path);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op INTEGER NOT NULL, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL);
"""
META_COLUMNS = "path, vehicle_id, camera_id, track_id, captured_at, attributes"


def _db_path(path: str) -> str | bytes:
    """A path as stored: text, or its bytes (a BLOB) when it holds bytes that are not UTF-8 (kept by Python as
    surrogate escapes, as os.listdir gives them), which SQLite text cannot hold; the file can still be opened."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        try:
            return path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise VreidError(f"sighting {path!r}: not a file name (holds a lone surrogate)") from None


def _path(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _sighting(row: Sequence[Any]) -> Sighting:
    return Sighting(_path(row[0]), row[1], row[2], row[3], row[4], json.loads(row[5]))


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), PARAMS):
        yield ids[start:start + PARAMS]


class SqliteGallery(Gallery):
    """A gallery in one SQLite file; see the module docstring. Safe to share between threads."""

    def __init__(self, path: str | Path, uri: str | None = None, engine: str | None = None):
        self.path, self.uri = Path(path), uri or str(path)
        if not self.path.is_file():
            raise VreidError(f"{self.uri}: no gallery there (build one with `vreid index build`)")
        self._lock = threading.RLock()
        self._db = self._connect(self.path, self.uri)
        try:
            settings = dict(self._db.execute("SELECT key, value FROM settings").fetchall())
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise VreidError(f"{self.uri}: not a gallery database ({exc})") from None
        if settings.get("format") != FORMAT:
            self._db.close()
            raise VreidError(f"{self.uri}: not a {FORMAT} database")
        if int(settings.get("version", 0)) > VERSION:
            self._db.close()
            raise VreidError(f"{self.uri}: written by a newer vreid (format version {settings['version']})")
        self.dim = int(settings["dim"])
        self.options = json.loads(settings["index"])
        options = {**self.options, **({"engine": engine} if engine else {})}
        self.index = GalleryIndex(self.dim, **options)
        self._seq = -1  # last change-log row applied to self.index (-1: nothing loaded yet)

    @staticmethod
    def _connect(path: Path, uri: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise VreidError(f"{uri}: cannot open the gallery database ({exc})") from None
        return db

    @classmethod
    def create(cls, path: str | Path, uri: str | None = None, dim: int = 0, overwrite: bool = False,
               **options: Any) -> SqliteGallery:
        path = Path(path)
        uri = uri or str(path)
        options = index_options(**options)
        check_options(dim, **options)
        if path.exists():
            if not overwrite:
                raise VreidError(f"{uri} already holds a gallery: pass --overwrite to replace it")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = cls._connect(path, uri)
        try:
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection uses the WAL
            db.executescript(SCHEMA)  # IF NOT EXISTS: a concurrent creator of the same file does no harm
        except sqlite3.Error as exc:
            db.close()
            raise VreidError(f"{uri}: cannot create the gallery database ({exc})") from None
        try:
            with _transaction(db, uri):
                db.executemany("INSERT OR IGNORE INTO settings VALUES (?, ?)",
                               [("format", FORMAT), ("version", str(PLAIN_VERSION)), ("dim", str(dim)),
                                ("index", json.dumps(options))])
        finally:
            db.close()
        return cls(path, uri)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------------------ writes
    def add(self, features: np.ndarray, sightings: Sequence[Sighting]) -> list[int]:
        features = unit_rows(self._check_rows(features, sightings), "add")
        rows = [(_db_path(s.path), s.vehicle_id, s.camera_id, s.track_id, s.captured_at, s.attributes_json(),
                 f.tobytes())
                for s, f in zip(sightings, features, strict=True)]
        if not rows:
            return []
        with self._lock, _transaction(self._db, self.uri):
            last = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'sightings'").fetchone()
            first = (last[0] if last else 0) + 1
            ids = list(range(first, first + len(rows)))
            self._db.executemany(f"INSERT INTO sightings (id, {META_COLUMNS}, embedding) VALUES (?,?,?,?,?,?,?,?)",
                                 [(i, *r) for i, r in zip(ids, rows, strict=True)])
            self._db.execute("INSERT INTO changes (op, first_id, last_id) VALUES (?, ?, ?)", (ADD, ids[0], ids[-1]))
        return ids

    def import_rows(self, ids: np.ndarray, features: np.ndarray, sightings: Sequence[Sighting],
                    next_id: int) -> None:
        """Rows under given ids (a migration keeps them), in one transaction; later adds start past ``next_id``."""
        features = unit_rows(self._check_rows(features, sightings), "import")
        rows = [(int(i), _db_path(s.path), s.vehicle_id, s.camera_id, s.track_id, s.captured_at, s.attributes_json(),
                 f.tobytes()) for i, s, f in zip(ids, sightings, features, strict=True)]
        with self._lock, _transaction(self._db, self.uri):
            self._db.executemany(f"INSERT INTO sightings (id, {META_COLUMNS}, embedding) VALUES (?,?,?,?,?,?,?,?)",
                                 rows)
            if rows:
                self._db.execute("INSERT INTO changes (op, first_id, last_id) VALUES (?, ?, ?)",
                                 (ADD, rows[0][0], rows[-1][0]))
            self._db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'sightings'", (next_id - 1,))
            self._db.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'sightings', ? WHERE NOT EXISTS "
                             "(SELECT 1 FROM sqlite_sequence WHERE name = 'sightings')", (next_id - 1,))

    def remove(self, ids: Sequence[int]) -> int:
        ids = sorted({int(i) for i in ids})
        with self._lock, _transaction(self._db, self.uri):
            found = set()
            for chunk in _chunks(ids):
                found.update(r[0] for r in self._db.execute(
                    f"SELECT id FROM sightings WHERE id IN ({','.join('?' * len(chunk))})", chunk))
            unknown = [i for i in ids if i not in found]
            if unknown:
                raise VreidError(f"remove: ids not in the gallery: {unknown[:10]}")
            for chunk in _chunks(ids):
                self._db.execute(f"DELETE FROM sightings WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            self._db.executemany("INSERT INTO changes (op, first_id, last_id) VALUES (?, ?, ?)",
                                 [(REMOVE, i, i) for i in ids])
        return len(ids)

    def set_metadata(self, key: str, text: str | None) -> None:
        key = self._check_key(key)
        with self._lock, _transaction(self._db, self.uri):
            if text is None:
                self._db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                self._db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, text))
                if key == CAMERA_STATS_KEY:
                    self._db.execute("INSERT OR REPLACE INTO settings VALUES ('version', ?)", (str(VERSION),))

    # ------------------------------------------------------------------------------------------------- reads
    def metadata(self, key: str) -> str | None:
        key = self._check_key(key)
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0])

    def get(self, ids: Sequence[int]) -> dict[int, Sighting]:
        with self._lock:
            return self._get(ids)

    def _get(self, ids: Sequence[int]) -> dict[int, Sighting]:
        out = {}
        for chunk in _chunks(ids):
            for row in self._db.execute(f"SELECT id, {META_COLUMNS} FROM sightings WHERE id IN "
                                        f"({','.join('?' * len(chunk))})", chunk):
                out[int(row[0])] = _sighting(row[1:])
        return out

    def ids_of_paths(self, paths: Sequence[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        with self._lock:
            for start in range(0, len(paths), PARAMS):
                chunk = [_db_path(p) for p in paths[start:start + PARAMS]]
                for path, id_ in self._db.execute(f"SELECT path, id FROM sightings WHERE path IN "
                                                  f"({','.join('?' * len(chunk))}) ORDER BY id", chunk):
                    out.setdefault(_path(path), []).append(int(id_))
        return out

    def batches(self, size: int = BATCH) -> Iterator[Batch]:
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(f"SELECT id, {META_COLUMNS}, embedding FROM sightings WHERE id > ? "
                                        "ORDER BY id LIMIT ?", (last, size)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield Batch(np.array([r[0] for r in rows], np.int64), self._embeddings([r[7] for r in rows]),
                        [_sighting(r[1:7]) for r in rows])

    def _embeddings(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), self.dim)

    def settings(self) -> dict[str, Any]:
        with self._lock:
            self.refresh()
            return {"backend": "sqlite", "uri": self.uri, "dim": self.dim, "images": len(self.index),
                    "engine": self.index.engine, **self.index.options()}

    def search(self, queries: np.ndarray, top_k: int = 20, where: SearchFilter | None = None,
               device: str | None = None) -> list[list[Hit]]:
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot: the rows searched are the rows whose metadata is read
            try:
                self._sync()
                matches = self.index.search(queries, top_k, where, device=device)
                meta = self._get(sorted({m.id for row in matches for m in row}))
            finally:
                self._db.execute("COMMIT")
        return [[Hit.of(rank, m.id, m.score, meta[m.id]) for rank, m in enumerate(row, 1)] for row in matches]

    def refresh(self) -> int:
        """Apply what other connections committed since the last search; returns the rows in memory."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._sync()
            finally:
                self._db.execute("COMMIT")
            return len(self.index)

    # ------------------------------------------------------------------------------------------ memory sync
    def _load_rows(self, sql: str, params: Sequence[Any]) -> int:
        cursor = self._db.execute(sql, params)
        n = 0
        while rows := cursor.fetchmany(BATCH):
            self.index.add([r[0] for r in rows], self._embeddings([r[4] for r in rows]), [r[1] for r in rows],
                           [r[2] for r in rows], [r[3] for r in rows])
            n += len(rows)
        return n

    def _sync(self) -> None:
        """Bring ``self.index`` up to the snapshot of the open read transaction (the caller holds the lock)."""
        columns = "SELECT id, camera_id, track_id, captured_at, embedding FROM sightings"
        if self._seq < 0:  # first load: the table itself, then only log rows past its snapshot
            self._seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            self.index.reserve(self._db.execute("SELECT count(*) FROM sightings").fetchone()[0])
            n = self._load_rows(f"{columns} ORDER BY id", ())
            log.info("%s: %d images loaded into memory", self.uri, n)
            return
        events = self._db.execute("SELECT seq, op, first_id, last_id FROM changes WHERE seq > ? ORDER BY seq",
                                  (self._seq,)).fetchall()
        removed: list[int] = []
        for seq, op, first, last in events:
            if op == ADD:
                if removed:
                    self._remove_present(removed)
                    removed = []
                self._load_rows(f"{columns} WHERE id BETWEEN ? AND ? ORDER BY id", (first, last))
            else:
                removed.append(first)
            self._seq = seq
        if removed:
            self._remove_present(removed)

    def _remove_present(self, ids: list[int]) -> None:
        # a row added and removed after the last sync was never loaded (the snapshot no longer holds it)
        present = [i for i in ids if self.index.contains(i)]
        if present:
            self.index.remove(present)


@contextmanager
def _transaction(db: sqlite3.Connection, uri: str) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; on any error ROLLBACK, and database errors become a VreidError."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise VreidError(f"{uri}: the gallery database refused the change ({exc}); nothing was changed") from None
    try:
        yield
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise VreidError(f"{uri}: the gallery database refused the change ({exc}); nothing was changed") \
                from None
        raise
