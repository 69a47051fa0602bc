"""The HTTP service, started on loopback and exercised over real sockets; bad uploads get 4xx and it keeps serving."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vreid.config import load_config
from vreid.deploy.gallery import build_index
from vreid.deploy.store import open_gallery
from vreid.engine.inference import Embedder
from vreid.engine.tester import run_extract_folder
from vreid.models import build_model

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from vreid.deploy.service import Limits, create_app  # noqa: E402  (needs FastAPI)


def _png(seed: int, size=(48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def serving(app):
    """The app on a free loopback port, in a thread; yields an HTTP client for it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
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
    ({"image": ("notes.txt", b"hello, not an image", "text/plain")}, 415, "notes.txt: not a decodable image"),
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
