"""`vreid index add` in one process while `vreid serve` runs in another: the service finds the new images and
its own additions lose none of them."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vreid.cli import main
from vreid.config import load_config
from vreid.deploy.store import open_gallery
from vreid.models import build_model

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _vreid(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-m", "vreid.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow  # three processes load torch and a model: about 35 s on 2 shared cores
def test_index_add_while_serving(tmp_path):
    torch.manual_seed(0)
    opts = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "(32, 32)", "SOLVER.AMP", "off",
            "DATALOADER.NUM_WORKERS", "0"]
    torch.save(build_model(load_config(None, opts), 0).state_dict(), tmp_path / "model.pth")
    (tmp_path / "model.yml").write_text(load_config(None, [*opts, "TEST.WEIGHT", str(tmp_path / "model.pth")]).dump())
    for i in range(6):
        _image(tmp_path / "photos" / f"{i:03d}_c{i % 2}.jpg", i)
    later = [_image(tmp_path / "later" / f"{100 + i:03d}_c5.jpg", 100 + i) for i in range(5)]
    idx = tmp_path / "idx"
    assert main(["extract", "--images", str(tmp_path / "photos"), "--config-file", str(tmp_path / "model.yml"),
                 "OUTPUT_DIR", str(tmp_path / "feats")]) == 0
    assert main(["index", "build", "--features", str(tmp_path / "feats" / "gallery.npz"), str(idx)]) == 0

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _vreid("serve", "--index", str(idx), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                assert httpx.get(url + "/health", timeout=2).json()["images"] == 6
                break
            except httpx.HTTPError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read() if server.poll() else ""
                time.sleep(0.3)
        adder = _vreid("index", "add", "--index", str(idx), "--images", str(tmp_path / "later"))
        _, err = adder.communicate(timeout=300)
        assert adder.returncode == 0, err
        with httpx.Client(base_url=url, timeout=60) as client:
            # the command's images are searchable at once, with their metadata
            for path in later:
                hits = client.post("/search", files={"image": ("q.jpg", path.read_bytes(), "image/jpeg")},
                                   params={"top_k": 3}).json()["results"]
                assert hits[0]["path"] == str(path) and hits[0]["camera_id"] == "5"
            # the service's own addition keeps them all (it used to overwrite the command's work)
            buffer = io.BytesIO()
            Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
            r = client.post("/gallery", files=[("images", ("n.png", buffer.getvalue(), "image/png"))])
            assert r.status_code == 200 and r.json()["images"] == 12
            assert client.get("/health").json()["images"] == 12
            hits = client.post("/search", files={"image": ("q.jpg", later[0].read_bytes(), "image/jpeg")},
                               params={"top_k": 20}).json()["results"]
            assert len(hits) == 12
    finally:
        server.terminate()
        server.communicate(timeout=30)
    with open_gallery(idx) as gallery:  # and on disk, for a restart
        assert gallery.count() == 12 and set(gallery.ids_of_paths([str(p) for p in later])) == set(map(str, later))
