"""Bad input through real `vreid` processes: exit status 2, one line naming the file or option, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vreid.config import load_config
from vreid.deploy.store import LEGACY_FORMAT, LEGACY_MANIFEST, Sighting, create_gallery
from vreid.models import build_model

SECRET = "root:$6$SECRETHASH.xyz:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A model config, an index of its feature size, good and hostile files."""
    tmp = tmp_path_factory.mktemp("bad_input")
    opts = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "(32, 32)", "SOLVER.AMP", "off",
            "DATALOADER.NUM_WORKERS", "0"]
    torch.manual_seed(0)
    torch.save(build_model(load_config(None, opts), 0).state_dict(), tmp / "model.pth")
    (tmp / "model.yml").write_text(load_config(None, [*opts, "TEST.WEIGHT", str(tmp / "model.pth")]).dump())
    feats = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)
    for name, paths in (("idx", ["a.jpg", "b.jpg", "c.jpg"]), ("idx_bytes", ["caf\udce9.jpg", "b.jpg", "c.jpg"])):
        with create_gallery(tmp / name, 512, engine="numpy") as gallery:
            gallery.add(feats, [Sighting(p) for p in paths])
    (tmp / "nodim").mkdir()  # an index folder of the old format whose manifest lacks its feature size
    (tmp / "nodim" / LEGACY_MANIFEST).write_text(json.dumps({
        "format": LEGACY_FORMAT, "kind": "exact", "nlist": 0, "nprobe": 16, "hnsw_m": 32, "ef_search": 128,
        "next_id": 3, "count": 3}))
    (tmp / "huge").mkdir()
    Image.new("1", (20_000, 10_000)).save(tmp / "huge" / "huge.png")  # 200 M pixels in a few hundred KiB
    Image.new("RGB", (40, 30)).save(tmp / "huge" / "small.png")
    (tmp / "ghost.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    (tmp / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": garbage")
    np.save(tmp / "x.npy", feats)
    np.save(tmp / "dist.npy", np.zeros((2, 3), np.float32))
    (tmp / "afile").write_text("a regular file, not a folder")
    (tmp / "shadow").write_text(SECRET)
    (tmp / "base_secret.yml").write_text(f"_BASE_: {tmp / 'shadow'}\n")
    (tmp / "broken.yml").write_text("MODEL:\n  BACKBONE: x\n  - SECRETHASH: [\n")
    (tmp / "base_broken.yml").write_text(f"_BASE_: {tmp / 'broken.yml'}\n")
    (tmp / "latin1.yml").write_bytes(b"MODEL:\n  BACKBONE: caf\xe9\n")
    return tmp


CASES = {  # id: (argv with {w} for the folder, text the one error line must contain)
    "missing safetensors": (["extract", "--images", "{w}/huge", "--config-file", "{w}/model.yml", "TEST.WEIGHT",
                             "{w}/none.safetensors", "OUTPUT_DIR", "{w}/o1"],
                            "none.safetensors: weights file not found"),
    "corrupt safetensors": (["extract", "--images", "{w}/huge", "--config-file", "{w}/model.yml", "TEST.WEIGHT",
                             "{w}/cut.safetensors", "OUTPUT_DIR", "{w}/o2"],
                            "cut.safetensors: not a readable safetensors file"),
    "npy as features": (["index", "build", "--features", "{w}/x.npy", "{w}/o3"], "x.npy: not a vreid feature file"),
    "id over int64": (["index", "remove", "--index", "{w}/idx", "--ids", "99999999999999999999"],
                      "--ids 99999999999999999999: not a gallery id"),
    "manifest without dim": (["index", "info", "--index", "{w}/nodim"],
                             "index.json: broken manifest (missing or invalid: dim)"),
    "unwritable output": (["ensemble", "--distances", "{w}/dist.npy", "--out", "{w}/afile/out.npy"],
                          "afile/out.npy: cannot write"),
    "200 MP query": (["search", "--index", "{w}/idx", "--config-file", "{w}/model.yml", "--image",
                      "{w}/huge/huge.png"], "huge.png: image of 200000000 pixels has more than"),
    "200 MP in --images": (["extract", "--images", "{w}/huge", "--config-file", "{w}/model.yml", "OUTPUT_DIR",
                            "{w}/o4"], "huge.png: image of 200000000 pixels has more than"),
    "EPS query": (["search", "--index", "{w}/idx", "--config-file", "{w}/model.yml", "--image", "{w}/ghost.jpg"],
                  "ghost.jpg: unreadable image (not a JPEG, PNG, WebP or BMP file)"),
    "_BASE_ secret file": (["config", "show", "--config-file", "{w}/base_secret.yml"],
                           "shadow: not a vreid config file"),
    "_BASE_ broken YAML": (["config", "show", "--config-file", "{w}/base_broken.yml"],
                           "broken.yml:3:3: not valid YAML"),
    "config not UTF-8": (["config", "show", "--config-file", "{w}/latin1.yml"],
                         "latin1.yml: cannot read the config file (UnicodeDecodeError)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(world, case):
    argv, expected = CASES[case]
    run = subprocess.run([sys.executable, "-m", "vreid.cli", *(a.format(w=world) for a in argv)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors == run.stderr.strip().splitlines()[-1:], run.stderr
    assert expected in errors[0], run.stderr
    assert "SECRETHASH" not in run.stderr + run.stdout  # a file's contents are never echoed


def test_search_table_survives_file_names_that_are_not_utf8(world):
    run = subprocess.run([sys.executable, "-m", "vreid.cli", "search", "--index", str(world / "idx_bytes"),
                          "--config-file", str(world / "model.yml"), "--image", str(world / "huge" / "small.png")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert run.returncode == 0, run.stderr
    assert "caf\\xe9.jpg" in run.stdout and "b.jpg" in run.stdout
