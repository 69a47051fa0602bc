"""The built-in synthetic city: determinism, identity design, orientation geometry and the written layout."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from vreid.data.synth import (
    COLOR_NAMES,
    TYPE_NAMES,
    SynthOptions,
    generate_city,
    identity_attributes,
    project_vehicle,
    write_contact_sheet,
)
from vreid.data.synth.scene import render_view
from vreid.data.synth.vehicles import HEADLIGHT_RGB, TAILLIGHT_RGB, _identity_attributes, generic_identity

DECLARATION = '<?xml version="1.0" encoding="gb2312"?>'
TINY = dict(num_ids=4, num_sim_ids=2, num_cameras=2, min_frames=1, max_frames=2)


def read_items(path: Path) -> list[dict[str, str]]:
    """Parse a release-style label XML (expat cannot decode a gb2312 declaration, so check and drop it)."""
    lines = path.read_bytes().decode("ascii").split("\n")
    assert lines[0] == DECLARATION
    root = ET.fromstring("\n".join(lines[1:]))
    assert root.tag == "TrainingImages" and root.get("Version") == "1.0"
    (items,) = list(root)
    rows = [dict(item.attrib) for item in items]
    assert items.tag == "Items" and int(items.get("number")) == len(rows)
    return rows


def read_lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- determinism ---------------------------------------------------------------------------------------------

def test_same_options_give_identical_bytes_and_another_seed_does_not(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_city(a, SynthOptions(**TINY))
    generate_city(b, SynthOptions(**TINY))
    generate_city(c, SynthOptions(**TINY, seed=1))
    fa, fb, fc = all_files(a), all_files(b), all_files(c)
    assert fa == fb
    jpgs = [k for k in fa if k.endswith(".jpg")]
    assert jpgs and all(fa[k] != fc.get(k) for k in jpgs if k in fc)


def test_worker_processes_do_not_change_a_byte(tmp_path):
    opts = SynthOptions(**TINY)
    generate_city(tmp_path / "one", opts)
    generate_city(tmp_path / "two", SynthOptions(**TINY, workers=2))
    assert all_files(tmp_path / "one") == all_files(tmp_path / "two")


def test_an_identity_does_not_depend_on_how_many_identities_exist(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    generate_city(small, SynthOptions(**{**TINY, "num_sim_ids": 2}))
    generate_city(large, SynthOptions(**{**TINY, "num_ids": 8, "num_sim_ids": 5}))
    sim = "AIC21_Track2_ReID_Simulation"
    small_items = {r["imageName"]: r for r in read_items(small / sim / "train_label.xml")}
    large_items = {r["imageName"]: r for r in read_items(large / sim / "train_label.xml")}
    assert small_items and set(small_items) <= set(large_items)
    for name, row in small_items.items():
        assert row == large_items[name]
        assert (small / sim / "sys_image_train" / name).read_bytes() == (
            large / sim / "sys_image_train" / name).read_bytes()
    # no hidden state: asking in another order (with a cold cache) gives the same identities
    forward = [identity_attributes(5, i, 3) for i in range(9)]
    _identity_attributes.cache_clear()
    assert [identity_attributes(5, i, 3) for i in reversed(range(9))][::-1] == forward


# --- identity design -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,group_size", [(0, 3), (7, 3), (1, 5)])
def test_group_members_share_type_and_colour_but_not_details(seed, group_size):
    ids = [identity_attributes(seed, i, group_size) for i in range(group_size * 12)]
    groups = [ids[g * group_size:(g + 1) * group_size] for g in range(12)]
    for members in groups:
        assert len({(m.type_id, m.color_id, m.paint) for m in members}) == 1
        for x, y in combinations(members, 2):
            assert x.signature() != y.signature()
            assert sum(p != q for p, q in zip(x.signature(), y.signature(), strict=True)) >= 2
    assert len({(g[0].type_id, g[0].color_id) for g in groups}) > 1
    assert all(0 <= m.type_id < len(TYPE_NAMES) and 0 <= m.color_id < len(COLOR_NAMES) for m in ids)


def test_vehiclex_tables_keep_the_released_numbering():
    assert COLOR_NAMES == ("yellow", "orange", "green", "gray", "red", "blue", "white", "golden", "brown", "black",
                           "purple", "pink")
    assert TYPE_NAMES == ("sedan", "suv", "van", "hatchback", "mpv", "pickup", "bus", "truck", "estate",
                          "sportscar", "RV")


# --- orientation agrees with geometry and pixels -------------------------------------------------------------

def centroid(face) -> np.ndarray:
    return face.points.mean(axis=0)


@pytest.mark.parametrize("vehicle_type", TYPE_NAMES)
def test_orientation_convention_in_projected_geometry(vehicle_type):
    at = {a: project_vehicle(vehicle_type, a, elevation=15.0) for a in (0, 45, 90, 180, 270)}
    assert at[0]["body.front"].visible and not at[0]["body.rear"].visible
    assert at[180]["body.rear"].visible and not at[180]["body.front"].visible
    # 90: the vehicle points to the image's right (x grows to the right), showing its own right flank
    assert centroid(at[90]["body.front"])[0] > centroid(at[90]["body.rear"])[0]
    assert at[90]["body.right"].visible and not at[90]["body.left"].visible
    assert centroid(at[270]["body.front"])[0] < centroid(at[270]["body.rear"])[0]
    # facing the camera, the vehicle's own left flank is on the image's right
    assert centroid(at[0]["body.left"])[0] > centroid(at[0]["body.right"])[0]
    assert at[45]["body.front"].visible and at[45]["body.right"].visible and not at[45]["body.left"].visible
    # with an elevated camera the roof is seen and lies above (smaller y than) the bumper
    assert at[0]["cabin.top"].visible
    assert centroid(at[0]["cabin.top"])[1] < centroid(at[0]["body.front"])[1]


def test_painter_order_hides_far_wheels_and_tucks_near_wheels_into_their_arches():
    faces = project_vehicle("sedan", 45.0, elevation=20.0)  # the camera sees the front and the right flank

    def first(prefix: str) -> int:
        return min(f.order for k, f in faces.items() if k.startswith(prefix) and f.visible)

    far = [f.order for k, f in faces.items() if re.match(r"wheel\dL\.", k) and f.visible]
    near_caps = [faces[f"wheel{k}R.cap"] for k in range(2)]
    assert far and max(far) < first("sill.")  # the far wheels are behind the (inset) sill
    assert all(c.visible and first("sill.") < c.order < first("body.") for c in near_caps)
    assert first("body.") < first("cabin.")


def light_pixels(img, rgb, tol=24.0) -> int:
    arr = np.asarray(img, dtype=float)
    return int((np.linalg.norm(arr - np.asarray(rgb, float), axis=2) < tol).sum())


@pytest.mark.parametrize("vehicle_type", ["sedan", "suv", "truck", "bus"])
def test_headlights_face_the_camera_at_0_and_tail_lights_at_180(vehicle_type):
    ident = generic_identity(vehicle_type, "blue")
    front = render_view(ident, 0.0, elevation=12.0, long_side=160)
    back = render_view(ident, 180.0, elevation=12.0, long_side=160)
    assert light_pixels(front, HEADLIGHT_RGB) > 15 and light_pixels(back, HEADLIGHT_RGB) == 0
    assert light_pixels(back, TAILLIGHT_RGB) > 15 and light_pixels(front, TAILLIGHT_RGB) == 0


# --- the written layout --------------------------------------------------------------------------------------

def test_files_parse_back_to_the_counts_the_options_imply(tmp_path):
    # two cameras and fixed-length tracklets make every count exact
    opts = SynthOptions(num_ids=6, num_sim_ids=3, num_cameras=2, min_frames=2, max_frames=2, queries_per_id=2)
    counts = generate_city(tmp_path, opts)
    assert counts == {"train": 3 * 2 * 2, "query": 3 * 2, "gallery": 3 * 2 * 2, "synthetic": 3 * 2 * 2}
    root = tmp_path / "AIC21_Track2_ReID"
    splits = {"train": "train", "query": "query", "test": "gallery"}
    labels: dict[str, list[dict[str, str]]] = {}
    for split, key in splits.items():
        names = read_lines(root / f"name_{split}.txt")
        assert names == [f"{i:06d}.jpg" for i in range(1, counts[key] + 1)]
        assert sorted(p.name for p in (root / f"image_{split}").iterdir()) == names
        labels[split] = read_items(root / ("train_label.xml" if split == "train" else f"vreid_{split}_label.xml"))
        assert [r["imageName"] for r in labels[split]] == names
    for split in ("query", "test"):
        public = read_items(root / f"{split}_label.xml")
        assert all(set(r) == {"imageName", "cameraID"} for r in public)
        assert [(r["imageName"], r["cameraID"]) for r in public] == [
            (r["imageName"], r["cameraID"]) for r in labels[split]]
    ids = {s: {r["vehicleID"] for r in rows} for s, rows in labels.items()}
    assert ids["train"] == {"0001", "0002", "0003"}
    assert ids["query"] == ids["test"] == {"0004", "0005", "0006"}
    assert all(re.fullmatch(r"c\d{3}", r["cameraID"]) for rows in labels.values() for r in rows)
    gallery_cams = defaultdict(set)
    for r in labels["test"]:
        gallery_cams[r["vehicleID"]].add(r["cameraID"])
    per_id = defaultdict(list)
    for q in labels["query"]:
        per_id[q["vehicleID"]].append(q["cameraID"])
        assert gallery_cams[q["vehicleID"]] - {q["cameraID"]}  # a true match in another camera
    assert all(len(set(c)) == len(c) == 2 for c in per_id.values())  # distinct cameras per id
    for split, key in (("train", "train"), ("test", "test")):
        tracks = [line.split(" ") for line in read_lines(root / f"{split}_track.txt")]
        flat = [n for t in tracks for n in t]
        assert sorted(flat) == [r["imageName"] for r in labels[key]]  # every image in exactly one track
        by_name = {r["imageName"]: r for r in labels[key]}
        for t in tracks:
            assert len(t) == 2 and all((root / f"image_{split}" / n).is_file() for n in t)
            assert len({(by_name[n]["vehicleID"], by_name[n]["cameraID"]) for n in t}) == 1

    sim = tmp_path / "AIC21_Track2_ReID_Simulation"
    rows = read_items(sim / "train_label.xml")
    assert sorted(r["imageName"] for r in rows) == sorted(p.name for p in (sim / "sys_image_train").iterdir())
    running = defaultdict(list)
    for r in rows:
        m = re.fullmatch(r"(\d{5})_c(\d{3})_(\d+)\.jpg", r["imageName"])
        assert m and m[1] == r["vehicleID"] and f"c{m[2]}" == r["cameraID"]
        running[r["vehicleID"]].append(int(m[3]))
        assert 0 <= int(r["colorID"]) < 12 and 0 <= int(r["typeID"]) < 11
        assert 0.0 <= float(r["orientation"]) < 360.0 and re.fullmatch(r"\d+\.\d", r["orientation"])
        for key in ("lightInt", "lightDir", "camHei", "camDis"):
            float(r[key])
    assert set(running) == {"00001", "00002", "00003"}
    assert all(sorted(v) == list(range(len(v))) for v in running.values())


def test_random_camera_subsets_and_track_lengths_stay_consistent(tmp_path):
    opts = SynthOptions(num_ids=8, num_sim_ids=0, num_cameras=4, min_frames=1, max_frames=3, queries_per_id=3)
    counts = generate_city(tmp_path, opts)
    root = tmp_path / "AIC21_Track2_ReID"
    assert not (tmp_path / "AIC21_Track2_ReID_Simulation").exists() and counts["synthetic"] == 0
    assert counts["query"] == 4 * 3
    train = read_items(root / "train_label.xml")
    tracks = [line.split(" ") for line in read_lines(root / "train_track.txt")]
    assert sum(map(len, tracks)) == len(train) == counts["train"]
    assert all(1 <= len(t) <= 3 for t in tracks)
    cams = defaultdict(set)
    for r in train:
        cams[r["vehicleID"]].add(r["cameraID"])
    assert len(cams) == 4 and all(len(c) >= 2 for c in cams.values())
    gallery = read_items(root / "vreid_test_label.xml")
    gcams = defaultdict(set)
    for r in gallery:
        gcams[r["vehicleID"]].add(r["cameraID"])
    assert all(len(c) >= 3 for c in gcams.values())  # enough cameras for 3 distinct-camera queries
    assert not set(gcams) & set(cams)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    generate_city(tmp_path, SynthOptions(**TINY))
    stale = tmp_path / "AIC21_Track2_ReID" / "image_train" / "999999.jpg"
    stale.write_bytes(b"old")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "AIC21_Track2_ReID"))):
        generate_city(tmp_path, SynthOptions(**TINY))
    generate_city(tmp_path, SynthOptions(**TINY), overwrite=True)
    assert not stale.exists()


@pytest.mark.parametrize("changes,option", [
    ({"num_ids": 1}, "num_ids"),
    ({"num_cameras": 1, "queries_per_id": 1}, "num_cameras"),
    ({"min_frames": 4, "max_frames": 3}, "max_frames"),
    ({"min_frames": 0}, "min_frames"),
    ({"queries_per_id": 5}, "queries_per_id"),
    ({"group_size": 0}, "group_size"),
    ({"workers": 0}, "workers"),
    ({"seed": -1}, "seed"),
    ({"num_sim_ids": -1}, "num_sim_ids"),
    ({"num_ids": 4.0}, "num_ids"),
])
def test_bad_options_name_the_option(changes, option):
    with pytest.raises(ValueError, match=rf"SynthOptions\.{option} must be"):
        SynthOptions(**changes)


def test_contact_sheet_is_a_png_with_a_row_per_identity(tmp_path):
    from PIL import Image

    out = write_contact_sheet(tmp_path / "sheet.png", SynthOptions(**TINY), num_ids=2)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 600
        small = img.height
    out = write_contact_sheet(tmp_path / "sheet4.png", SynthOptions(**TINY), num_ids=4)
    with Image.open(out) as img:
        assert img.height > small  # more real-like rows (the sim part has only 2 identities)
