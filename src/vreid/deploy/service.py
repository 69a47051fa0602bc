"""``vreid serve``: the gallery index and its model behind HTTP (FastAPI).

    GET    /health            status, gallery size, backend and search settings
    POST   /search            multipart field ``image``; query ``top_k``, filters ``camera`` and ``track`` (repeat
                              for several), ``time_from``, ``time_to`` (ISO 8601 or epoch s) -> ranked gallery images
    POST   /gallery           multipart field(s) ``images`` (+ optional form ``vehicle_id``, ``camera_id``,
                              ``track_id``, ``captured_at``, ``attributes`` (JSON object)) -> new ids
    DELETE /gallery/{id}      remove one gallery image

Every upload is checked before the model sees it: body size (streamed, so a huge upload is cut off early),
emptiness, decodability and pixel count. A bad request gets a 4xx with a message and the service keeps serving.
Uploaded gallery images are stored in an ``uploads/`` folder beside the gallery database (named by content hash)
and every change is one database transaction, committed before it is answered: a restart loses nothing, and
changes other processes commit (`vreid index add`) are searched from the next request on. A change the database
refuses (disk full, read-only file) is answered 507 and leaves nothing behind. Model calls and gallery changes are
serialised by one lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from PIL import Image, UnidentifiedImageError

from vreid.errors import VreidError

try:
    from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
except ImportError:
    raise VreidError("the HTTP service needs FastAPI: pip install 'vreid[serve]'") from None

from vreid.deploy.runtime import require
from vreid.deploy.store import Sighting, open_gallery, upload_folder
from vreid.fileio import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 8 * 2**20  # whole request body
    max_pixels: int = 25_000_000  # width x height of one image
    max_files: int = 64  # images per POST /gallery
    max_top_k: int = 1000


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, by header or while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send) -> None:
        body = json.dumps({"detail": f"request body over the limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send)
        total, started, rejected = 0, False, False

        async def counted_receive():
            # a body without Content-Length (chunked) is counted as it streams in; past the limit the client
            # gets its 413 at once and the application sees a disconnect (it stops reading, answers nothing)
            nonlocal total, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes and not started:
                    rejected = True
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            if rejected:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not rejected:  # after a rejection the application's complaint about the cut body is expected
                raise


def decode_upload(data: bytes, name: str, limits: Limits) -> tuple[Image.Image, str]:
    """Bytes of one uploaded file -> (RGB image, its format as a file suffix), or an HTTP error naming the file."""
    if not data:
        raise HTTPException(400, f"{name}: empty upload")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size  # read from the header, before any pixel is decoded
            if width * height > limits.max_pixels:
                raise HTTPException(413, f"{name}: image {width}x{height} has more than {limits.max_pixels} pixels")
            kind = {"JPEG": "jpg", "MPO": "jpg"}.get(img.format or "", (img.format or "img").lower())
            return img.convert("RGB"), kind
    except HTTPException:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise HTTPException(415, f"{name}: not a decodable image ({type(exc).__name__})") from None


def create_app(index_uri: str | Path, embedder, limits: Limits = Limits(), read_only: bool = False):
    """The FastAPI application (``embedder``: a :class:`vreid.engine.inference.Embedder` or anything with
    ``embed(list[PIL.Image]) -> np.ndarray``; ``index_uri``: a gallery folder or URI, see vreid.deploy.store)."""
    from vreid.deploy.gallery import check_model_fits, parse_time, search_filter

    index = open_gallery(index_uri)
    uploads = upload_folder(index_uri)
    check_model_fits(index, embedder, index_uri)  # refuse to start rather than answer 500 to every request
    lock = threading.Lock()
    app = FastAPI(title="vreid", description="Vehicle re-identification search", version="1")
    started = time.time()

    def read(upload: UploadFile) -> tuple[bytes, Image.Image, str]:
        data = upload.file.read()
        image, kind = decode_upload(data, upload.filename or "upload", limits)
        return data, image, kind

    def embed(images: list[Image.Image]):
        features = embedder.embed(images)
        if features.shape[1] != index.dim:
            raise HTTPException(500, f"the model gives {features.shape[1]}-d features, the index holds {index.dim}-d")
        return features

    @app.get("/health")
    def health() -> dict[str, Any]:
        with lock:
            settings = index.settings()
        return {"status": "ok", **settings, "read_only": read_only, "uptime_s": round(time.time() - started, 1)}

    @app.post("/search")
    def search(image: Annotated[UploadFile, File()], top_k: Annotated[int, Query(ge=1)] = 20,
               camera: Annotated[list[str] | None, Query()] = None, track: Annotated[list[str] | None, Query()] = None,
               time_from: str | None = None, time_to: str | None = None) -> dict[str, Any]:
        if top_k > limits.max_top_k:
            raise HTTPException(422, f"top_k {top_k} is over the limit of {limits.max_top_k}")
        try:
            where = search_filter(camera or (), track or (), time_from, time_to)
        except VreidError as exc:
            raise HTTPException(422, str(exc)) from None
        start = time.perf_counter()
        _, img, _ = read(image)
        with lock:
            hits = index.search(embed([img]), top_k, where)[0]
        return {"results": [h.to_dict() for h in hits], "took_ms": round(1000 * (time.perf_counter() - start), 2)}

    @app.post("/gallery")
    def add(images: Annotated[list[UploadFile], File()], vehicle_id: Annotated[str, Form()] = "",
            camera_id: Annotated[str, Form()] = "", track_id: Annotated[str, Form()] = "",
            captured_at: Annotated[str, Form()] = "", attributes: Annotated[str, Form()] = "") -> dict[str, Any]:
        if read_only:
            raise HTTPException(403, "this service is read-only (started with --read-only)")
        if len(images) > limits.max_files:
            raise HTTPException(413, f"{len(images)} files: at most {limits.max_files} per request")
        try:
            when = parse_time(captured_at, "captured_at")
            extra = json.loads(attributes) if attributes else {}
            sighting = Sighting("", vehicle_id, camera_id, track_id, when, extra)
        except (VreidError, json.JSONDecodeError) as exc:
            raise HTTPException(422, f"gallery metadata: {exc}") from None
        decoded = [read(u) for u in images]  # all checked before anything is stored
        # stored under their content hash with the suffix of their real format: the same bytes twice are one image
        paths = [str(uploads / f"{hashlib.sha256(data).hexdigest()[:32]}.{kind}") for data, _, kind in decoded]
        with lock:
            known = {p: ids[0] for p, ids in index.ids_of_paths(paths).items()}
            new = [j for j, p in enumerate(paths) if p not in known and p not in paths[:j]]
            features = embed([decoded[j][1] for j in new]) if new else None
            fresh = [paths[j] for j in new if not Path(paths[j]).exists()]
            try:
                for j in new:  # the files first: a committed row always has its image
                    atomic_write_bytes(paths[j], decoded[j][0])
                ids = index.add(features, [
                    Sighting(paths[j], sighting.vehicle_id, sighting.camera_id, sighting.track_id,
                             sighting.captured_at, sighting.attributes) for j in new]) if new else []
            except (VreidError, OSError) as exc:
                for path in fresh:
                    with contextlib.suppress(OSError):
                        Path(path).unlink()
                log.error("gallery: %s", exc)
                raise HTTPException(507, f"the gallery could not store the images: {exc}") from None
            known.update({paths[j]: int(i) for j, i in zip(new, ids, strict=True)})
            count = index.count()
        log.info("gallery: added %d images (now %d)", len(new), count)
        return {"added": [{"id": known[p], "path": p, "new": j in new} for j, p in enumerate(paths)],
                "images": count}

    @app.delete("/gallery/{image_id}")
    def remove(image_id: int) -> dict[str, Any]:
        if read_only:
            raise HTTPException(403, "this service is read-only (started with --read-only)")
        with lock:
            found = index.get([image_id])
            if image_id not in found:
                raise HTTPException(404, f"no gallery image with id {image_id}")
            try:
                index.remove([image_id])
            except VreidError as exc:
                raise HTTPException(404 if "not in the gallery" in str(exc) else 507, str(exc)) from None
            path = Path(found[image_id].path)
            if path.parent == uploads and not index.ids_of_paths([str(path)]):
                path.unlink(missing_ok=True)  # an uploaded file goes with its last entry; the user's own files stay
            count = index.count()
        return {"removed": image_id, "images": count}

    return BodyLimit(app, limits.max_bytes)


def serve(app, host: str = "127.0.0.1", port: int = 8000) -> None:
    uvicorn = require("uvicorn", "serve")
    log.info("serving on http://%s:%d (docs at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
