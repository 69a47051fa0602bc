"""Records: relabelling, split statistics and the hold-out split, against hand-computed answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from vreid.data.records import Dataset, ImageRecord, class_key, hold_out_split, relabel, split_stats
from vreid.errors import UnlabelledSplitError


def rec(name: str, vid: str | None, cam: str | None = "c1", track: str | None = None) -> ImageRecord:
    return ImageRecord(Path(name), vid, cam, track)


def test_relabel_keeps_dataset_id_spaces_apart():
    veri = [rec("a", "0001"), rec("b", "0005"), rec("c", "0001")]
    syn = [rec("d", "0001"), rec("e", "0002")]
    labels, mapping = relabel([veri, syn])
    assert labels == [0, 1, 0, 2, 3]
    assert mapping == {(0, "0001"): 0, (0, "0005"): 1, (1, "0001"): 2, (1, "0002"): 3}
    with pytest.raises(UnlabelledSplitError):
        relabel([[rec("x", None)]])


def test_split_stats_counts_and_unlabelled():
    records = [rec("a", "1", "c1", "t1"), rec("b", "1", "c2", "t1"), rec("c", "2", None, None)]
    assert split_stats(records) == {"images": 3, "ids": 2, "cameras": 2, "tracks": 1}
    assert split_stats([rec("a", None), rec("b", "1")])["ids"] is None


def test_require_labels_names_the_split():
    ds = Dataset("x", Path("/data/x"), {"query": [rec("a", None)], "gallery": [rec("b", "1")]})
    assert ds.require_labels("gallery")[0].vehicle_id == "1"
    with pytest.raises(UnlabelledSplitError, match=r"split 'query' of dataset 'x' has 1 of 1"):
        ds.require_labels("query")
    with pytest.raises(KeyError, match="has no split 'train'"):
        ds["train"]


def test_hold_out_never_picks_a_query_without_a_cross_camera_match():
    # id 1: one camera only -> no query possible; id 2: cams c1 x1, c2 x1 -> exactly one query
    records = [rec("a", "1", "c1"), rec("b", "1", "c1"), rec("c", "2", "c1"), rec("d", "2", "c2"),
               rec("e", "3", "c1")]
    for seed in range(10):
        train, query, gallery = hold_out_split(records, num_ids=2, seed=seed, queries_per_id=2)
        assert sorted(r.name for r in train + query + gallery) == list("abcde")
        for q in query:
            assert any(g.vehicle_id == q.vehicle_id and g.camera_id != q.camera_id for g in gallery)
        assert len([q for q in query if q.vehicle_id == "2"]) <= 1
    with pytest.raises(ValueError, match="num_ids"):
        hold_out_split(records, num_ids=3)


def test_orientation_and_camera_labels_use_the_same_relabelling():
    records = [ImageRecord(Path(n), "1", cam, orientation=o) for n, cam, o in
               [("a", "c1", 0.0), ("b", "c2", 9.99), ("c", "c1", 10.0), ("d", "c3", 359.9), ("e", "c2", 365.0)]]
    assert [class_key(r, "orientation") for r in records] == ["0", "0", "1", "35", "0"]
    assert [class_key(r, "orientation", orientation_bin=90.0) for r in records] == ["0", "0", "0", "3", "0"]
    labels, _ = relabel([records], label="orientation")
    assert labels == [0, 0, 1, 2, 0]
    labels, _ = relabel([records], label="camera")
    assert labels == [0, 1, 0, 2, 1]
    with pytest.raises(UnlabelledSplitError, match="no orientation label"):
        class_key(rec("z", "1"), "orientation")
    with pytest.raises(ValueError, match="label must be one of"):
        class_key(records[0], "colour")


def test_hold_out_without_cameras_keeps_a_match_per_query():
    records = [rec(f"{v}{k}", v, None) for v in "abcd" for k in range(3)]
    train, query, gallery = hold_out_split(records, num_ids=2, seed=1, queries_per_id=2)
    assert len(query) == 4 and len(gallery) == 2 and len(train) == 6
    for q in query:
        assert any(g.vehicle_id == q.vehicle_id for g in gallery)
