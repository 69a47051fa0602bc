"""A searchable gallery: embeddings plus what is known about each image, searched exactly or approximately.

The arrays kept here (ids, L2-normalised features, paths, vehicle/camera/track ids) are the source of truth;
a FAISS index, when FAISS is installed and asked for, is an accelerator built from them and saved beside them.
Scores are cosine similarities (inner products of unit vectors): higher is more similar.

Kinds: ``exact`` (brute force; numpy or FAISS flat), ``ivf`` (FAISS inverted lists: ``nlist`` k-means cells,
``nprobe`` searched) and ``hnsw`` (FAISS graph, ``hnsw_m`` links, ``ef_search``) for galleries of millions.
Without FAISS every kind falls back to the exact numpy search (slower, never less accurate); an IVF index whose
gallery has shrunk below its list count falls back to exact FAISS search the same way.

Adding and removing images never rebuilds the whole index: rows are appended or deleted, FAISS flat and IVF
indexes add/remove by id, and HNSW (which cannot delete) hides removed ids until they exceed a tenth of the
gallery, then rebuilds once.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
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
MANIFEST = "index.json"  # names the current arrays and FAISS files: written last, so a crash keeps the old state
META = ("paths", "vehicle_ids", "camera_ids", "track_ids")
REBUILD_FRACTION = 0.1  # HNSW: rebuild once hidden (removed) entries exceed this share of the gallery
NUMPY_BLOCK_BYTES = 256 * 2**20  # numpy search: scores of a block of queries against the whole gallery


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
        """``engine``: auto (FAISS when installed), numpy, or faiss (an error without FAISS); ``nlist`` 0 lets
        the IVF list count follow the gallery size at every (re)build."""
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
            log.warning("%s: the %s index runs as exact numpy search", "numpy engine chosen" if engine == "numpy"
                        else "FAISS is not installed", kind)
        self.trained_nlist = 0  # IVF lists of the current FAISS index (0: none built)
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
            if self.kind == "ivf" and not self.trained_nlist:
                self._index = None  # searched exactly while too small to train: try IVF again at the next search
            else:
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
        nlist = self.nlist or max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39))  # FAISS wants >= 39 points per list
        self.trained_nlist = 0
        if self.kind == "ivf" and n < nlist:
            log.warning("ivf index: %d images cannot train %d lists; searching exactly until there are more", n, nlist)
        if self.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efSearch = self.ef_search
            index = faiss.IndexIDMap2(graph)
        elif self.kind == "ivf" and n >= nlist:
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(self.features)
            index.nprobe = self.nprobe
            self.trained_nlist = nlist
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if n:
            index.add_with_ids(self.features, self.ids)
        self.hidden = set()
        return index

    def search(self, queries: np.ndarray, top_k: int = 20, device: str | None = None) -> list[list[Hit]]:
        """The ``top_k`` most similar gallery images of every query, best first.

        ``device``: a torch device ("cuda") for the exact numpy engine's products and top-k
        (:mod:`vreid.retrieval.accel`); ``None`` (default) computes them with numpy.
        """
        queries = _unit(queries, "search")
        if queries.shape[1] != self.dim:
            raise VreidError(f"search: queries have {queries.shape[1]} dimensions, the index {self.dim}")
        if top_k < 1:
            raise VreidError(f"search: top_k must be >= 1, got {top_k}")
        k = min(top_k, len(self))
        if k == 0:
            return [[] for _ in queries]
        if self.engine == "numpy" and device is not None:
            from vreid.retrieval.accel import top_k_similar

            scores, found = top_k_similar(queries, self.features, k, device)
            rows = [[(int(self.ids[j]), float(v)) for v, j in zip(srow, irow, strict=True)]
                    for srow, irow in zip(scores, found, strict=True)]
        elif self.engine == "numpy":
            rows = []
            block = max(1, min(1024, NUMPY_BLOCK_BYTES // (16 * len(self))))  # scores + argpartition, bounded
            for start in range(0, len(queries), block):
                scores = queries[start:start + block] @ self.features.T
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
        return [[self._hit(rank, i, s) for rank, (i, s) in enumerate(row, 1)] for row in rows]

    def _hit(self, rank: int, id_: int, score: float) -> Hit:
        j = int(np.searchsorted(self.ids, id_))  # ids are increasing (appended so, removal keeps order; checked)
        if j >= len(self.ids) or self.ids[j] != id_:
            raise VreidError(f"index inconsistency: id {id_} returned by the search is not in the gallery arrays")
        m = self.meta
        return Hit(rank, id_, score, str(m["paths"][j]), str(m["vehicle_ids"][j]), str(m["camera_ids"][j]),
                   str(m["track_ids"][j]))

    # ------------------------------------------------------------------------------------------------- storage
    def options(self) -> dict[str, Any]:
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search}

    def save(self, folder: str | Path) -> Path:
        """New arrays and FAISS files under fresh names, then the manifest naming them, then the old files go:
        a crash at any point leaves a folder that loads (the old or the new state)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        arrays = f"gallery.{token}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, ids=self.ids, features=self.features, **self.meta)
        atomic_write_bytes(folder / arrays, buffer.getvalue())
        faiss_file = ""
        if self.engine == "faiss" and self._index is not None:
            faiss_file = f"faiss.{token}.index"
            atomic_write_bytes(folder / faiss_file, _faiss().serialize_index(self._index).tobytes())
        manifest = {"format": FORMAT, "version": 1, "dim": self.dim, "count": len(self), "next_id": self.next_id,
                    "engine": self.engine, "arrays": arrays, "faiss_index": faiss_file, "hidden": sorted(self.hidden),
                    "trained_nlist": self.trained_nlist, **self.options()}
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        for old in [*folder.glob("gallery.*.npz"), *folder.glob("faiss.*.index")]:
            if old.name not in (arrays, faiss_file):
                old.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, engine: str | None = None) -> GalleryIndex:
        """``engine`` None: the one the index was built with (numpy where FAISS is no longer installed)."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise VreidError(f"{folder}: not a gallery index (no {MANIFEST}; build one with `vreid index build`)") \
                from None
        except json.JSONDecodeError as exc:
            raise VreidError(f"{folder / MANIFEST}: broken manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise VreidError(f"{folder / MANIFEST}: not a {FORMAT} manifest")
        missing = [k for k in ("dim", "nlist", "nprobe", "hnsw_m", "ef_search", "next_id", "count")
                   if type(manifest.get(k)) is not int] + ([] if isinstance(manifest.get("kind"), str) else ["kind"])
        if missing:
            raise VreidError(f"{folder / MANIFEST}: broken manifest (missing or invalid: {', '.join(missing)})")
        if engine is None:
            engine = "numpy" if manifest.get("engine") == "numpy" else "auto"
        index = cls(manifest["dim"], manifest["kind"], engine, manifest["nlist"], manifest["nprobe"],
                    manifest["hnsw_m"], manifest["ef_search"])
        arrays = folder / manifest.get("arrays", "gallery.npz")
        try:
            with np.load(arrays, allow_pickle=False) as data:
                index.ids, index.features = data["ids"].astype(np.int64), data["features"].astype(np.float32)
                index.meta = {k: data[k].astype(str) for k in META}
        except (OSError, KeyError, ValueError) as exc:
            raise VreidError(f"{arrays}: unreadable gallery arrays ({exc})") from None
        index.next_id = int(manifest["next_id"])
        if len(index.ids) != manifest["count"] or index.features.shape[1:] != (index.dim,):
            raise VreidError(f"{arrays}: holds {index.features.shape} features, the manifest says "
                             f"{manifest['count']} x {index.dim} (rebuild the index)")
        if len(index.ids) and (np.any(np.diff(index.ids) <= 0) or index.ids[-1] >= index.next_id):
            raise VreidError(f"{arrays}: ids are not increasing or reach next_id {index.next_id} (rebuild the index)")
        faiss_file = folder / manifest["faiss_index"] if manifest.get("faiss_index") else None
        if index.engine == "faiss" and faiss_file is not None and faiss_file.is_file():
            faiss = _faiss()
            loaded = faiss.deserialize_index(np.frombuffer(faiss_file.read_bytes(), dtype=np.uint8))
            if loaded.ntotal == len(index) + len(manifest.get("hidden", [])):
                index._index, index.hidden = loaded, set(manifest.get("hidden", []))
                index.trained_nlist = int(manifest.get("trained_nlist", 0))
            else:
                log.warning("%s does not match the gallery arrays: rebuilding it", faiss_file)
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
