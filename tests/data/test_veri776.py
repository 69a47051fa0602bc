"""VeRi-776 reader: fixtures written in the release's exact layout under tmp_path."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from PIL import Image

from conftest import error_at as _err
from vreid.data.formats import veri776
from vreid.errors import DatasetError


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()

TRAIN = ["0001_c001_00016450_0.jpg", "0001_c002_00016460_0.jpg", "0003_c001_00020000_0.jpg", "odd.jpg"]
TEST = [
    "0002_c002_00030600_0.jpg",
    "0002_c002_00030605_1.jpg",
    "0002_c003_00030700_0.jpg",
    "0004_c001_00040000_0.jpg",
    "0004_c002_00040100_0.jpg",
]
QUERY = ["0002_c002_00030600_0.jpg", "0004_c001_00040000_0.jpg"]
BRAND = "红旗"  # encodable in gb2312; proves the XML is decoded with its declared codec


def _xml(items: list[str]) -> bytes:
    body = "\n".join(f"    {i}" for i in items)
    text = (
        '<?xml version="1.0" encoding="gb2312"?>\n'
        '<TrainingImages Version="1.0">\n'
        f'  <Items number="{len(items)}">\n{body}\n  </Items>\n</TrainingImages>\n'
    )
    return text.encode("gb2312")


def _item(name: str, vid: str, cam: str, color: str = "1", typ: str = "4", extra: str = "") -> str:
    ids = f'imageName="{name}" vehicleID="{vid}" cameraID="{cam}"'
    return f'<Item {ids} colorID="{color}" typeID="{typ}"{extra} />'


def make_veri(base: Path, folder: str = "VeRi") -> Path:
    root = base / folder
    for sub, names in (("image_train", TRAIN), ("image_test", TEST), ("image_query", QUERY)):
        (root / sub).mkdir(parents=True)
        for n in names:
            (root / sub / n).write_bytes(JPEG)
    (root / "name_train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "name_test.txt").write_text("\n".join(TEST) + "\n")
    (root / "name_query.txt").write_text("\n".join(QUERY))  # no final newline, as some copies ship
    train_items = [
        _item(TRAIN[0], "0001", "c001", "1", "4", f' brand="{BRAND}"'),
        _item(TRAIN[1], "0001", "c002", "1", "4"),
        _item(TRAIN[2], "0003", "c001", "2", "0"),
        _item("odd.jpg", "0009", "c005", "3", "2"),  # a name only the XML can label
    ]
    (root / "train_label.xml").write_bytes(_xml(train_items))
    # TEST[4] is deliberately missing from test_label.xml: labelled from its file name
    test_items = [
        _item(TEST[0], "0002", "c002", "5", "1"),
        _item(TEST[1], "0002", "c002", "5", "1"),
        _item(TEST[2], "0002", "c003", "5", "1"),
        _item(TEST[3], "0004", "c001", "7", "3"),
    ]
    (root / "test_label.xml").write_bytes(_xml(test_items))
    (root / "test_track.txt").write_text(
        f"0002_c002 {TEST[0]} {TEST[1]}\n0002_c003 {TEST[2]}\n0004_c001 {TEST[3]}\n0004_c002 {TEST[4]}\n"
    )
    (root / "gt_index.txt").write_text("3\n5\n")
    (root / "jk_index.txt").write_text("1 2\n4\n")
    return root


def test_reads_splits_ids_cameras_and_attrs(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    ds = veri776.read(root)
    assert ds.name == "veri776"
    assert [r.name for r in ds.train] == TRAIN
    assert [r.name for r in ds.gallery] == TEST
    assert [r.name for r in ds.query] == QUERY
    assert [(r.vehicle_id, r.camera_id) for r in ds.train] == [
        ("0001", "c001"),
        ("0001", "c002"),
        ("0003", "c001"),
        ("0009", "c005"),
    ]
    assert ds.train[0].path == root / "image_train" / TRAIN[0]
    assert ds.train[2].attrs == {"colorID": "2", "typeID": "0"}
    assert ds.query[1].attrs == {"colorID": "7", "typeID": "3"}  # query labelled by test_label.xml
    assert ds.gallery[4].vehicle_id == "0004" and ds.gallery[4].camera_id == "c002"
    assert ds.gallery[4].attrs == {}
    assert all(r.domain == "real" for s in ds.splits.values() for r in s)
    assert ds.meta["labels_from_names"] == 1
    assert set(ds.meta["lists_present"]) == set(veri776.OPTIONAL_FILES)


def test_gb2312_label_xml_decoded(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    raw = (root / "train_label.xml").read_bytes()
    assert BRAND.encode("gb2312") in raw and BRAND.encode("utf-8") not in raw
    assert veri776.read(root).train[0].attrs["brand"] == BRAND


def test_parent_folder_and_plate_release(tmp_path: Path) -> None:
    make_veri(tmp_path, "VeRi_with_plate")
    ds = veri776.read(tmp_path)
    assert ds.root == tmp_path / "VeRi_with_plate"
    assert len(ds.gallery) == len(TEST)


def test_tracks_assigned_to_gallery_and_query(tmp_path: Path) -> None:
    ds = veri776.read(make_veri(tmp_path))
    g = [r.track_id for r in ds.gallery]
    assert None not in g
    assert g[0] == g[1] and len(set(g)) == 4
    assert ds.query[0].track_id == g[0] and ds.query[1].track_id == g[3]
    assert all(r.track_id is None for r in ds.train)


def test_without_track_file_no_tracks(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    (root / "test_track.txt").unlink()
    ds = veri776.read(root)
    assert all(r.track_id is None for r in ds.gallery)
    assert "test_track.txt" not in ds.meta["lists_present"]


def test_gt_jk_index_zero_based(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    (root / "jk_index.txt").write_text("1 2\n\n")  # the second query has no junk: a blank line
    (root / "gt_index.txt").write_text("3\n5\n\n")  # extra final newlines are not queries
    ds = veri776.read(root)
    assert ds.meta["gt_index"] == [[2], [4]]
    assert ds.meta["jk_index"] == [[0, 1], []]


def test_index_files_optional(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    (root / "gt_index.txt").unlink()
    (root / "jk_index.txt").unlink()
    ds = veri776.read(root)
    assert "gt_index" not in ds.meta and "jk_index" not in ds.meta
    assert "gt_index.txt" not in ds.meta["lists_present"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("3\n5\n1\n", 3, "expected one per query"),
        ("3\n", 1, "expected one per query"),
        ("3\n6\n", 2, "out of range"),
        ("0\n5\n", 1, "out of range"),
        ("3\nx\n", 2, "not an integer"),
    ],
)
def test_index_validation(tmp_path: Path, text: str, line: int, words: str) -> None:
    root = make_veri(tmp_path)
    (root / "gt_index.txt").write_text(text)
    with pytest.raises(DatasetError) as exc:
        veri776.read(root)
    assert words in _err(exc, root / "gt_index.txt", line)


def test_filename_fallback_without_xml(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    (root / "test_label.xml").unlink()
    ds = veri776.read(root)
    assert [(r.vehicle_id, r.camera_id) for r in ds.query] == [("0002", "c002"), ("0004", "c001")]
    assert all(r.attrs == {} for r in ds.gallery)
    assert ds.meta["labels_from_names"] == len(TEST) + len(QUERY)
    assert "test_label.xml" not in ds.meta["lists_present"]


def test_unlabellable_name_is_error(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    (root / "train_label.xml").unlink()  # now odd.jpg has neither a label nor a parsable name
    with pytest.raises(DatasetError) as exc:
        veri776.read(root)
    assert "odd.jpg" in _err(exc, root / "name_train.txt", 4)


def test_name_lists_absent_fall_back_to_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_veri(tmp_path)
    for f in ("name_train.txt", "name_query.txt", "name_test.txt"):
        (root / f).unlink()
    with caplog.at_level(logging.WARNING, logger="vreid.data.formats.veri776"):
        ds = veri776.read(root)
    assert [r.name for r in ds.train] == sorted(TRAIN)
    assert [r.name for r in ds.gallery] == sorted(TEST)
    assert "name_test.txt: absent" in caplog.text
    assert "gt_index" not in ds.meta  # its indices refer to name_test.txt's order, which is unknown


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        veri776.read(tmp_path / "nowhere")
    _err(exc, tmp_path / "nowhere")


def test_not_a_veri_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="image_train"):
        veri776.read(tmp_path)


def test_missing_image_folder(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    for f in (root / "image_query").iterdir():
        f.unlink()
    (root / "image_query").rmdir()
    with pytest.raises(DatasetError) as exc:
        veri776.read(root)
    _err(exc, root / "image_query")


def test_list_names_missing_image(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    (root / "image_test" / TEST[2]).unlink()
    with pytest.raises(DatasetError) as exc:
        veri776.read(root)
    assert TEST[2] in _err(exc, root / "name_test.txt", 3)


def test_duplicate_name_in_list(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    (root / "name_query.txt").write_text(f"{QUERY[0]}\n{QUERY[1]}\n{QUERY[0]}\n")
    with pytest.raises(DatasetError) as exc:
        veri776.read(root)
    assert "duplicate" in _err(exc, root / "name_query.txt", 3)


def test_malformed_xml(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    raw = (root / "test_label.xml").read_bytes().replace(b"</Items>", b"</Itemz>")
    (root / "test_label.xml").write_bytes(raw)
    with pytest.raises(DatasetError) as exc:
        veri776.read(root)
    assert "malformed XML" in _err(exc, root / "test_label.xml", 8)


def test_xml_item_without_vehicle_id(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    items = [f'<Item imageName="{TEST[0]}" cameraID="c002" />']
    (root / "test_label.xml").write_bytes(_xml(items))
    with pytest.raises(DatasetError) as exc:
        veri776.read(root)
    assert "vehicleID" in _err(exc, root / "test_label.xml", 4)


def test_duplicate_xml_item(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    items = [_item(TEST[0], "0002", "c002"), _item(TEST[0], "0002", "c002")]
    (root / "test_label.xml").write_bytes(_xml(items))
    with pytest.raises(DatasetError) as exc:
        veri776.read(root)
    assert "duplicate" in _err(exc, root / "test_label.xml", 5)


def test_unknown_test_split(tmp_path: Path) -> None:
    root = make_veri(tmp_path)
    with pytest.raises(ValueError, match="test_split") as exc:
        veri776.read(root, test_split="small")
    assert "'small'" in str(exc.value)
