"""The generic `folder` format: CSV lists or split folders labelled by a file-name pattern."""

from __future__ import annotations

import pytest

from conftest import write_jpeg, write_lines
from vreid.data.formats import folder, load_dataset
from vreid.errors import DatasetError


def test_csv_mode_with_tracks_and_extra_columns(tmp_path):
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        write_jpeg(tmp_path / "imgs" / n)
    write_lines(tmp_path / "train.csv", ["path,vehicle_id,camera_id,track_id,orientation,colour",
                                         "imgs/a.jpg,7,c1,t1,90,red", "imgs/b.jpg,7,c2,,,red"])
    write_lines(tmp_path / "query.csv", ["path,vehicle_id,camera_id", f"{tmp_path / 'imgs' / 'c.jpg'},8,c1"])
    ds = load_dataset("folder", tmp_path)
    assert ds.meta["mode"] == "csv" and set(ds.splits) == {"train", "query"}
    a, b = ds.train
    assert (a.vehicle_id, a.camera_id, a.track_id, a.orientation, a.attrs) == ("7", "c1", "t1", 90.0,
                                                                               {"colour": "red"})
    assert (b.track_id, b.orientation) == (None, None)
    assert ds.query[0].path == tmp_path / "imgs" / "c.jpg"  # absolute paths kept


@pytest.mark.parametrize("lines, match", [
    (["path,vehicle_id", "imgs/a.jpg,7"], r"train\.csv:1: CSV header must contain.*camera_id"),
    (["path,vehicle_id,camera_id", "imgs/a.jpg,7"], r"train\.csv:2: expected 3 columns"),
    (["path,vehicle_id,camera_id", "imgs/zz.jpg,7,c1"], r"train\.csv:2: lists image 'imgs/zz\.jpg'"),
    (["path,vehicle_id,camera_id", "imgs/a.jpg,7,c1", "imgs/a.jpg,7,c1"], r"train\.csv:3: duplicate image"),
    (["path,vehicle_id,camera_id,orientation", "imgs/a.jpg,7,c1,east"], r"train\.csv:2: orientation"),
])
def test_csv_errors_name_file_and_line(tmp_path, lines, match):
    write_jpeg(tmp_path / "imgs" / "a.jpg")
    write_lines(tmp_path / "train.csv", lines)
    with pytest.raises(DatasetError, match=match):
        folder.read(tmp_path)


def test_folder_mode_default_and_custom_pattern(tmp_path):
    write_jpeg(tmp_path / "train" / "0002_c002_00030600_0.jpg")
    write_jpeg(tmp_path / "train" / "0003_c011_00030600_1.jpg")
    write_jpeg(tmp_path / "gallery" / "0002_c003_00000001_0.png")
    ds = folder.read(tmp_path)
    assert [(r.vehicle_id, r.camera_id) for r in ds.train] == [("0002", "002"), ("0003", "011")]
    assert ds.gallery[0].camera_id == "003"

    other = tmp_path / "other"
    write_jpeg(other / "query" / "car42" / "cam7-frame3.jpg")
    ds = folder.read(other, pattern=r"(?P<vehicle_id>[^/]+)/cam(?P<camera_id>\d+)-frame(?P<track_id>\d+)")
    assert (ds.query[0].vehicle_id, ds.query[0].camera_id, ds.query[0].track_id) == ("car42", "7", "3")
    with pytest.raises(DatasetError, match="does not match the pattern"):
        folder.read(other)
    with pytest.raises(ValueError, match="vehicle_id"):
        folder.read(other, pattern=r"(?P<id>\d+)")


def test_empty_root_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no data"):
        folder.read(tmp_path)
