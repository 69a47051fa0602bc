"""VeRi-Wild reader on fixtures in the release layout under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import error_at as _err
from vreid.data.formats import veriwild
from vreid.errors import DatasetError

TRAIN = ["00001/000001", "00001/000002", "00002/000010"]
# test_3000.txt: 3 ids x 3 images, queries included (as in the release); one query per id
TEST_3000 = [f"{30001 + i // 3}/{300000 + i:06d}" for i in range(9)]
QUERY_3000 = [TEST_3000[1], TEST_3000[3], TEST_3000[8]]
TEST_5000 = TEST_3000 + ["50001/500000", "50001/500001"]
QUERY_5000 = QUERY_3000 + ["50001/500001"]
# camera ids only vehicle_info.txt knows (not derivable from paths); TRAIN[2] has no entry
CAMERAS = {key: str(100 + n) for n, key in enumerate(TRAIN[:2] + TEST_5000)}


def make_wild(base: Path, folder: str = "VERI-Wild") -> Path:
    root = base / folder
    split = root / "train_test_split"
    split.mkdir(parents=True)
    for key in TRAIN + TEST_5000:
        (root / "images" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / f"{key}.jpg").write_bytes(b"")  # readers never decode images
    for name, keys in (
        ("train_list.txt", TRAIN),
        ("test_3000.txt", TEST_3000),
        ("test_3000_query.txt", QUERY_3000),
        ("test_5000.txt", TEST_5000),
        ("test_5000_query.txt", QUERY_5000),
    ):
        (split / name).write_text("\n".join(keys) + "\n")
    info = ["id/image;Camera ID;Time;Model;Type;Color"]
    info += [f"{k};{c};2018-03-0{int(c) % 9 + 1} 10:00:00;Model {c};SUV;white" for k, c in CAMERAS.items()]
    (split / "vehicle_info.txt").write_text("\n".join(info) + "\n")
    return root


def _keys(records: list) -> list[str]:
    return [f"{r.path.parent.name}/{r.path.stem}" for r in records]


def test_reads_splits_and_gallery_excludes_queries(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    ds = veriwild.read(root)
    assert ds.name == "veriwild"
    assert _keys(ds.train) == TRAIN
    assert _keys(ds.query) == QUERY_3000
    assert _keys(ds.gallery) == [k for k in TEST_3000 if k not in QUERY_3000]
    assert not set(_keys(ds.query)) & set(_keys(ds.gallery))
    assert ds.query[0].path == root / "images" / "30001" / "300001.jpg"
    assert [r.vehicle_id for r in ds.query] == ["30001", "30002", "30003"]
    assert ds.meta["test_size"] == 3000 and ds.meta["gallery_excludes_queries"] is True
    assert all(r.domain == "real" for s in ds.splits.values() for r in s)


def test_cameras_and_attrs_from_vehicle_info(tmp_path: Path) -> None:
    ds = veriwild.read(make_wild(tmp_path))
    for r in ds.query + ds.gallery + ds.train[:2]:
        assert r.camera_id == CAMERAS[f"{r.vehicle_id}/{r.path.stem}"]
    cam = ds.query[0].camera_id
    assert ds.query[0].attrs == {
        "time": f"2018-03-0{int(cam) % 9 + 1} 10:00:00",
        "model": f"Model {cam}",
        "type": "SUV",
        "color": "white",
    }
    assert ds.train[2].camera_id is None and ds.train[2].attrs == {}  # a training image with no entry


def test_vehicle_info_header_skipped_only_if_present(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    info = root / "train_test_split" / "vehicle_info.txt"
    assert "id/image" not in veriwild._read_vehicle_info(info)
    info.write_text("".join(line + "\n" for line in info.read_text().splitlines()[1:]))  # no header
    assert veriwild.read(root).train[0].camera_id == CAMERAS[TRAIN[0]]


def test_vehicle_info_at_release_root(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    (root / "train_test_split" / "vehicle_info.txt").rename(root / "vehicle_info.txt")
    assert veriwild.read(root).query[0].camera_id == CAMERAS[QUERY_3000[0]]


@pytest.mark.parametrize(
    ("split", "size"), [("", 3000), ("small", 3000), ("3000", 3000), ("medium", 5000), ("5000", 5000)]
)
def test_test_split_names(tmp_path: Path, split: str, size: int) -> None:
    ds = veriwild.read(make_wild(tmp_path), test_split=split)
    assert ds.meta["test_size"] == size
    queries = QUERY_3000 if size == 3000 else QUERY_5000
    tests = TEST_3000 if size == 3000 else TEST_5000
    assert _keys(ds.query) == queries
    assert len(ds.gallery) == len(tests) - len(queries)


def test_parent_folder_accepted(tmp_path: Path) -> None:
    make_wild(tmp_path, "veri-wild")
    assert veriwild.read(tmp_path).root == tmp_path / "veri-wild"


def test_unknown_test_split(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    with pytest.raises(ValueError, match="test_split") as exc:
        veriwild.read(root, test_split="huge")
    assert "'huge'" in str(exc.value) and "'10000'" in str(exc.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        veriwild.read(tmp_path / "nowhere")
    _err(exc, tmp_path / "nowhere")


def test_missing_list_files(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root, test_split="large")
    _err(exc, root / "train_test_split" / "test_10000.txt")
    (root / "train_test_split" / "test_3000_query.txt").unlink()
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    _err(exc, root / "train_test_split" / "test_3000_query.txt")


def test_missing_vehicle_info(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    (root / "train_test_split" / "vehicle_info.txt").unlink()
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    _err(exc, root / "train_test_split" / "vehicle_info.txt")


def test_list_names_missing_image(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    (root / "images" / f"{TEST_3000[4]}.jpg").unlink()
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    assert TEST_3000[4] in _err(exc, root / "train_test_split" / "test_3000.txt", 5)


def test_list_names_missing_vehicle_folder(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    (root / "train_test_split" / "train_list.txt").write_text("\n".join(TRAIN + ["09999/000001"]) + "\n")
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    assert "does not exist" in _err(exc, root / "train_test_split" / "train_list.txt", 4)


@pytest.mark.parametrize("bad", ["30001", "30001/300000/x", "30001 300000"])
def test_malformed_list_line(tmp_path: Path, bad: str) -> None:
    root = make_wild(tmp_path)
    lines = list(TEST_3000)
    lines[1] = bad
    (root / "train_test_split" / "test_3000.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    assert "vid/imgid" in _err(exc, root / "train_test_split" / "test_3000.txt", 2)


def test_duplicate_image_in_list(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    (root / "train_test_split" / "test_3000.txt").write_text("\n".join(TEST_3000 + [TEST_3000[2]]) + "\n")
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    assert "duplicate" in _err(exc, root / "train_test_split" / "test_3000.txt", 10)


def test_test_image_without_camera_is_error(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    info = root / "train_test_split" / "vehicle_info.txt"
    kept = [line for line in info.read_text().splitlines() if TEST_3000[6] not in line]
    info.write_text("\n".join(kept) + "\n")
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    assert "vehicle_info" in _err(exc, root / "train_test_split" / "test_3000.txt", 7)


def test_query_outside_test_list_is_error(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    (root / "train_test_split" / "test_3000_query.txt").write_text("\n".join(QUERY_3000 + [TEST_5000[-1]]))
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    assert "test_3000.txt" in _err(exc, root / "train_test_split" / "test_3000_query.txt", 4)


@pytest.mark.parametrize(
    ("line", "words"),
    [(f"{TEST_3000[0]}", "expected"), (f"{TEST_3000[0]};;t;m;SUV;red", "expected"), ("3000x;1", "vid/imgid")],
)
def test_malformed_vehicle_info(tmp_path: Path, line: str, words: str) -> None:
    root = make_wild(tmp_path)
    info = root / "train_test_split" / "vehicle_info.txt"
    lines = info.read_text().splitlines()
    lines.insert(3, line)
    info.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    assert words in _err(exc, info, 4)


def test_duplicate_vehicle_info_entry(tmp_path: Path) -> None:
    root = make_wild(tmp_path)
    info = root / "train_test_split" / "vehicle_info.txt"
    lines = info.read_text().splitlines()
    info.write_text("\n".join(lines + [lines[3]]) + "\n")
    with pytest.raises(DatasetError) as exc:
        veriwild.read(root)
    assert "duplicate" in _err(exc, info, len(lines) + 1)
