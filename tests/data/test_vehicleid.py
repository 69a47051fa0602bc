"""VehicleID reader and its one-gallery-image-per-identity protocol, on fixtures under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import error_at as _err
from vreid.data.formats import vehicleid
from vreid.errors import DatasetError

TRAIN = [(f"{i:07d}", "1" if i < 3 else "2") for i in range(6)]
# 5 test identities of 4 images each (test_list_800.txt); 2 identities in test_list_1600.txt
TEST_800 = [(f"{100 + i:07d}", str(10 + i // 4)) for i in range(20)]
TEST_1600 = [(f"{200 + i:07d}", str(20 + i // 3)) for i in range(6)]


def _write_list(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{img} {vid}\n" for img, vid in pairs))


def make_vehicleid(base: Path, folder: str = "VehicleID_V1.0") -> Path:
    root = base / folder
    (root / "image").mkdir(parents=True)
    (root / "train_test_split").mkdir()
    (root / "attribute").mkdir()
    for img, _ in TRAIN + TEST_800 + TEST_1600:
        (root / "image" / f"{img}.jpg").write_bytes(b"")  # readers never decode images
    _write_list(root / "train_test_split" / "train_list.txt", TRAIN)
    _write_list(root / "train_test_split" / "test_list_800.txt", TEST_800)
    _write_list(root / "train_test_split" / "test_list_1600.txt", TEST_1600)
    (root / "attribute" / "model_attr.txt").write_text("1 101\n10 7\n011 9\n")  # "011" = vehicle 11
    (root / "attribute" / "color_attr.txt").write_text("10 3\n")
    return root


def _key(records: list) -> list[str]:
    return [r.path.name for r in records]


def test_reads_train_and_default_small_test(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    ds = vehicleid.read(root)
    assert ds.name == "vehicleid"
    assert [(r.path.name, r.vehicle_id) for r in ds.train] == [(f"{i}.jpg", v) for i, v in TRAIN]
    assert ds.train[0].path == root / "image" / "0000000.jpg"
    assert all(r.camera_id is None and r.domain == "real" for s in ds.splits.values() for r in s)
    assert ds.meta["test_size"] == 800 and ds.meta["trial_seed"] == 0
    assert ds.meta["test_list"] == "test_list_800.txt"
    assert len(ds.query) + len(ds.gallery) == len(TEST_800)


def test_attributes_joined_by_vehicle(tmp_path: Path) -> None:
    ds = vehicleid.read(make_vehicleid(tmp_path))
    assert ds.train[0].attrs == {"model": "101"}
    assert ds.train[5].attrs == {}
    by_vid = {r.vehicle_id: r.attrs for r in ds.query + ds.gallery}
    assert by_vid["10"] == {"model": "7", "color": "3"}
    assert by_vid["11"] == {"model": "9"}  # zero padding in the attribute file does not matter
    assert by_vid["12"] == {}


def test_attributes_optional(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    (root / "attribute" / "model_attr.txt").unlink()
    (root / "attribute" / "color_attr.txt").unlink()
    ds = vehicleid.read(root)
    assert all(r.attrs == {} for r in ds.train)
    assert ds.meta["attributes_present"] == []


def test_gallery_protocol_one_image_per_id(tmp_path: Path) -> None:
    ds = vehicleid.read(make_vehicleid(tmp_path), seed=3)
    gallery_ids = [r.vehicle_id for r in ds.gallery]
    assert sorted(gallery_ids) == sorted({v for _, v in TEST_800})  # exactly one per test id
    assert not set(_key(ds.query)) & set(_key(ds.gallery))
    assert sorted(_key(ds.query) + _key(ds.gallery)) == sorted(f"{i}.jpg" for i, _ in TEST_800)
    assert len(ds.query) == len(TEST_800) - 5
    assert ds.meta["trial_seed"] == 3


def test_same_seed_repeats_different_seeds_differ(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    a, b = vehicleid.read(root, seed=1), vehicleid.read(root, seed=1)
    assert _key(a.gallery) == _key(b.gallery) and _key(a.query) == _key(b.query)
    galleries = {tuple(_key(vehicleid.read(root, seed=s).gallery)) for s in range(5)}
    assert len(galleries) == 5
    assert _key(vehicleid.read(root, seed=0).gallery) != _key(a.gallery)


def test_sample_gallery_reruns_trials_without_reading(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    ds = vehicleid.read(root, seed=0)
    test = list(reversed(ds.query + ds.gallery))  # order must not matter
    for seed in (0, 4):
        q, g = vehicleid.sample_gallery(test, seed)
        expected = vehicleid.read(root, seed=seed)
        assert _key(q) == _key(expected.query) and _key(g) == _key(expected.gallery)


def test_sample_gallery_single_image_id_goes_to_gallery(tmp_path: Path) -> None:
    ds = vehicleid.read(make_vehicleid(tmp_path))
    one = [r for r in ds.train if r.vehicle_id == "1"][:1] + [r for r in ds.train if r.vehicle_id == "2"]
    q, g = vehicleid.sample_gallery(one, 0)
    assert [r.vehicle_id for r in g] == ["1", "2"] and len(q) == 2


@pytest.mark.parametrize(("split", "size"), [("", 800), ("small", 800), ("800", 800), ("medium", 1600)])
def test_test_split_names(tmp_path: Path, split: str, size: int) -> None:
    ds = vehicleid.read(make_vehicleid(tmp_path), test_split=split)
    assert ds.meta["test_size"] == size
    expected = TEST_800 if size == 800 else TEST_1600
    assert len(ds.query) + len(ds.gallery) == len(expected)


def test_parent_folder_accepted(tmp_path: Path) -> None:
    make_vehicleid(tmp_path, "VehicleID")
    assert vehicleid.read(tmp_path).root == tmp_path / "VehicleID"


def test_unknown_test_split(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    with pytest.raises(ValueError, match="test_split") as exc:
        vehicleid.read(root, test_split="900")
    assert "'900'" in str(exc.value) and "'13164'" in str(exc.value) and "'large'" in str(exc.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        vehicleid.read(tmp_path / "nowhere")
    _err(exc, tmp_path / "nowhere")


def test_missing_test_list(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    with pytest.raises(DatasetError) as exc:
        vehicleid.read(root, test_split="large")
    assert "missing" in _err(exc, root / "train_test_split" / "test_list_2400.txt")


def test_missing_image_folder(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    for f in (root / "image").iterdir():
        f.unlink()
    (root / "image").rmdir()
    with pytest.raises(DatasetError) as exc:
        vehicleid.read(root)
    _err(exc, root / "image")


def test_list_names_missing_image(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    (root / "image" / f"{TEST_800[6][0]}.jpg").unlink()
    with pytest.raises(DatasetError) as exc:
        vehicleid.read(root)
    assert TEST_800[6][0] in _err(exc, root / "train_test_split" / "test_list_800.txt", 7)


@pytest.mark.parametrize("bad", ["0000100", "0000100 10 extra"])
def test_malformed_list_line(tmp_path: Path, bad: str) -> None:
    root = make_vehicleid(tmp_path)
    lines = [f"{i} {v}" for i, v in TRAIN]
    lines[2] = bad
    (root / "train_test_split" / "train_list.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as exc:
        vehicleid.read(root)
    assert "<image_id> <vehicle_id>" in _err(exc, root / "train_test_split" / "train_list.txt", 3)


def test_duplicate_image_in_list(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    _write_list(root / "train_test_split" / "test_list_800.txt", TEST_800 + [TEST_800[0]])
    with pytest.raises(DatasetError) as exc:
        vehicleid.read(root)
    assert "duplicate" in _err(exc, root / "train_test_split" / "test_list_800.txt", 21)


def test_malformed_attribute_line(tmp_path: Path) -> None:
    root = make_vehicleid(tmp_path)
    (root / "attribute" / "color_attr.txt").write_text("10 3\n11\n")
    with pytest.raises(DatasetError) as exc:
        vehicleid.read(root)
    _err(exc, root / "attribute" / "color_attr.txt", 2)
