"""vehicle-2cam reader: list files, camera-1 queries vs camera-2 gallery, and the real shared copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jpeg, write_lines
from vreid.data.formats import load_dataset, vehicle2cam
from vreid.errors import DatasetError


def make(root: Path, lists: dict[str, list[str]]) -> Path:
    for name, ids in lists.items():
        folder = root / "images" / ("test" if name == "test" else "train")
        files = [f"{vid}_cam{c}.jpg" for vid in ids for c in (2, 1)]
        for f in files:
            write_jpeg(folder / f)
        write_lines(root / f"{name}.txt", files, trailing_newline=False)  # as released: no final newline
    return root


def test_lists_queries_and_gallery(tmp_path):
    root = make(tmp_path, {"train": ["car_0001", "truck_0001", "bus_0007"], "val": ["car_0002", "motorcycle_0003"],
                           "test": ["car_0100"]})
    ds = vehicle2cam.read(root)
    assert {r.vehicle_id for r in ds.train} == {"car_0001", "truck_0001", "bus_0007"}  # same number, other type
    assert len(ds.train) == 6 and len(ds["val"]) == 4 and len(ds["test"]) == 2
    assert ds.meta["test_list"] == "test"  # default: test if present
    assert [r.camera_id for r in ds.query] == ["1"] and [r.camera_id for r in ds.gallery] == ["2"]
    assert ds.query[0].attrs["type"] == "car"
    val = vehicle2cam.read(root, test_split="val")
    assert sorted(r.name for r in val.query) == ["car_0002_cam1.jpg", "motorcycle_0003_cam1.jpg"]
    assert sorted(r.name for r in val.gallery) == ["car_0002_cam2.jpg", "motorcycle_0003_cam2.jpg"]
    assert all(r.path.parent.name == "train" for r in val.query)  # val images live in images/train


def test_only_train_present(tmp_path):
    root = make(tmp_path, {"train": ["car_0001", "car_0002"]})
    ds = vehicle2cam.read(root)
    assert ds.meta["lists_present"] == {"train": True, "val": False, "test": False}
    assert set(ds.splits) == {"train"}
    with pytest.raises(DatasetError, match=r"val\.txt: missing val list"):
        vehicle2cam.read(root, test_split="val")
    with pytest.raises(ValueError, match="test_split"):
        vehicle2cam.read(root, test_split="validation")


def test_bad_names_and_overlaps(tmp_path):
    root = make(tmp_path, {"train": ["car_0001"], "val": ["car_0001"]})
    with pytest.raises(DatasetError, match="both train.txt and val.txt"):
        vehicle2cam.read(root)
    root2 = make(tmp_path / "b", {"train": ["car_0001"]})
    write_jpeg(root2 / "images" / "train" / "oddname.jpg")
    write_lines(root2 / "train.txt", ["car_0001_cam1.jpg", "oddname.jpg"])
    with pytest.raises(DatasetError, match=r"train\.txt:2: file name 'oddname\.jpg'"):
        vehicle2cam.read(root2)
    write_lines(root2 / "train.txt", ["car_0001_cam1.jpg", "car_0009_cam1.jpg"])
    with pytest.raises(DatasetError, match=r"train\.txt:2: lists image 'car_0009_cam1\.jpg'"):
        vehicle2cam.read(root2)


def test_shared_copy_summary_json(shared_vehicle2cam):
    """The real shared copy (training split only) through the command line, as a user runs it."""
    out = subprocess.run([sys.executable, "-m", "vreid.cli", "data", "summary", "--dataset", "vehicle2cam",
                          "--root", str(shared_vehicle2cam), "--json"], capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    names = (shared_vehicle2cam / "train.txt").read_text().split()
    assert stats["train"] == {"images": len(names), "ids": len({n.rsplit("_cam", 1)[0] for n in names}),
                              "cameras": 2, "tracks": 0}
    assert set(stats) == {"train"}
    ds = load_dataset("vehicle2cam", shared_vehicle2cam)
    assert all(r.path.is_file() for r in ds.train)
