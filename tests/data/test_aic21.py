"""AIC21 real and synthetic readers on hand-written fixtures in the release layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_jpeg, write_label_xml, write_lines
from vreid.data.formats import aic21, load_dataset
from vreid.errors import DatasetError, UnlabelledSplitError

TRAIN = [  # name, vehicle, camera
    ("000001.jpg", "0001", "c001"), ("000002.jpg", "0001", "c001"), ("000003.jpg", "0001", "c002"),
    ("000004.jpg", "0002", "c002"), ("000005.jpg", "0002", "c003"), ("000006.jpg", "0003", "c001"),
]


def make_real(root: Path, eval_labels: bool = False) -> Path:
    base = root / "AIC21_Track2_ReID"
    for split, names in {"train": [t[0] for t in TRAIN], "query": ["000001.jpg", "000002.jpg"],
                         "test": ["000001.jpg", "000002.jpg", "000003.jpg"]}.items():
        for n in names:
            write_jpeg(base / f"image_{split}" / n)
        write_lines(base / f"name_{split}.txt", names, trailing_newline=split != "test")
    write_label_xml(base / "train_label.xml",
                    [{"imageName": n, "vehicleID": v, "cameraID": c} for n, v, c in TRAIN])
    write_label_xml(base / "query_label.xml", [{"imageName": "000001.jpg", "cameraID": "c041"},
                                               {"imageName": "000002.jpg", "cameraID": "c042"}])
    write_lines(base / "train_track.txt", ["000001.jpg 000002.jpg", "000003.jpg", "000004.jpg 000005.jpg"])
    write_lines(base / "test_track.txt", ["000001.jpg 000003.jpg", "000002.jpg"])
    if eval_labels:
        write_label_xml(base / "vreid_query_label.xml", [
            {"imageName": "000001.jpg", "vehicleID": "0100", "cameraID": "c041"},
            {"imageName": "000002.jpg", "vehicleID": "0101", "cameraID": "c042"}])
        write_label_xml(base / "vreid_test_label.xml", [
            {"imageName": n, "vehicleID": v, "cameraID": "c043"}
            for n, v in [("000001.jpg", "0100"), ("000002.jpg", "0101"), ("000003.jpg", "0100")]])
    return base


def test_real_set_parses_labels_tracks_and_leaves_test_unlabelled(tmp_path):
    make_real(tmp_path)
    ds = load_dataset("aic21", tmp_path)  # the parent folder is accepted
    assert [(r.name, r.vehicle_id, r.camera_id) for r in ds.train] == TRAIN
    assert ds.train[0].track_id == ds.train[1].track_id != ds.train[2].track_id
    assert ds.train[5].track_id is None  # 000006 is in no track
    assert [r.vehicle_id for r in ds.query] == [None, None]
    assert [r.camera_id for r in ds.query] == ["c041", "c042"]  # from query_label.xml
    assert [r.camera_id for r in ds.gallery] == [None, None, None]  # no test_label.xml
    assert ds.gallery[0].track_id == ds.gallery[2].track_id
    assert not ds.is_labelled("query")
    with pytest.raises(UnlabelledSplitError, match="query"):
        ds.require_labels("query")


def test_real_set_uses_vreid_eval_labels_when_present(tmp_path):
    base = make_real(tmp_path, eval_labels=True)
    ds = aic21.read(base)  # the release folder itself is accepted too
    assert [r.vehicle_id for r in ds.gallery] == ["0100", "0101", "0100"]
    assert ds.require_labels("query")[1].vehicle_id == "0101"


def test_missing_label_for_listed_image_names_the_xml(tmp_path):
    base = make_real(tmp_path)
    write_label_xml(base / "train_label.xml",
                    [{"imageName": n, "vehicleID": v, "cameraID": c} for n, v, c in TRAIN[:-1]])
    with pytest.raises(DatasetError, match=r"train_label\.xml.*000006\.jpg.*line 6"):
        aic21.read(base)


def test_missing_image_names_list_and_line(tmp_path):
    base = make_real(tmp_path)
    (base / "image_train" / "000004.jpg").unlink()
    with pytest.raises(DatasetError, match=r"name_train\.txt:4: .*000004\.jpg"):
        aic21.read(base)


def test_duplicate_image_name_names_both_lines(tmp_path):
    base = make_real(tmp_path)
    write_lines(base / "name_query.txt", ["000001.jpg", "000002.jpg", "000001.jpg"])
    with pytest.raises(DatasetError, match=r"name_query\.txt:3: duplicate image name '000001\.jpg' .*line 1"):
        aic21.read(base)


def test_malformed_xml_names_file_and_line(tmp_path):
    base = make_real(tmp_path)
    (base / "train_label.xml").write_text('<?xml version="1.0" encoding="gb2312"?>\n<TrainingImages>\n'
                                          '<Items>\n<Item imageName="000001.jpg" vehicleID="0001"\n</Items>\n')
    with pytest.raises(DatasetError, match=r"train_label\.xml:5: malformed XML"):
        aic21.read(base)


def test_missing_root_and_missing_list(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        aic21.read(tmp_path / "nowhere")
    base = make_real(tmp_path)
    (base / "name_train.txt").unlink()
    with pytest.raises(DatasetError, match="name_train.txt"):
        aic21.read(base)


def test_local_split_holds_out_ids_with_cross_camera_queries(tmp_path):
    base = tmp_path / "AIC21_Track2_ReID"
    items, names, n = [], [], 0
    for vid in range(1, 13):
        for cam in range(1, 4):
            for _ in range(2):
                n += 1
                name = f"{n:06d}.jpg"
                write_jpeg(base / "image_train" / name)
                names.append(name)
                items.append({"imageName": name, "vehicleID": f"{vid:04d}", "cameraID": f"c{cam:03d}"})
    write_lines(base / "name_train.txt", names)
    write_label_xml(base / "train_label.xml", items)
    ds = load_dataset("aic21", tmp_path, local_split_ids=4, local_split_queries=2, seed=3)
    train_ids = {r.vehicle_id for r in ds.train}
    held = {r.vehicle_id for r in ds.gallery}
    assert len(train_ids) == 8 and len(held) == 4 and not train_ids & held
    assert len(ds.query) == 8  # 2 per held-out id
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == len(items)
    for q in ds.query:  # each query has its id in the gallery from another camera
        assert any(g.vehicle_id == q.vehicle_id and g.camera_id != q.camera_id for g in ds.gallery)
    again = load_dataset("aic21", tmp_path, local_split_ids=4, local_split_queries=2, seed=3)
    assert [r.path for r in again.query] == [r.path for r in ds.query]
    other = load_dataset("aic21", tmp_path, local_split_ids=4, local_split_queries=2, seed=4)
    assert {r.vehicle_id for r in other.gallery} != held or [r.path for r in other.query] != [
        r.path for r in ds.query]


def make_synthetic(root: Path) -> Path:
    base = root / "AIC21_Track2_ReID_Simulation"
    items = []
    for vid, cam, k, ori in [(1, 1, 0, 12.5), (1, 2, 1, 190.0), (2, 1, 0, 355.1)]:
        name = f"{vid:05d}_c{cam:03d}_{k}.jpg"
        write_jpeg(base / "sys_image_train" / name)
        items.append({"imageName": name, "vehicleID": f"{vid:05d}", "cameraID": f"c{cam:03d}",
                      "colorID": "4", "typeID": "1", "orientation": str(ori), "lightInt": "0.7"})
    write_label_xml(base / "train_label.xml", items)
    return base


def test_synthetic_set_keeps_orientation_and_every_attribute(tmp_path):
    make_synthetic(tmp_path)
    ds = load_dataset("aic21_synthetic", tmp_path)
    assert [(r.vehicle_id, r.camera_id, r.orientation) for r in ds.train] == [
        ("00001", "c001", 12.5), ("00001", "c002", 190.0), ("00002", "c001", 355.1)]
    assert all(r.domain == "synthetic" for r in ds.train)
    assert ds.train[0].attrs == {"colorID": "4", "typeID": "1", "lightInt": "0.7"}


def test_synthetic_without_xml_falls_back_to_file_names(tmp_path):
    base = make_synthetic(tmp_path)
    (base / "train_label.xml").unlink()
    ds = aic21.read_synthetic(base)
    assert [(r.vehicle_id, r.camera_id) for r in ds.train] == [("00001", "c001"), ("00001", "c002"),
                                                               ("00002", "c001")]


def test_synthetic_bad_orientation_names_line(tmp_path):
    base = make_synthetic(tmp_path)
    write_label_xml(base / "train_label.xml", [{"imageName": "00001_c001_0.jpg", "vehicleID": "1",
                                               "cameraID": "c001", "orientation": "north"}])
    with pytest.raises(DatasetError, match=r"train_label\.xml:4: orientation must be a number"):
        aic21.read_synthetic(base)


def test_synthetic_images_from_a_translated_copy(tmp_path):
    """DATASETS.SYNTHETIC_IMAGES: same names and labels, pixels read from the other folder."""
    base = make_synthetic(tmp_path)
    for name in ("00001_c001_0.jpg", "00001_c002_1.jpg", "00002_c001_0.jpg"):
        write_jpeg(base / "output_UNIT" / name, color=(10, 200, 10))
    ds = load_dataset("aic21_synthetic", tmp_path, synthetic_images="output_UNIT")
    assert [(r.path, r.vehicle_id, r.orientation) for r in ds.train] == [
        (base / "output_UNIT" / "00001_c001_0.jpg", "00001", 12.5),
        (base / "output_UNIT" / "00001_c002_1.jpg", "00001", 190.0),
        (base / "output_UNIT" / "00002_c001_0.jpg", "00002", 355.1)]
    absolute = load_dataset("aic21_synthetic", tmp_path, synthetic_images=str(base / "output_UNIT"))
    assert [r.path for r in absolute.train] == [r.path for r in ds.train]
    (base / "output_UNIT" / "00002_c001_0.jpg").unlink()  # a labelled image missing from the copy
    with pytest.raises(DatasetError, match="00002_c001_0.jpg"):
        load_dataset("aic21_synthetic", tmp_path, synthetic_images="output_UNIT")
    with pytest.raises(DatasetError, match="output_UNIT"):
        load_dataset("aic21_synthetic", tmp_path, synthetic_images=str(tmp_path / "nowhere" / "output_UNIT"))
