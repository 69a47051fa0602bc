"""``vreid serve``: the gallery index and its model behind HTTP (FastAPI).

    GET    /health            status, gallery size, backend and search settings
    POST   /search            multipart field ``image``; query ``top_k``, filters ``camera`` and ``track`` (repeat
                              for several), ``time_from``, ``time_to`` (ISO 8601 or epoch s), ``query_camera`` (the
                              camera that took the image, for a gallery with per-camera statistics) -> ranked
                              gallery images
    POST   /gallery           multipart field(s) ``images`` (+ optional form ``vehicle_id``, ``camera_id``,
                              ``track_id``, ``captured_at``, ``attributes`` (JSON object)) -> new ids
    DELETE /gallery/{id}      remove one gallery image

Made to face a network (the limits and their HTTP codes are listed in docs/deployment.md):
- who may call: a Host allow-list (DNS rebinding), an Origin check on every request that is not a plain read
  (cross-site form posts), and a bearer token, compared in constant time, for the gallery-changing endpoints
  (optionally for all);
- what a request may cost: body size (streamed, so a huge upload is cut off early), a deadline for the whole
  body (slow uploads), per-image and per-request pixel counts read from the headers before any pixel is
  decoded, only the JPEG, PNG, WebP and BMP decoders, and a bound on requests decoding and embedding at once;
- a bad request gets a 4xx with a message and the service keeps serving.
Decoding and embedding run on a few worker threads of their own, outside the gallery lock (the lock only covers
reading and changing the gallery, so one client adding many images never stalls the searches of others), and a
queued request whose client has hung up is dropped before any work.

The gallery is a store (vreid.deploy.store: SQLite by default, Milvus optionally). Uploaded gallery images are
kept in an ``uploads/`` folder beside the gallery database (named by content hash) and every change is one
database transaction, committed before it is answered: a restart loses nothing, and changes other processes
commit (`vreid index add`) are searched from the next request on. A change the database refuses (disk full,
read-only file) is answered 507 and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from PIL import Image

from vreid.data.images import SUFFIXES, ImageHeader, ImageTooLarge, decode_image, image_header
from vreid.deploy.gallery import add_rows, camera_stats, check_model_fits, parse_time, search_filter, search_rows
from vreid.errors import DatasetError, VreidError, require_package

try:
    from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
    from fastapi import Path as PathParam
except ImportError:
    raise VreidError("the HTTP service needs FastAPI: pip install 'vreid[serve]'") from None

from vreid.deploy.store import Sighting, open_gallery, upload_folder
from vreid.fileio import atomic_write_bytes, display_text

log = logging.getLogger(__name__)

TOKEN_ENV = "VREID_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_ID = 2**63 - 1  # gallery ids are int64
MAX_CAMERA_CHARS = 256  # a search's query_camera: only looked up among the gallery's cameras
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ROUTES = frozenset({("POST", "/search")})  # unsafe method, but changes nothing
CLIENT_GONE = "vreid.client_gone"  # ASGI scope key: a threading.Event set when the client has hung up
CLIENT_CLOSED = 499  # the answer (nobody reads it) to a request dropped because its client left


@dataclass(frozen=True)
class Limits:
    """What one request may cost; every limit has its HTTP code (docs/deployment.md)."""

    max_bytes: int = 8 * 2**20  # whole request body (413)
    max_pixels: int = 25_000_000  # width x height of one image, from its header (413)
    max_request_pixels: int = 50_000_000  # sum over the images of one request: bounds its decoded memory (413)
    max_files: int = 64  # images per POST /gallery (413)
    max_top_k: int = 1000  # (422)
    max_concurrent: int = 2  # requests decoding and embedding at once; others wait their turn
    body_timeout_s: float = 30.0  # the whole body must arrive within this after the headers (408)
    header_timeout_s: float = 10.0  # a new connection must have sent its first request's head by then (closed)
    max_connections: int = 64  # open connections and requests (uvicorn limit_concurrency): 503 beyond
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this


@dataclass(frozen=True)
class Access:
    """Who may call: ``token`` None means no authentication (loopback use)."""

    token: str | None = None
    protect_all: bool = False  # the token for every endpoint, not only the gallery-changing ones
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES  # Host header names served ("*": any)
    allowed_origins: tuple[str, ...] = ()  # browser origins (scheme://host[:port]) allowed besides the same origin


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def read_token(token_file: str | None = None, env: str = TOKEN_ENV) -> str | None:
    """The bearer token from ``token_file`` (its first line), else the environment variable ``env``, else None."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise VreidError(f"--token-file {token_file}: cannot read ({type(exc).__name__})") from None
        where, token = f"--token-file {token_file}", token[0].strip() if token else ""
    else:
        where, token = f"${env}", os.environ.get(env, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:  # the length only: never echo a secret
        raise VreidError(f"{where}: the token must have at least {MIN_TOKEN_CHARS} characters "
                         "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def check_bind(host: str, access: Access, insecure: bool = False) -> None:
    """Refuse to listen beyond loopback without a token unless the operator says ``--insecure``."""
    if not is_loopback(host) and access.token is None and not insecure:
        raise VreidError(f"--host {host} is reachable beyond this machine and no token is set: give one "
                         f"(--token-file F or ${TOKEN_ENV}), or pass --insecure to serve without authentication")


def default_hosts(bound: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Loopback names, the bound address (unless a wildcard), and the operator's names."""
    wildcard = bound in ("0.0.0.0", "::", "")
    return tuple(dict.fromkeys([*LOOPBACK_NAMES, *([] if wildcard else [bound.strip("[]").lower()]),
                                *(h.lower() for h in extra)]))


def _host_name(host: str) -> str:
    """``Host`` header -> host name without port (``[::1]:8000`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


async def _answer(send, status: int, detail: str, extra_headers: tuple = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra_headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware, outermost: Host allow-list (400), Origin check (403), bearer token (401).

    Runs before any body byte is read. The Origin check refuses a browser request from another site to
    anything but a plain read, so a web page the operator visits cannot post to or delete from the gallery
    even without a token; the Host check stops DNS rebinding (a foreign name pointed at this address).
    """

    def __init__(self, app, access: Access):
        self.app, self.access = app, access
        self.token = access.token.encode() if access.token else None

    def _refusal(self, scope) -> tuple[int, str, tuple] | None:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host", b"").decode("latin-1")
        if "*" not in self.access.allowed_hosts and _host_name(host) not in self.access.allowed_hosts:
            return 400, f"Host {host!r} is not served here (allowed: {', '.join(self.access.allowed_hosts)})", ()
        method, path = scope["method"].upper(), scope["path"]
        changing = method not in SAFE_METHODS and (method, path) not in READ_ROUTES
        if method not in SAFE_METHODS:
            origin = headers.get(b"origin")
            site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
            if origin is not None:
                text = origin.decode("latin-1")
                same = urlsplit(text).netloc.lower() == host.lower() and host != ""
                if not same and text not in self.access.allowed_origins:
                    return 403, f"cross-origin request from {text!r} refused", ()
            elif site in ("cross-site", "same-site"):
                return 403, f"cross-origin request (Sec-Fetch-Site: {site}) refused", ()
        if self.token is not None and (changing or self.access.protect_all):
            given = headers.get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                return 401, "a valid bearer token is needed (Authorization: Bearer TOKEN)", (
                    (b"www-authenticate", b"Bearer"),)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                return await _answer(send, *refusal)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (by header or while it streams in), 408 for a body
    that does not arrive completely within ``timeout_s`` of the request (slow uploads hold no worker)."""

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _answer(send, 413, f"request body over the limit of {self.max_bytes} bytes")
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        total, started, rejected, complete = 0, False, False, False
        gone = scope[CLIENT_GONE] = threading.Event()  # set when the client hangs up before its answer
        watcher: asyncio.Task | None = None

        async def watch() -> None:
            if (await receive())["type"] == "http.disconnect":
                gone.set()

        async def reject(status: int, detail: str):
            nonlocal rejected
            rejected = True
            if not started:
                await _answer(send, status, detail)
            return {"type": "http.disconnect"}

        async def counted_receive():
            # past a limit the client gets its 4xx at once and the application sees a disconnect (it stops
            # reading and answers nothing); once the body is complete, messages pass through untimed
            nonlocal total, complete, watcher
            if rejected:
                return {"type": "http.disconnect"}
            if deadline is None or complete:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                except TimeoutError:
                    return await reject(408, f"request body not received within {self.timeout_s:g} s")
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if total > self.max_bytes:
                    return await reject(413, f"request body over the limit of {self.max_bytes} bytes")
                if complete:  # from now on the only message left is the client's disconnect
                    watcher = asyncio.ensure_future(watch())
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
        finally:
            if watcher is not None:
                watcher.cancel()


def _http_error(exc: DatasetError) -> HTTPException:
    """An image that cannot be used -> 413 (too many pixels) or 415 (not an allowed, decodable image)."""
    return HTTPException(413 if isinstance(exc, ImageTooLarge) else 415, str(exc))


def check_uploads(files: list[tuple[bytes, str]], limits: Limits) -> list[ImageHeader]:
    """Headers of every file of a request, checked (emptiness, format, pixels, the request's pixel sum) before
    any pixel is decoded; an HTTP error names the file."""
    headers = []
    for data, name in files:
        if not data:
            raise HTTPException(400, f"{name}: empty upload")
        try:
            headers.append(image_header(io.BytesIO(data), name, limits.max_pixels))
        except DatasetError as exc:
            raise _http_error(exc) from None
    total = sum(h.pixels for h in headers)
    if total > limits.max_request_pixels:
        raise HTTPException(413, f"{len(files)} images of {total} pixels in all: at most {limits.max_request_pixels} "
                                 "pixels per request")
    return headers


def decode_upload(data: bytes, name: str, limits: Limits) -> tuple[Image.Image, str]:
    """Bytes of one uploaded file -> (RGB image, its format as a file suffix), or an HTTP error naming the file."""
    if not data:
        raise HTTPException(400, f"{name}: empty upload")
    try:
        image, header = decode_image(io.BytesIO(data), name, limits.max_pixels)
    except DatasetError as exc:
        raise _http_error(exc) from None
    return image, SUFFIXES[header.format]


def _hit(hit) -> dict[str, Any]:
    """A search result as JSON-safe text (paths with bytes that are not UTF-8 are shown escaped)."""
    return {k: display_text(v) if isinstance(v, str) else v for k, v in hit.to_dict().items()}


def create_app(index_uri: str | Path, embedder, limits: Limits = Limits(), read_only: bool = False,
               access: Access = Access()):
    """The ASGI application (``embedder``: a :class:`vreid.engine.inference.Embedder` or anything with
    ``embed(list[PIL.Image]) -> np.ndarray``; ``index_uri``: a gallery folder or URI, see vreid.deploy.store),
    wrapped in :class:`Guard` and :class:`BodyLimit`."""

    index = open_gallery(index_uri)
    uploads = upload_folder(index_uri)
    check_model_fits(index, embedder, index_uri)  # refuse to start rather than answer 500 to every request
    stats = camera_stats(index)  # fitted when the gallery was built and never changed after: read once
    lock = threading.Lock()  # reading and changing the gallery (never held while decoding or embedding)
    # decoding and embedding run on these few threads only: it bounds the work at once and the memory too (each
    # thread that decodes a large image keeps its own malloc arena: with the request threads doing it, eight
    # concurrent 25 M-pixel searches held 1.3 GB even when only two decoded at a time)
    workers = ThreadPoolExecutor(max_workers=limits.max_concurrent, thread_name_prefix="vreid-embed")
    app = FastAPI(title="vreid", description="Vehicle re-identification search", version="1")
    started = time.time()

    def received(files_in: list[UploadFile]) -> tuple[list[tuple[bytes, str]], list[ImageHeader]]:
        files = [(u.file.read(), u.filename or "upload") for u in files_in]
        return files, check_uploads(files, limits)  # every file checked before any is decoded

    def embed(request: Request, files: list[tuple[bytes, str]]):
        gone = request.scope.get(CLIENT_GONE)

        def job():
            if gone is not None and gone.is_set():  # queued, and its client has hung up: skip the work
                raise HTTPException(CLIENT_CLOSED, "the client closed the connection before its turn")
            return embedder.embed([decode_upload(data, name, limits)[0] for data, name in files])

        # decoded images exist only inside a worker, the request thread waits with compressed bytes
        features = workers.submit(job).result()
        if features.shape[1] != index.dim:
            raise HTTPException(500, f"the model gives {features.shape[1]}-d features, the index holds {index.dim}-d")
        return features

    @app.get("/health")
    def health() -> dict[str, Any]:
        with lock:
            settings = index.settings()
        return {"status": "ok", **settings, "read_only": read_only, "uptime_s": round(time.time() - started, 1),
                "camera_norm": None if stats is None else {"mode": stats.mode, "cameras": len(stats.cameras)}}

    @app.post("/search")
    def search(request: Request, image: Annotated[UploadFile, File()], top_k: Annotated[int, Query(ge=1)] = 20,
               camera: Annotated[list[str] | None, Query()] = None, track: Annotated[list[str] | None, Query()] = None,
               time_from: str | None = None, time_to: str | None = None,
               query_camera: Annotated[str, Query(max_length=MAX_CAMERA_CHARS)] = "") -> dict[str, Any]:
        if top_k > limits.max_top_k:
            raise HTTPException(422, f"top_k {top_k} is over the limit of {limits.max_top_k}")
        try:
            where = search_filter(camera or (), track or (), time_from, time_to)
        except VreidError as exc:
            raise HTTPException(422, str(exc)) from None
        start = time.perf_counter()
        features = embed(request, received([image])[0])
        with lock:
            hits = search_rows(index, features, top_k, where, [query_camera], stats=stats)[0]
        return {"results": [_hit(h) for h in hits], "took_ms": round(1000 * (time.perf_counter() - start), 2)}

    def upload_path(data: bytes, kind: str) -> str:
        # stored under their content hash with the suffix of their real format: the same bytes twice are one image
        return str(uploads / f"{hashlib.sha256(data).hexdigest()[:32]}.{kind}")

    @app.post("/gallery")
    def add(request: Request, images: Annotated[list[UploadFile], File()], vehicle_id: Annotated[str, Form()] = "",
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
            for text in (vehicle_id, camera_id, track_id, sighting.attributes_json()):
                text.encode("utf-8")  # a client's mistake is a 422 here, not a refusal by the database (507)
        except (VreidError, ValueError) as exc:  # json.JSONDecodeError and UnicodeEncodeError are ValueErrors
            raise HTTPException(422, f"gallery metadata: {exc}") from None
        files, headers = received(images)
        paths = [upload_path(data, SUFFIXES[h.format]) for (data, _), h in zip(files, headers, strict=True)]
        with lock:  # a snapshot, to embed only what the gallery lacks
            stored = index.ids_of_paths(paths)
        fresh = [j for j, p in enumerate(paths) if p not in stored and p not in paths[:j]]
        features = embed(request, [files[j] for j in fresh]) if fresh else None  # outside the lock: searches go on
        with lock:
            known = {p: ids[0] for p, ids in index.ids_of_paths(paths).items()}
            new = [j for j in fresh if paths[j] not in known]  # another request may have added it meanwhile
            if new:
                written = [paths[j] for j in new if not Path(paths[j]).exists()]
                try:
                    for j in new:  # the files first: a committed row always has its image
                        atomic_write_bytes(paths[j], files[j][0])
                    ids = add_rows(index, features[[fresh.index(j) for j in new]], [
                        Sighting(paths[j], sighting.vehicle_id, sighting.camera_id, sighting.track_id,
                                 sighting.captured_at, sighting.attributes) for j in new], stats=stats)
                except (VreidError, OSError) as exc:
                    for path in written:  # a refused add leaves no file behind
                        with contextlib.suppress(OSError):
                            Path(path).unlink()
                    log.error("gallery: %s", exc)
                    raise HTTPException(507, f"the gallery could not store the images: {exc}") from None
                known.update({paths[j]: int(i) for j, i in zip(new, ids, strict=True)})
            count = index.count()
        log.info("gallery: added %d images (now %d)", len(new), count)
        return {"added": [{"id": known[p], "path": display_text(p), "new": j in new} for j, p in enumerate(paths)],
                "images": count}

    @app.delete("/gallery/{image_id}")
    def remove(image_id: Annotated[int, PathParam(ge=0, le=MAX_ID)]) -> dict[str, Any]:
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

    return Guard(BodyLimit(app, limits.max_bytes, limits.body_timeout_s), access)


def _head_deadline_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline for a connection's first request head: a client that sends its
    headers slowly, or nothing at all (slowloris), is disconnected instead of holding a connection slot."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadlineProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(seconds, self._head_too_slow)

        def _head_too_slow(self) -> None:
            if self.cycle is None and not self.transport.is_closing():  # no complete request head yet
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._head_timer.cancel()
            super().connection_lost(exc)

    return HeadDeadlineProtocol


def server_config(app, host: str, port: int, limits: Limits = Limits()):
    """The uvicorn settings of ``vreid serve``: connection limit (503 beyond), keep-alive timeout, a deadline
    for the first request head."""
    uvicorn = require_package("uvicorn", "serve")
    # uvicorn answers 503 once the open connections (the asking one included) reach limit_concurrency: + 1 serves
    # exactly max_connections clients at once
    return uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=limits.keep_alive_s,
                          limit_concurrency=limits.max_connections + 1, server_header=False,
                          http=_head_deadline_protocol(limits.header_timeout_s))


def serve(app, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits()) -> None:
    uvicorn = require_package("uvicorn", "serve")
    log.info("serving on http://%s:%d (docs at /docs)", host, port)
    uvicorn.Server(server_config(app, host, port, limits)).run()
