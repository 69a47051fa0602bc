"""The scale-out gallery backend: a Milvus collection through pymilvus (a server, a cluster, or Milvus Lite).

One collection per gallery: an auto-generated INT64 primary key (the gallery id), the FLOAT_VECTOR embedding
(stored unit-length; inner-product metric = cosine), VARCHAR metadata (Milvus caps a VARCHAR at 65,535 bytes),
a nullable DOUBLE capture time and a JSON attributes field. The vreid settings and the model config are collection
properties. Searches and filters run inside Milvus; reads use the consistency level of the URI (default Strong:
a search sees every acknowledged write, as with SQLite).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vreid.deploy.backend import BATCH, Batch, Gallery, Hit, Location, Sighting
from vreid.deploy.index import SearchFilter, check_options, index_options, search_queries, unit_rows
from vreid.errors import VreidError, require_package

log = logging.getLogger(__name__)

MAX_VARCHAR = 65_535  # Milvus's largest VARCHAR (bytes)
TEXT_FIELDS = ("path", "vehicle_id", "camera_id", "track_id")
OUTPUT = [*TEXT_FIELDS, "captured_at", "attributes"]
SETTINGS_KEY, METADATA_PREFIX = "vreid.settings", "vreid."  # metadata: vreid.model_config, ...
# vreid kinds -> Milvus index types and the parameters that carry over
INDEX_TYPES = {"exact": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}


def _quote(value: str) -> str:
    """A string literal for a Milvus boolean expression (JSON quoting escapes quotes and backslashes)."""
    return json.dumps(value, ensure_ascii=False)


def filter_expression(where: SearchFilter | None) -> str:
    if where is None:
        return ""
    terms = []
    if where.cameras:
        terms.append(f"camera_id in [{', '.join(map(_quote, where.cameras))}]")
    if where.tracks:
        terms.append(f"track_id in [{', '.join(map(_quote, where.tracks))}]")
    if where.time_from is not None:
        terms.append(f"captured_at >= {float(where.time_from)!r}")
    if where.time_to is not None:
        terms.append(f"captured_at <= {float(where.time_to)!r}")
    return " and ".join(terms)


def _sighting(entity: dict[str, Any]) -> Sighting:
    return Sighting(entity["path"], entity["vehicle_id"], entity["camera_id"], entity["track_id"],
                    entity.get("captured_at"), entity.get("attributes") or {})


class MilvusGallery(Gallery):
    """A gallery in a Milvus collection; see the module docstring."""

    def __init__(self, where: Location, uri: str, client: Any = None):
        self.uri, self.where = uri, where
        self.collection = where.collection
        self.client = client or self._client(where, uri)
        if not self._call("open", self.client.has_collection, self.collection):
            raise VreidError(f"{uri}: no collection {self.collection!r} (build one with `vreid index build`)")
        properties = self._call("open", self.client.describe_collection, self.collection).get("properties", {})
        if SETTINGS_KEY not in properties:
            raise VreidError(f"{uri}: collection {self.collection!r} was not made by vreid (no {SETTINGS_KEY})")
        self.options = json.loads(properties[SETTINGS_KEY])
        self.dim = int(self.options["dim"])

    @staticmethod
    def _client(where: Location, uri: str):
        pymilvus = require_package("pymilvus", "milvus")
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its errors are reported as VreidError instead
        if not where.target.startswith("http"):  # Milvus Lite's in-process server logs calls it does not implement
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        kwargs = {k: v for k, v in (("token", where.token), ("db_name", where.db_name)) if v}
        if not where.target.startswith("http"):
            Path(where.target).parent.mkdir(parents=True, exist_ok=True)
        try:
            return pymilvus.MilvusClient(uri=where.target, **kwargs)
        except Exception as exc:  # pymilvus raises MilvusException, grpc and OS errors
            raise VreidError(f"{uri}: cannot connect to Milvus ({exc})") from None

    def _call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VreidError:
            raise
        except Exception as exc:
            raise VreidError(f"{self.uri}: Milvus refused {what} ({str(exc).strip()[:300]})") from None

    @classmethod
    def create(cls, where: Location, uri: str, dim: int, overwrite: bool = False, **options: Any) -> MilvusGallery:
        options = index_options(**options)
        check_options(dim, **options)
        pymilvus = require_package("pymilvus", "milvus")
        client = cls._client(where, uri)
        probe = cls.__new__(cls)
        probe.uri = uri
        if probe._call("create", client.has_collection, where.collection):
            if not overwrite:
                raise VreidError(f"{uri} already holds collection {where.collection!r}: pass --overwrite to "
                                 "replace it")
            probe._call("create", client.drop_collection, where.collection)
        types = pymilvus.DataType
        schema = pymilvus.MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("id", types.INT64, is_primary=True)
        schema.add_field("embedding", types.FLOAT_VECTOR, dim=dim)
        for name in TEXT_FIELDS:
            schema.add_field(name, types.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("captured_at", types.DOUBLE, nullable=True)
        schema.add_field("attributes", types.JSON)
        index_params = client.prepare_index_params()
        kind = options["kind"]
        params = {"ivf": {"nlist": options["nlist"] or 1024}, "hnsw": {"M": options["hnsw_m"], "efConstruction":
                                                                       max(2 * options["hnsw_m"], 64)}}.get(kind, {})
        index_params.add_index("embedding", index_type=INDEX_TYPES[kind], metric_type="IP", params=params)
        probe._call("create", client.create_collection, where.collection, schema=schema, index_params=index_params,
                    consistency_level=where.consistency)
        probe._call("create", client.alter_collection_properties, where.collection,
                    properties={SETTINGS_KEY: json.dumps({"dim": dim, **options})})
        return cls(where, uri, client)

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------------------------------------ writes
    def add(self, features: np.ndarray, sightings: Sequence[Sighting]) -> list[int]:
        features = unit_rows(self._check_rows(features, sightings), "add")
        rows = []
        for s, f in zip(sightings, features, strict=True):
            for name in TEXT_FIELDS:
                try:
                    size = len(getattr(s, name).encode())
                except UnicodeEncodeError:  # a file name with bytes that are not UTF-8 (surrogate escapes)
                    raise VreidError(f"{self.uri}: {name} of {s.path[:80]!r} is not valid UTF-8, which Milvus cannot "
                                     "store: rename the file, or use a SQLite gallery") from None
                if size > MAX_VARCHAR:
                    raise VreidError(f"{self.uri}: {name} of {s.path[:80]!r} is over Milvus's limit of "
                                     f"{MAX_VARCHAR} bytes")
            rows.append({"embedding": f.tolist(), **{n: getattr(s, n) for n in TEXT_FIELDS},
                         "captured_at": s.captured_at, "attributes": json.loads(s.attributes_json())})
        if not rows:
            return []
        result = self._call("the insert", self.client.insert, self.collection, rows)
        return [int(i) for i in result["ids"]]

    def remove(self, ids: Sequence[int]) -> int:
        ids = sorted({int(i) for i in ids})
        found = set(self.get(ids))
        unknown = [i for i in ids if i not in found]
        if unknown:
            raise VreidError(f"remove: ids not in the gallery: {unknown[:10]}")
        if ids:
            self._call("the delete", self.client.delete, self.collection, ids=ids)
        return len(ids)

    def set_metadata(self, key: str, text: str | None) -> None:
        prop = METADATA_PREFIX + self._check_key(key)
        if text is None:
            self._call("the change", self.client.drop_collection_properties, self.collection, property_keys=[prop])
        else:
            self._call("the change", self.client.alter_collection_properties, self.collection,
                       properties={prop: text})

    # ------------------------------------------------------------------------------------------------- reads
    def metadata(self, key: str) -> str | None:
        prop = METADATA_PREFIX + self._check_key(key)
        return self._call("the read", self.client.describe_collection, self.collection).get(
            "properties", {}).get(prop)

    def count(self) -> int:
        rows = self._call("the count", self.client.query, self.collection, filter="", output_fields=["count(*)"],
                          consistency_level=self.where.consistency)
        return int(rows[0]["count(*)"])

    def get(self, ids: Sequence[int]) -> dict[int, Sighting]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        rows = self._call("the read", self.client.get, self.collection, ids=ids, output_fields=OUTPUT)
        return {int(r["id"]): _sighting(r) for r in rows}

    def ids_of_paths(self, paths: Sequence[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start:start + 500]
            rows = self._call("the query", self.client.query, self.collection,
                              filter=f"path in [{', '.join(map(_quote, chunk))}]", output_fields=["path"],
                              consistency_level=self.where.consistency)
            for r in sorted(rows, key=lambda r: r["id"]):
                out.setdefault(r["path"], []).append(int(r["id"]))
        return out

    def batches(self, size: int = BATCH) -> Iterator[Batch]:
        iterator = self._call("the read", self.client.query_iterator, self.collection, batch_size=size, filter="",
                              output_fields=["embedding", *OUTPUT])
        try:
            while rows := self._call("the read", iterator.next):
                rows = sorted(rows, key=lambda r: r["id"])
                yield Batch(np.array([r["id"] for r in rows], np.int64),
                            np.array([r["embedding"] for r in rows], np.float32).reshape(len(rows), self.dim),
                            [_sighting(r) for r in rows])
        finally:
            iterator.close()

    def settings(self) -> dict[str, Any]:
        return {"backend": "milvus", "uri": self.uri, "collection": self.collection, "images": self.count(),
                "consistency": self.where.consistency, **self.options}

    def search(self, queries: np.ndarray, top_k: int = 20, where: SearchFilter | None = None,
               device: str | None = None) -> list[list[Hit]]:  # the server searches: ``device`` does not apply
        queries = search_queries(queries, self.dim, top_k)
        if len(queries) == 0:
            return []
        params = {"ivf": {"nprobe": self.options["nprobe"]}, "hnsw": {"ef": max(self.options["ef_search"], top_k)}
                  }.get(self.options["kind"], {})
        results = self._call("the search", self.client.search, self.collection, queries.tolist(), limit=top_k,
                             filter=filter_expression(where), output_fields=OUTPUT,
                             search_params={"metric_type": "IP", "params": params},
                             consistency_level=self.where.consistency)
        out = []
        for row in results:
            ranked = sorted(row, key=lambda h: (-h["distance"], h["id"]))  # ties: lower id first, as SQLite
            out.append([Hit.of(rank, int(h["id"]), float(h["distance"]), _sighting(h["entity"]))
                        for rank, h in enumerate(ranked, 1)])
        return out
