"""The HTTP service, started on loopback and exercised over real sockets; bad uploads get 4xx and it keeps serving."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vreid.config import load_config
from vreid.deploy.gallery import build_index
from vreid.deploy.store import Sighting, create_gallery, open_gallery
from vreid.engine.inference import Embedder
from vreid.engine.tester import run_extract_folder
from vreid.models import build_model

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from vreid.deploy.service import Limits, create_app, server_config  # noqa: E402  (needs FastAPI)


def _png(seed: int, size=(48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def serving(app, limits: Limits | None = None):
    """The app on a free loopback port with the settings of `vreid serve`, in a thread; yields an HTTP client."""
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, limits or Limits()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    for i in range(8):
        (tmp / "gallery").mkdir(exist_ok=True)
        (tmp / "gallery" / f"{i:04d}_c{i % 2}.png").write_bytes(_png(i))
    torch.manual_seed(0)
    opts = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "(32, 32)", "SOLVER.AMP", "off",
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp / "features")]
    torch.save(build_model(load_config(None, opts), 0).state_dict(), tmp / "model.pth")
    cfg = load_config(None, [*opts, "TEST.WEIGHT", str(tmp / "model.pth")])
    run_extract_folder(cfg, tmp / "gallery")
    build_index(tmp / "features" / "gallery.npz", tmp / "index", engine="numpy").close()
    app = create_app(tmp / "index", Embedder(cfg), Limits(max_bytes=200_000, max_pixels=1_000_000, max_files=3))
    with serving(app) as client:
        yield client, tmp


def test_health_and_search_finds_the_same_image(service):
    client, tmp = service
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["images"] == 8 and health["dim"] == 512
    r = client.post("/search", files={"image": ("q.png", _png(3), "image/png")}, params={"top_k": 4})
    assert r.status_code == 200
    hits = r.json()["results"]
    assert len(hits) == 4 and [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["path"].endswith("0003_c1.png") and hits[0]["vehicle_id"] == "0003"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:], strict=False))


def test_search_filters_on_camera_track_and_time(service):
    client, _ = service
    query = {"image": ("q.png", _png(3), "image/png")}
    hits = client.post("/search", files=query, params={"top_k": 8, "camera": "0"}).json()["results"]
    assert len(hits) == 4 and {h["camera_id"] for h in hits} == {"0"}  # 8 images, cameras 0 and 1 alternate
    both = client.post("/search", files=query, params=[("camera", "0"), ("camera", "1")]).json()["results"]
    assert len(both) == 8
    # no gallery image has a capture time yet: any time window excludes them all
    r = client.post("/search", files=query, params={"time_from": "2026-01-01T00:00:00"})
    assert r.status_code == 200 and r.json()["results"] == []
    r = client.post("/search", files=query, params={"time_from": "yesterday"})
    assert r.status_code == 422 and "'yesterday' is not a time" in r.json()["detail"]
    r = client.post("/search", files=query, params={"time_from": "10", "time_to": "5"})
    assert r.status_code == 422 and "ends" in r.json()["detail"]


@pytest.mark.parametrize("files,status,message", [
    ({"image": ("notes.txt", b"hello, not an image", "text/plain")}, 415,
     "notes.txt: unreadable image (not a JPEG, PNG, WebP or BMP file)"),
    ({"image": ("empty.jpg", b"", "image/jpeg")}, 400, "empty.jpg: empty upload"),
    ({"image": ("big.png", b"\x89PNG" + bytes(300_000), "image/png")}, 413, "over the limit of 200000 bytes"),
])
def test_bad_uploads_get_clear_4xx_and_the_service_keeps_serving(service, files, status, message):
    client, _ = service
    r = client.post("/search", files=files)
    assert r.status_code == status and message in r.json()["detail"]
    assert client.get("/health").status_code == 200
    assert client.post("/search", files={"image": ("q.png", _png(1), "image/png")}).status_code == 200


def test_pixel_limit_and_request_limits(service):
    client, _ = service
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1000), (40, 80, 120)).save(buffer, "PNG")  # tiny file, 2 M pixels
    assert len(buffer.getvalue()) < 200_000
    r = client.post("/search", files={"image": ("wide.png", buffer.getvalue(), "image/png")})
    assert r.status_code == 413 and "2000x1000 has more than 1000000 pixels" in r.json()["detail"]
    assert client.post("/search", files={"image": ("q.png", _png(1), "image/png")},
                       params={"top_k": 5000}).status_code == 422
    assert client.post("/search").status_code == 422  # no file at all
    many = [("images", (f"{i}.png", _png(100 + i), "image/png")) for i in range(4)]
    assert client.post("/gallery", files=many).status_code == 413


def test_gallery_add_search_remove_persists(service):
    client, tmp = service
    before = client.get("/health").json()["images"]
    r = client.post("/gallery", files=[("images", ("new.exe", _png(42), "image/png"))],
                    data={"vehicle_id": "V42", "camera_id": "c7", "track_id": "T1",
                          "captured_at": "2026-12-01T08:00:00+01:00", "attributes": '{"colour": "red"}'})
    assert r.status_code == 200
    added = r.json()["added"][0]
    new_id = added["id"]
    assert added["new"] and r.json()["images"] == before + 1
    assert added["path"].endswith(".png")  # the suffix of the real format, not of the client's file name
    hits = client.post("/search", files={"image": ("q.png", _png(42), "image/png")}).json()["results"]
    assert hits[0]["id"] == new_id and hits[0]["vehicle_id"] == "V42" and hits[0]["camera_id"] == "c7"
    assert hits[0]["captured_at"] == 1796108400.0 and hits[0]["attributes"] == {"colour": "red"}  # 07:00 UTC
    window = {"time_from": "2026-12-01T06:59:59Z", "time_to": "1796108400", "track": "T1"}
    assert [h["id"] for h in client.post("/search", files={"image": ("q.png", _png(1), "image/png")},
                                         params=window).json()["results"]] == [new_id]
    with open_gallery(tmp / "index") as stored:  # committed to the database: a restart keeps it
        assert stored.count() == before + 1 and stored.ids_of_paths([added["path"]]) == {added["path"]: [new_id]}
    assert Image.open(added["path"]).size == (48, 40)
    again = client.post("/gallery", files=[("images", ("same.png", _png(42), "image/png"))]).json()
    assert again["added"] == [{"id": new_id, "path": added["path"], "new": False}]  # same bytes: same image
    assert again["images"] == before + 1
    bad = client.post("/gallery", files=[("images", ("ok.png", _png(43), "image/png")),
                                         ("images", ("bad.png", b"junk", "image/png"))])
    assert bad.status_code == 415 and client.get("/health").json()["images"] == before + 1  # nothing half-added
    assert client.delete(f"/gallery/{new_id}").json() == {"removed": new_id, "images": before}
    assert not Path(added["path"]).exists()  # the uploaded file goes with its entry
    assert client.delete(f"/gallery/{new_id}").status_code == 404
    hits = client.post("/search", files={"image": ("q.png", _png(42), "image/png")}).json()["results"]
    assert all(h["id"] != new_id for h in hits)


def test_chunked_upload_over_the_limit_is_cut_off(service):
    client, _ = service

    def chunks():  # a well-formed multipart start, then too much data, without Content-Length (chunked)
        yield (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(40):
            yield bytes(10_000)

    r = client.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "over the limit of 200000 bytes" in r.json()["detail"]
    assert client.get("/health").status_code == 200


def test_service_refuses_a_model_that_does_not_fit_the_index(service):
    from vreid.errors import VreidError

    _, tmp = service

    class Wrong:
        def embed(self, images):
            return np.ones((len(images), 128), np.float32)

    with pytest.raises(VreidError, match="index holds 512-d features but the model gives 128-d"):
        create_app(tmp / "index", Wrong())


def test_read_only_service_refuses_changes(service):
    _, tmp = service

    class Fixed:
        def embed(self, images):
            return np.ones((len(images), 512), np.float32)

    with serving(create_app(tmp / "index", Fixed(), read_only=True)) as client:
        r = client.post("/gallery", files=[("images", ("n.png", _png(5), "image/png"))])
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        assert client.delete("/gallery/1").status_code == 403


# --- hostile clients: each attack of issue 14, over a real loopback socket ---------------------------------------

TOKEN = "s3cret-token-0123456789"
DIM = 16


class HashEmbedder:
    """A stand-in model: a unit vector seeded by the pixels (equal images, equal features); records calls."""

    def __init__(self, block: threading.Event | None = None):
        self.block, self.entered, self.calls = block, threading.Event(), 0

    def embed(self, images):
        self.calls += 1
        if self.block is not None and len(images) > 1:  # a gallery upload: held until the test releases it
            self.entered.set()
            assert self.block.wait(30)
        rows = [np.random.default_rng(list(np.asarray(im, np.uint8).ravel()[:64])).normal(size=DIM) for im in images]
        feats = np.asarray(rows, np.float32).reshape(len(images), DIM)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _small_index(folder: Path, paths=("a.png", "b.png", "c.png")) -> Path:
    """A gallery of random features (ids 1, 2, 3, ...) in the default SQLite store."""
    feats = np.random.default_rng(0).normal(size=(len(paths), DIM)).astype(np.float32)
    with create_gallery(folder, DIM, engine="numpy") as gallery:
        gallery.add(feats, [Sighting(p) for p in paths])
    return folder


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG claiming width x height with almost no pixel data (what a decompression bomb shows)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100)))
            + chunk(b"IEND", b""))


def _upload(name="n.png", seed=5):
    return [("images", (name, _png(seed), "image/png"))]


def test_token_guards_gallery_changes_and_optionally_everything(tmp_path):
    from vreid.deploy.service import Access

    app = create_app(_small_index(tmp_path / "i"), HashEmbedder(), access=Access(token=TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(app) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            r = client.post("/gallery", files=_upload(), headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.delete("/gallery/1").status_code == 401
        assert client.get("/health").json()["images"] == 3  # nothing changed
        assert client.post("/search", files={"image": ("q.png", _png(1), "image/png")}).status_code == 200
        added = client.post("/gallery", files=_upload(), headers=auth)
        assert added.status_code == 200 and added.json()["images"] == 4
        assert client.delete("/gallery/1", headers=auth).json() == {"removed": 1, "images": 3}
    app = create_app(tmp_path / "i", HashEmbedder(), access=Access(token=TOKEN, protect_all=True))
    with serving(app) as client:
        assert client.get("/health").status_code == 401
        assert client.post("/search", files={"image": ("q.png", _png(1), "image/png")}).status_code == 401
        assert client.get("/health", headers=auth).status_code == 200


def test_cross_origin_posts_and_foreign_host_names_are_refused(tmp_path):
    from vreid.deploy.service import Access, default_hosts

    app = create_app(_small_index(tmp_path / "i"), HashEmbedder(), access=Access(allowed_hosts=default_hosts("::1")))
    with serving(app) as client:
        port = client.base_url.port
        evil = client.post("/gallery", files=_upload(), headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and "cross-origin" in evil.json()["detail"]
        assert client.post("/gallery", files=_upload(), headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert client.delete("/gallery/1", headers={"Origin": "null"}).status_code == 403
        rebound = client.delete("/gallery/1", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 400 and "evil.example" in rebound.json()["detail"]
        assert client.get("/health", headers={"Host": "evil.example"}).status_code == 400
        assert client.get("/health").json()["images"] == 3  # nothing changed
        for host in (f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
            assert client.get("/health", headers={"Host": host}).status_code == 200, host
        same = client.post("/gallery", files=_upload(), headers={"Origin": f"http://127.0.0.1:{port}"})
        assert same.status_code == 200 and same.json()["images"] == 4  # a same-origin page is fine


def test_binding_beyond_loopback_needs_a_token_or_insecure(tmp_path, monkeypatch):
    from vreid.deploy.service import Access, check_bind, read_token
    from vreid.errors import VreidError

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, Access())
    for host in ("0.0.0.0", "192.168.1.5", "::", "myhost.example"):
        with pytest.raises(VreidError, match="no token is set"):
            check_bind(host, Access())
        check_bind(host, Access(token=TOKEN))
        check_bind(host, Access(), insecure=True)
    monkeypatch.delenv("VREID_SERVE_TOKEN", raising=False)
    assert read_token() is None
    monkeypatch.setenv("VREID_SERVE_TOKEN", f" {TOKEN}\n")
    assert read_token() == TOKEN
    (tmp_path / "tok").write_text(TOKEN[::-1] + "\n")
    assert read_token(str(tmp_path / "tok")) == TOKEN[::-1]  # the file wins over the environment
    (tmp_path / "short").write_text("hunter2\n")
    with pytest.raises(VreidError, match="at least 16 characters") as err:
        read_token(str(tmp_path / "short"))
    assert "hunter2" not in str(err.value)  # a secret is never echoed
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "vreid.cli", "serve", "--index", str(tmp_path), "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60, env={k: v for k, v in __import__("os").environ
                                                                          .items() if k != "VREID_SERVE_TOKEN"})
    assert run.returncode == 2 and "--insecure" in run.stderr and "Traceback" not in run.stderr


def test_only_four_decoders_and_every_decoder_failure_is_a_4xx(tmp_path):
    limits = Limits(max_bytes=2_000_000, max_pixels=1_000_000)
    app = create_app(_small_index(tmp_path / "i"), HashEmbedder(), limits)
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    png = _encoded(rgb, "PNG")
    cases = {  # name: (bytes, status, text in the answer)
        "photo.jpg": (_encoded(rgb, "JPEG"), 200, ""), "photo.webp": (_encoded(rgb, "WEBP"), 200, ""),
        "photo.bmp": (_encoded(rgb, "BMP"), 200, ""), "photo.png": (png, 200, ""),
        "ghost.eps": (eps, 415, "not a JPEG, PNG, WebP or BMP file"),  # Ghostscript is never looked for
        "anim.gif": (_encoded(rgb, "GIF"), 415, "not a JPEG, PNG, WebP or BMP file"),
        "scan.tif": (_encoded(rgb, "TIFF"), 415, "not a JPEG, PNG, WebP or BMP file"),
        "cut.png": (png[: len(png) // 2], 415, "cut.png: unreadable image"),
        "bomb.png": (_png_header(100_000, 100_000), 413, "more than 1000000 pixels"),
        "wide.png": (_png_header(5000, 5000), 413, "image 5000x5000 has more than 1000000 pixels"),
        "zero.bmp": (b"BM" + bytes(60), 415, "zero.bmp: unreadable image"),
    }
    with serving(app, limits) as client:
        for name, (data, status, text) in cases.items():
            r = client.post("/search", files={"image": (name, data, "application/octet-stream")})
            assert r.status_code == status, (name, r.text)
            assert status == 200 or (name in r.json()["detail"] and text in r.json()["detail"]), r.text
        assert client.get("/health").status_code == 200
    from vreid.data.images import NotAnImage, read_image

    (tmp_path / "ghost.jpg").write_bytes(eps)  # files are read with the same four decoders
    with pytest.raises(NotAnImage, match="ghost.jpg: unreadable image"):
        read_image(tmp_path / "ghost.jpg")


def test_ids_out_of_range_and_non_utf8_paths_never_give_500(tmp_path):
    paths = ["/data/caf\udce9.jpg", "plain.jpg"]  # a file name with a byte that is not UTF-8, as os.listdir gives it
    app = create_app(_small_index(tmp_path / "i", paths), HashEmbedder())
    with serving(app) as client:
        for bad in ("99999999999999999999999", str(2**63), "-1", "abc", "1.5"):
            assert client.delete(f"/gallery/{bad}").status_code == 422, bad
        assert client.delete("/gallery/12345").status_code == 404
        r = client.post("/search", files={"image": ("q.png", _png(1), "image/png")})
        assert r.status_code == 200
        assert sorted(h["path"] for h in r.json()["results"]) == ["/data/caf\\xe9.jpg", "plain.jpg"]


def test_pixel_budget_per_request(tmp_path):
    limits = Limits(max_bytes=1_000_000, max_pixels=25_000_000, max_request_pixels=50_000_000)
    app = create_app(_small_index(tmp_path / "i"), HashEmbedder(), limits)
    sheet = _encoded(Image.new("1", (5000, 5000)), "PNG")  # a few KiB, 25 M pixels
    assert len(sheet) < 30_000
    with serving(app, limits) as client:
        files = [("images", (f"{i}.png", sheet, "image/png")) for i in range(8)]
        r = client.post("/gallery", files=files)
        assert r.status_code == 413 and "200000000 pixels in all: at most 50000000" in r.json()["detail"]
        assert client.get("/health").json()["images"] == 3


def _raw(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_slow_bodies_time_out_and_connections_are_limited(tmp_path):
    limits = Limits(body_timeout_s=1.0, header_timeout_s=3.0, max_connections=24)
    app = create_app(_small_index(tmp_path / "i"), HashEmbedder(), limits)
    slow = (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 1000\r\n\r\n--x\r\nC")
    with serving(app, limits) as client:
        port = client.base_url.port
        start = time.monotonic()
        socks = [_raw(port, slow) for _ in range(20)]
        answers = [_read_all(s) for s in socks]  # returns once the server has answered and closed
        assert time.monotonic() - start < 8
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0]
        for s in socks:
            s.close()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(24)]  # fill the connection limit
        try:
            full = _read_all(_raw(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
            assert full.startswith(b"HTTP/1.1 503")
            start = time.monotonic()  # ... until the head deadline closes the connections that sent nothing
            assert all(_read_all(s) == b"" for s in idle) and time.monotonic() - start < 8
        finally:
            for s in idle:
                s.close()
        trickling = [_raw(port, b"GET /health HTTP/1.1\r\nHo") for _ in range(10)]  # slowloris: a head, slowly
        start = time.monotonic()
        assert all(_read_all(s) == b"" for s in trickling) and time.monotonic() - start < 8
        for s in trickling:
            s.close()
        time.sleep(0.3)
        assert client.get("/health").status_code == 200


def test_embedding_a_gallery_upload_does_not_stall_searches(tmp_path):
    release = threading.Event()
    embedder = HashEmbedder(block=release)
    app = create_app(_small_index(tmp_path / "i"), embedder)
    with serving(app) as client:
        result = {}
        upload = threading.Thread(target=lambda: result.update(r=client.post(
            "/gallery", files=[("images", (f"{i}.png", _png(60 + i), "image/png")) for i in range(2)])))
        upload.start()
        try:
            assert embedder.entered.wait(10)  # the upload is being embedded now
            r = client.post("/search", files={"image": ("q.png", _png(1), "image/png")}, timeout=10)
            assert r.status_code == 200 and len(r.json()["results"]) == 3  # answered while the upload embeds
        finally:
            release.set()
            upload.join(20)
        assert result["r"].status_code == 200 and result["r"].json()["images"] == 5


def test_queued_requests_of_clients_that_left_are_dropped(tmp_path):
    release = threading.Event()
    embedder = HashEmbedder(block=release)
    limits = Limits(max_concurrent=1)
    app = create_app(_small_index(tmp_path / "i"), embedder, limits)
    query = httpx.Request("POST", "http://127.0.0.1/search", files={"image": ("q.png", _png(1), "image/png")})
    body = query.read()
    raw = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {query.headers['content-type']}\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with serving(app, limits) as client:
        before = embedder.calls
        upload = threading.Thread(target=lambda: client.post(
            "/gallery", files=[("images", (f"{i}.png", _png(70 + i), "image/png")) for i in range(2)]))
        upload.start()
        try:
            assert embedder.entered.wait(10)  # the only worker is busy with the upload
            for _ in range(3):  # three searches queue behind it, and their clients hang up
                _raw(client.base_url.port, raw).close()
            time.sleep(1.0)
        finally:
            release.set()
            upload.join(20)
        assert client.post("/search", files={"image": ("q.png", _png(1), "image/png")}).status_code == 200
        assert embedder.calls - before == 2  # the upload and the last search: the abandoned ones were skipped


def test_a_refused_write_is_a_507_and_stores_nothing(service):
    _, tmp = service

    class Fixed:
        def embed(self, images):
            return np.ones((len(images), 512), np.float32)

    build_index(tmp / "features" / "gallery.npz", tmp / "full", engine="numpy").close()
    (tmp / "full" / "uploads").write_bytes(b"")  # a file where the upload folder goes: every write fails
    with serving(create_app(tmp / "full", Fixed())) as client:
        r = client.post("/gallery", files=[("images", ("n.png", _png(77), "image/png"))])
        assert r.status_code == 507 and "could not store" in r.json()["detail"]
        assert client.get("/health").json()["images"] == 8  # memory ...
        with open_gallery(tmp / "full") as stored:
            assert stored.count() == 8  # ... and disk agree: nothing was added


def test_bad_gallery_metadata_is_a_422_and_stores_nothing(tmp_path):
    app = create_app(_small_index(tmp_path / "i"), HashEmbedder())
    with serving(app) as client:
        for form, text in [({"attributes": "[1, 2]"}, "must be a JSON object"),
                           ({"attributes": '{"speed": NaN}'}, "not JSON"),  # Python reads NaN, JSON has none
                           ({"attributes": '{"note": "\\ud800"}'}, "surrogate"),  # a lone surrogate: not UTF-8
                           ({"attributes": "{"}, "Expecting"),
                           ({"captured_at": "soon"}, "'soon' is not a time")]:
            r = client.post("/gallery", files=_upload(), data=form)
            assert r.status_code == 422 and text in r.json()["detail"], (form, r.text)
        assert client.get("/health").json()["images"] == 3
        assert not (tmp_path / "i" / "uploads").exists()  # no file written either


def test_per_camera_statistics_apply_to_searches_and_uploads(tmp_path):
    """A gallery built with camera statistics: a query is normalised with its query_camera's statistics (the pooled
    ones without), an uploaded image with its camera_id's; written out against the fitted statistics."""
    from vreid.features import FeatureSet
    from vreid.retrieval.camera_norm import STD_EPS

    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(size=(12, DIM)) + 2.0, rng.normal(size=(12, DIM)) * 3.0 - 1.0])
    cams = np.array(["a"] * 12 + ["b"] * 12)
    FeatureSet(feats.astype(np.float32), np.array([f"v{i}" for i in range(24)]), cams, np.array([""] * 24),
               np.array([f"g{i}.png" for i in range(24)])).save(tmp_path / "g.npz")
    build_index(tmp_path / "g.npz", tmp_path / "i", engine="numpy", camera_norm="standardize").close()
    x = feats.astype(np.float32).astype(np.float64)

    def norm(rows, group):
        value = (rows - group.mean(axis=0)) / (group.std(axis=0) + STD_EPS)
        return value / np.linalg.norm(value, axis=-1, keepdims=True)

    stored = np.concatenate([norm(x[:12], x[:12]), norm(x[12:], x[12:])])
    embedder = HashEmbedder()
    query = embedder.embed([Image.open(io.BytesIO(_png(7)))])[0].astype(np.float64)
    with serving(create_app(tmp_path / "i", embedder)) as client:
        health = client.get("/health").json()
        assert health["camera_norm"] == {"mode": "standardize", "cameras": 2}
        for camera, group in (("b", x[12:]), ("", x), ("never-seen", x)):
            r = client.post("/search", params={"top_k": 24, "query_camera": camera},
                            files={"image": ("q.png", _png(7), "image/png")})
            expected = stored @ norm(query, group)
            got = {h["vehicle_id"]: h["score"] for h in r.json()["results"]}
            assert [got[f"v{i}"] for i in range(24)] == pytest.approx(expected, abs=1e-5), camera
        r = client.post("/search", params={"query_camera": "c" * 300}, files={"image": ("q.png", _png(7), "image/png")})
        assert r.status_code == 422
        assert client.post("/gallery", files=_upload(seed=9), data={"camera_id": "a"}).status_code == 200
    upload = embedder.embed([Image.open(io.BytesIO(_png(9)))])[0].astype(np.float64)
    with open_gallery(tmp_path / "i") as gallery:
        last = [b for b in gallery.batches()][-1]
        assert last.sightings[-1].camera_id == "a"
        assert np.allclose(last.features[-1], norm(upload, x[:12]), atol=1e-6)
