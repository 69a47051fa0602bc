"""``vreid serve``: the gallery index and its model behind HTTP (FastAPI).

    GET    /health            status, gallery size, model and index settings
    POST   /search            multipart field ``image``; query ``top_k`` -> ranked gallery images as JSON
    POST   /gallery           multipart field(s) ``images`` (+ optional form ``vehicle_id``, ``camera_id``) -> new ids
    DELETE /gallery/{id}      remove one gallery image

Every upload is checked before the model sees it: body size (streamed, so a huge upload is cut off early),
emptiness, decodability and pixel count. A bad request gets a 4xx with a message and the service keeps serving.
Uploaded gallery images are stored under ``INDEX/uploads/`` (named by content hash) and the index is saved
after every change, so a restart loses nothing. Model calls and index changes are serialised by one lock.
"""

from __future__ import annotations

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
from vreid.fileio import atomic_write_bytes
from vreid.retrieval.index import GalleryIndex

log = logging.getLogger(__name__)

UPLOADS = "uploads"


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


def create_app(index_dir: str | Path, embedder, limits: Limits = Limits(), read_only: bool = False):
    """The FastAPI application (``embedder``: a :class:`vreid.engine.inference.Embedder` or anything with
    ``embed(list[PIL.Image]) -> np.ndarray``)."""
    from vreid.deploy.gallery import check_model_fits

    index_dir = Path(index_dir)
    index = GalleryIndex.load(index_dir)
    check_model_fits(index, embedder, index_dir)  # refuse to start rather than answer 500 to every request
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
        return {"status": "ok", "images": len(index), "dim": index.dim, "engine": index.engine,
                "read_only": read_only, "uptime_s": round(time.time() - started, 1), **index.options()}

    @app.post("/search")
    def search(image: Annotated[UploadFile, File()], top_k: Annotated[int, Query(ge=1)] = 20) -> dict[str, Any]:
        if top_k > limits.max_top_k:
            raise HTTPException(422, f"top_k {top_k} is over the limit of {limits.max_top_k}")
        start = time.perf_counter()
        _, img, _ = read(image)
        with lock:
            hits = index.search(embed([img]), top_k)[0]
        return {"results": [h.to_dict() for h in hits], "took_ms": round(1000 * (time.perf_counter() - start), 2)}

    @app.post("/gallery")
    def add(images: Annotated[list[UploadFile], File()], vehicle_id: Annotated[str, Form()] = "",
            camera_id: Annotated[str, Form()] = "") -> dict[str, Any]:
        if read_only:
            raise HTTPException(403, "this service is read-only (started with --read-only)")
        if len(images) > limits.max_files:
            raise HTTPException(413, f"{len(images)} files: at most {limits.max_files} per request")
        decoded = [read(u) for u in images]  # all checked before anything is stored
        # stored under their content hash with the suffix of their real format: the same bytes twice are one image
        paths = [str(index_dir / UPLOADS / f"{hashlib.sha256(data).hexdigest()[:32]}.{kind}") for data, _, kind in
                 decoded]
        with lock:
            known = dict(zip(index.meta["paths"].tolist(), index.ids.tolist(), strict=True))
            new = [j for j, p in enumerate(paths) if p not in known and p not in paths[:j]]
            ids = index.add(embed([decoded[j][1] for j in new]), [paths[j] for j in new], [vehicle_id] * len(new),
                            [camera_id] * len(new)) if new else []
            for j, i in zip(new, ids, strict=True):
                atomic_write_bytes(paths[j], decoded[j][0])
                known[paths[j]] = int(i)
            index.save(index_dir)
        log.info("gallery: added %d images (now %d)", len(new), len(index))
        return {"added": [{"id": known[p], "path": p, "new": j in new} for j, p in enumerate(paths)],
                "images": len(index)}

    @app.delete("/gallery/{image_id}")
    def remove(image_id: int) -> dict[str, Any]:
        if read_only:
            raise HTTPException(403, "this service is read-only (started with --read-only)")
        with lock:
            paths = index.meta["paths"][index.ids == image_id]
            try:
                index.remove([image_id])
            except VreidError:
                raise HTTPException(404, f"no gallery image with id {image_id}") from None
            index.save(index_dir)
            for path in map(Path, paths):  # an uploaded file goes with its entry; the user's own files stay
                if path.parent == index_dir / UPLOADS:
                    path.unlink(missing_ok=True)
        return {"removed": image_id, "images": len(index)}

    return BodyLimit(app, limits.max_bytes)


def serve(app, host: str = "127.0.0.1", port: int = 8000) -> None:
    uvicorn = require("uvicorn", "serve")
    log.info("serving on http://%s:%d (docs at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
