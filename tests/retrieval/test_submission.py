"""track2.txt: writing from rankings, reading back, and every validation check on crafted bad files."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vreid.retrieval.submission import check_track2, write_track2

NUM_GALLERY = 150
NAMES = [f"{i + 1:06d}.jpg" for i in range(NUM_GALLERY)]


@pytest.fixture
def ranking():
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(NUM_GALLERY) for _ in range(4)])


def write_raw(tmp_path, lines, end="\n"):
    path = tmp_path / "track2.txt"
    path.write_text("\n".join(lines) + end)
    return path


def good_lines(n=4, top_k=100):
    return [" ".join(str((q * 7 + j) % NUM_GALLERY + 1) for j in range(top_k)) for q in range(n)]


def test_round_trip(tmp_path, ranking):
    path = write_track2(ranking, NAMES, tmp_path / "sub" / "track2.txt")
    assert path == tmp_path / "sub" / "track2.txt"
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 4
    for line, row in zip(text.splitlines(), ranking, strict=True):
        assert line == " ".join(str(i + 1) for i in row[:100])  # 000123.jpg at index 122 -> 123
    assert check_track2(path, num_query=4, num_gallery=NUM_GALLERY) == []
    assert [p.name for p in path.parent.iterdir()] == ["track2.txt"]  # no temporary left behind


def test_ids_come_from_names_not_positions(tmp_path, caplog):
    names = [f"image_test/{n}" for n in reversed(NAMES[:5])]  # 000005.jpg ... 000001.jpg, with a folder
    with caplog.at_level(logging.WARNING, logger="vreid.retrieval.submission"):
        path = write_track2(np.array([[0, 4, 2]]), names, tmp_path / "t.txt", top_k=3)
    assert path.read_text() == "5 1 3\n"
    assert "not 000001.jpg" in caplog.text
    path = write_track2(np.array([[3, 0, 1, 2]], dtype=np.int32), NAMES[:4], tmp_path / "t.txt", top_k=2)
    assert path.read_text() == "4 1\n"  # columns beyond top_k are dropped


@pytest.mark.parametrize(
    "ranked,names,message",
    [
        (np.arange(99)[None], NAMES, "99 columns, fewer than top_k=100"),
        (np.concatenate([np.arange(99), [5]])[None], NAMES, "query 0: gallery index 5 appears more than once"),
        (np.stack([np.arange(100), np.r_[np.arange(99), -1]]), NAMES, r"query 1: rank 100 is gallery index -1"),
        (np.arange(100)[None] + 51, NAMES, "rank 100 is gallery index 150, outside 0..149"),
        (np.arange(100, dtype=float)[None], NAMES, "integer gallery indices"),
        (np.arange(100), NAMES, "shape"),
        (np.arange(100)[None], NAMES[:99] + ["abc.jpg"], "'abc.jpg' has no numeric stem"),
        (np.arange(100)[None], ["000000.jpg"] + NAMES[1:100], "AIC ids start at 1"),
        (np.arange(100)[None], NAMES[:99] + ["0000001.jpg"], "all give id 1"),
    ],
)
def test_write_refuses(tmp_path, ranked, names, message):
    with pytest.raises(ValueError, match=message):
        write_track2(ranked, names, tmp_path / "track2.txt")
    assert not (tmp_path / "track2.txt").exists()


def test_check_valid_and_empty(tmp_path):
    assert check_track2(write_raw(tmp_path, good_lines()), 4, NUM_GALLERY) == []
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert check_track2(empty, 0, NUM_GALLERY) == []
    assert check_track2(empty, 2, NUM_GALLERY) == [f"{empty}: empty file, expected 2 lines"]


def test_check_short_line(tmp_path):
    lines = good_lines()
    lines[1] = lines[1].rsplit(" ", 1)[0]
    path = write_raw(tmp_path, lines)
    assert check_track2(path, 4, NUM_GALLERY) == [f"{path}:2: 99 entries, expected 100"]


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda ls: (ls[:3], "\n"), ": 3 lines, expected 4 (one per query)"),
        (lambda ls: (ls + [ls[0]], "\n"), ": 5 lines, expected 4 (one per query)"),
        (lambda ls: (ls, ""), ":4: no newline at end of file"),
        (lambda ls: (ls[:2] + [" ".join(f"{int(t):06d}.jpg" for t in ls[2].split())] + ls[3:], "\n"),
         ":3: 100 entries are not integers (first: '000015.jpg')"),
        (lambda ls: (ls[:3] + ["0 " + ls[3].split(" ", 1)[1]], "\n"), ":4: 1 entries outside 1..150 (first: 0)"),
        (lambda ls: (["151 " + ls[0].split(" ", 1)[1]] + ls[1:], "\n"), ":1: 1 entries outside 1..150 (first: 151)"),
        (lambda ls: ([ls[0].rsplit(" ", 1)[0] + " 1"] + ls[1:], "\n"), ":1: repeated entries: 1"),
        (lambda ls: ([ls[0].replace(" ", "\t", 1)] + ls[1:], "\n"), ":1: entries must be separated by single spaces"),
        (lambda ls: ([ls[0] + " "] + ls[1:], "\n"), ":1: entries must be separated by single spaces"),
        (lambda ls: (ls, "\r\n"), ":4: entries must be separated by single spaces"),
    ],
)
def test_check_finds_each_problem(tmp_path, mutate, expected):
    lines, end = mutate(good_lines())
    path = write_raw(tmp_path, lines, end)
    problems = check_track2(path, 4, NUM_GALLERY)
    assert len(problems) == 1, problems  # one problem, and no other line blamed
    assert problems[0].startswith(str(path) + expected), problems


def test_check_blank_line_and_unreadable(tmp_path):
    lines = good_lines()
    path = write_raw(tmp_path, lines[:2] + [""] + lines[2:3])
    assert check_track2(path, 4, NUM_GALLERY) == [f"{path}:3: 0 entries, expected 100"]
    path.write_bytes(b"\xff\xfe1 2 3\n")
    assert "not UTF-8" in check_track2(path, 1, NUM_GALLERY)[0]
    assert "cannot read" in check_track2(tmp_path / "missing.txt", 1, NUM_GALLERY)[0]


def test_check_with_other_top_k(tmp_path):
    path = write_track2(np.array([[2, 0, 1], [0, 1, 2]]), NAMES[:3], tmp_path / "t.txt", top_k=3)
    assert check_track2(path, 2, 3, top_k=3) == []
    assert check_track2(path, 2, 2, top_k=3) == [f"{path}:1: 1 entries outside 1..2 (first: 3)",
                                                 f"{path}:2: 1 entries outside 1..2 (first: 3)"]
