"""A searchable gallery: embeddings plus what is known about each image, searched exactly or approximately.

The arrays kept here (ids, L2-normalised features, paths, vehicle/camera/track ids) are the source of truth;
a FAISS index, when FAISS is installed and asked for, is an accelerator built from them and saved beside them.
Scores are cosine similarities (inner products of unit vectors): higher is more similar.

Kinds: ``exact`` (brute force; numpy or FAISS flat), ``ivf`` (FAISS inverted lists: ``nlist`` k-means cells,
``nprobe`` searched) and ``hnsw`` (FAISS graph, ``hnsw_m`` links, ``ef_search``) for galleries of millions.
Without FAISS every kind falls back to the exact numpy search (slower, never less accurate).

Adding and removing images never rebuilds the whole index: rows are appended or deleted, FAISS flat and IVF
indexes add/remove by id, and HNSW (which cannot delete) hides removed ids until they exceed a tenth of the
gallery, then rebuilds once.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vreid.errors import VreidError
from vreid.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

KINDS = ("exact", "ivf", "hnsw")
ENGINES = ("auto", "numpy", "faiss")
FORMAT = "vreid-gallery-index"
MANIFEST, ARRAYS, FAISS_FILE = "index.json", "gallery.npz", "faiss.index"
META = ("paths", "vehicle_ids", "camera_ids", "track_ids")
REBUILD_FRACTION = 0.1  # HNSW: rebuild once hidden (removed) entries exceed this share of the gallery


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every CPU variant it tries
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    id: int
    score: float
    path: str
    vehicle_id: str
    camera_id: str
    track_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unit(features: np.ndarray, what: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise VreidError(f"{what}: expected a 2-D feature matrix, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise VreidError(f"{what}: features contain NaN or infinity")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12), dtype=np.float32)


class GalleryIndex:
    """Gallery features and metadata with exact or approximate top-k search; see the module docstring."""

    def __init__(self, dim: int, kind: str = "exact", engine: str = "auto", nlist: int = 0, nprobe: int = 16,
                 hnsw_m: int = 32, ef_search: int = 128):
        if kind not in KINDS:
            raise VreidError(f"index kind {kind!r}: choose from {', '.join(KINDS)}")
        if engine not in ENGINES:
            raise VreidError(f"index engine {engine!r}: choose from {', '.join(ENGINES)}")
        if dim < 1 or nprobe < 1 or hnsw_m < 2 or ef_search < 1 or nlist < 0:
            raise VreidError("index options: dim, nprobe, ef_search must be >= 1, hnsw_m >= 2, nlist >= 0")
        faiss = _faiss()
        if engine == "faiss" and faiss is None:
            raise VreidError("index engine 'faiss' asked for but FAISS is not installed: pip install faiss-cpu")
        self.dim, self.kind, self.nlist, self.nprobe, self.hnsw_m, self.ef_search = dim, kind, nlist, nprobe, \
            hnsw_m, ef_search
        self.engine = "faiss" if faiss is not None and engine != "numpy" else "numpy"
        if self.engine == "numpy" and kind != "exact":
            log.warning("FAISS is not installed: the %s index falls back to exact numpy search", kind)
        self.ids = np.zeros(0, np.int64)
        self.features = np.zeros((0, dim), np.float32)
        self.meta = {k: np.zeros(0, dtype=str) for k in META}
        self.next_id = 0
        self.hidden: set[int] = set()  # removed from the arrays but still inside an HNSW graph
        self._index = None  # the FAISS accelerator, built lazily

    # ------------------------------------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self.ids)

    def add(self, features: np.ndarray, paths: Sequence[str], vehicle_ids: Sequence[str] | None = None,
            camera_ids: Sequence[str] | None = None, track_ids: Sequence[str] | None = None) -> np.ndarray:
        """Append images; returns their new ids (never reused)."""
        features = _unit(features, "add")
        n = len(features)
        if features.shape[1] != self.dim:
            raise VreidError(f"add: features have {features.shape[1]} dimensions, the index {self.dim}")
        columns = {"paths": paths, "vehicle_ids": vehicle_ids, "camera_ids": camera_ids, "track_ids": track_ids}
        for name, values in columns.items():
            if values is not None and len(values) != n:
                raise VreidError(f"add: {n} features but {len(values)} {name}")
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        self.ids = np.concatenate([self.ids, ids])
        self.features = np.concatenate([self.features, features])
        for name, values in columns.items():
            new = np.array(["" if v is None else str(v) for v in (values if values is not None else [""] * n)],
                           dtype=str)
            self.meta[name] = np.concatenate([self.meta[name].astype(str), new])
        if self._index is not None:
            self._index.add_with_ids(features, ids)
        return ids

    def remove(self, ids: Sequence[int]) -> int:
        """Remove images by id; unknown ids are an error (nothing is removed then)."""
        ids = np.unique(np.asarray(list(ids), dtype=np.int64))
        keep = ~np.isin(self.ids, ids)
        unknown = sorted(set(ids.tolist()) - set(self.ids[~keep].tolist()))
        if unknown:
            raise VreidError(f"remove: ids not in the gallery: {unknown[:10]}")
        self.ids, self.features = self.ids[keep], self.features[keep]
        for name in META:
            self.meta[name] = self.meta[name][keep]
        if self._index is not None:
            if self.kind == "hnsw":
                self.hidden.update(ids.tolist())
                if len(self.hidden) > REBUILD_FRACTION * max(len(self), 1):
                    self._index = None  # rebuilt on the next search
            else:
                faiss = _faiss()
                self._index.remove_ids(faiss.IDSelectorBatch(ids))
        return len(ids)

    def ids_of_paths(self, paths: Sequence[str]) -> list[int]:
        lookup = {p: int(i) for p, i in zip(self.meta["paths"], self.ids, strict=True)}
        missing = [p for p in paths if p not in lookup]
        if missing:
            raise VreidError(f"not in the gallery: {missing[:5]}")
        return [lookup[p] for p in paths]

    # -------------------------------------------------------------------------------------------------- search
    def _build(self):
        faiss = _faiss()
        n = len(self)
        if self.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efSearch = self.ef_search
            index = faiss.IndexIDMap2(graph)
        elif self.kind == "ivf":
            nlist = self.nlist or max(1, min(int(4 * np.sqrt(max(n, 1))), max(n // 39, 1)))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            if n < nlist:
                raise VreidError(f"ivf index: {n} images cannot train {nlist} lists (lower nlist or use 'exact')")
            index.train(self.features)
            index.nprobe = self.nprobe
            self.nlist = nlist
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if n:
            index.add_with_ids(self.features, self.ids)
        self.hidden = set()
        return index

    def search(self, queries: np.ndarray, top_k: int = 20) -> list[list[Hit]]:
        """The ``top_k`` most similar gallery images of every query, best first."""
        queries = _unit(queries, "search")
        if queries.shape[1] != self.dim:
            raise VreidError(f"search: queries have {queries.shape[1]} dimensions, the index {self.dim}")
        if top_k < 1:
            raise VreidError(f"search: top_k must be >= 1, got {top_k}")
        k = min(top_k, len(self))
        if k == 0:
            return [[] for _ in queries]
        if self.engine == "numpy":
            rows = []
            for start in range(0, len(queries), 256):  # bounded memory: 256 x gallery scores at a time
                scores = queries[start:start + 256] @ self.features.T
                part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                for r in range(len(part)):
                    order = part[r][np.lexsort((part[r], -scores[r, part[r]]))]
                    rows.append([(int(self.ids[j]), float(scores[r, j])) for j in order])
        else:
            if self._index is None:
                self._index = self._build()
            fetch = min(k + len(self.hidden), len(self) + len(self.hidden))
            scores, found = self._index.search(queries, fetch)
            rows = [[(int(i), float(s)) for s, i in zip(srow, irow, strict=True) if i >= 0 and int(i) not in
                     self.hidden][:k] for srow, irow in zip(scores, found, strict=True)]
        position = {int(i): j for j, i in enumerate(self.ids)}
        return [[self._hit(rank, i, s, position[i]) for rank, (i, s) in enumerate(row, 1)] for row in rows]

    def _hit(self, rank: int, id_: int, score: float, j: int) -> Hit:
        m = self.meta
        return Hit(rank, id_, score, str(m["paths"][j]), str(m["vehicle_ids"][j]), str(m["camera_ids"][j]),
                   str(m["track_ids"][j]))

    # ------------------------------------------------------------------------------------------------- storage
    def options(self) -> dict[str, Any]:
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search}

    def save(self, folder: str | Path) -> Path:
        """Arrays, then the FAISS index, then the manifest (last: a crash leaves the previous manifest)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, ids=self.ids, features=self.features, **self.meta)
        atomic_write_bytes(folder / ARRAYS, buffer.getvalue())
        faiss_saved = False
        if self.engine == "faiss" and self._index is not None:
            faiss = _faiss()
            atomic_write_bytes(folder / FAISS_FILE, faiss.serialize_index(self._index).tobytes())
            faiss_saved = True
        manifest = {"format": FORMAT, "version": 1, "dim": self.dim, "count": len(self), "next_id": self.next_id,
                    "engine": self.engine, "faiss_index": faiss_saved, "hidden": sorted(self.hidden),
                    **self.options()}
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, engine: str = "auto") -> GalleryIndex:
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise VreidError(f"{folder}: not a gallery index (no {MANIFEST}; build one with `vreid index build`)") \
                from None
        except json.JSONDecodeError as exc:
            raise VreidError(f"{folder / MANIFEST}: broken manifest ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise VreidError(f"{folder / MANIFEST}: not a {FORMAT} manifest")
        index = cls(manifest["dim"], manifest["kind"], engine, manifest["nlist"], manifest["nprobe"],
                    manifest["hnsw_m"], manifest["ef_search"])
        try:
            with np.load(folder / ARRAYS, allow_pickle=False) as data:
                index.ids, index.features = data["ids"].astype(np.int64), data["features"].astype(np.float32)
                index.meta = {k: data[k].astype(str) for k in META}
        except (OSError, KeyError, ValueError) as exc:
            raise VreidError(f"{folder / ARRAYS}: unreadable gallery arrays ({exc})") from None
        if len(index.ids) != manifest["count"] or index.features.shape[1:] != (index.dim,):
            raise VreidError(f"{folder}: {ARRAYS} holds {index.features.shape} features, the manifest says "
                             f"{manifest['count']} x {index.dim} (interrupted write? rebuild the index)")
        index.next_id = int(manifest["next_id"])
        if index.engine == "faiss" and manifest.get("faiss_index") and (folder / FAISS_FILE).is_file():
            faiss = _faiss()
            loaded = faiss.deserialize_index(np.frombuffer((folder / FAISS_FILE).read_bytes(), dtype=np.uint8))
            if loaded.ntotal == len(index) + len(manifest.get("hidden", [])):
                index._index, index.hidden = loaded, set(manifest.get("hidden", []))
            else:
                log.warning("%s does not match the gallery arrays: rebuilding it", folder / FAISS_FILE)
        return index

    @classmethod
    def from_features(cls, features: np.ndarray, paths: Sequence[str], vehicle_ids: Sequence[str] | None = None,
                      camera_ids: Sequence[str] | None = None, track_ids: Sequence[str] | None = None,
                      **options: Any) -> GalleryIndex:
        features = np.asarray(features)
        if features.ndim != 2 or len(features) == 0:
            raise VreidError(f"cannot build an index from features of shape {features.shape}")
        index = cls(features.shape[1], **options)
        index.add(features, paths, vehicle_ids, camera_ids, track_ids)
        if index.engine == "faiss":
            index._index = index._build()
        return index
