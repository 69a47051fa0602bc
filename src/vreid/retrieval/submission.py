"""AI City 2021 Track 2 submission file ``track2.txt``: writing and validating it.

Format (docs/method.md, Submission): one line per query in ``name_query.txt`` order; each line holds the top-100 gallery
matches, best first, as space-separated integers — the numeric stem of the test image name (``000123.jpg`` -> 123),
which is its 1-based index in ``name_test.txt`` under the official layout; every line ends with a newline. The
official code wrote file names (``000123.jpg``) copied from ``test_track.txt`` instead (docs/method.md, Submission); we
write integers and refuse anything that could silently produce a malformed file (too short a ranking, repeated
entries, names without a number). Because a submission counts against a limited budget, :func:`check_track2`
re-reads a file and lists every problem found, so a bad file is caught before upload.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np

from vreid.fileio import atomic_write_text

log = logging.getLogger(__name__)

_INTEGER = re.compile(r"[0-9]+")
_SPACED = re.compile(r"\S+(?: \S+)*")  # tokens separated by single spaces; no tabs, \r or edge spaces

AIC_TOP_K = 100  # gallery images per query in an AI City Track 2 submission, and the depth its mAP is scored at


def _numeric_stem(name: str) -> int:
    stem = PurePath(str(name).replace("\\", "/")).stem
    if not _INTEGER.fullmatch(stem):
        raise ValueError(f"gallery image name {name!r} has no numeric stem (expected e.g. '000123.jpg')")
    value = int(stem)
    if value < 1:
        raise ValueError(f"gallery image name {name!r} gives id {value}; AIC ids start at 1")
    return value


def gallery_image_ids(gallery_names: Sequence[str]) -> np.ndarray:
    """int64 AIC id of each gallery image: the number in its file name. Names must map to distinct ids."""
    ids = np.fromiter((_numeric_stem(n) for n in gallery_names), dtype=np.int64, count=len(gallery_names))
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = int(unique[counts > 1][0])
        names = [str(gallery_names[i]) for i in np.flatnonzero(ids == dup)[:3]]
        raise ValueError(f"gallery names {names} all give id {dup}; ids must be distinct")
    mismatched = np.flatnonzero(ids != np.arange(1, len(ids) + 1))
    if len(mismatched):
        i = int(mismatched[0])
        log.warning("gallery name %r at index %d (1-based %d) has id %d: names are not 000001.jpg... in order, so "
                    "ids differ from 1-based positions; writing the ids in the names", gallery_names[i], i, i + 1,
                    ids[i])
    return ids


def write_track2(
    ranked_gallery_indices: np.ndarray,
    gallery_names: Sequence[str],
    out_path: str | Path,
    top_k: int = AIC_TOP_K,
) -> Path:
    """Write ``track2.txt`` from (q, >= top_k) 0-based gallery indices, best first, one row per query.

    Each index is written as the id in the corresponding name of ``gallery_names`` (``name_test.txt`` order). Raises
    ValueError, naming the query row or gallery name, for a ranking with fewer than ``top_k`` columns, an index
    outside the gallery, a repeated index within a row's first ``top_k``, or a name without a positive numeric stem
    (or two names with the same number). The file is written atomically.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    ranked = np.asarray(ranked_gallery_indices)
    if ranked.ndim != 2:
        raise ValueError(f"rankings must have shape (num_query, >= {top_k}), got {ranked.shape}")
    if ranked.dtype.kind not in "iu":
        raise ValueError(f"rankings must be integer gallery indices, got dtype {ranked.dtype}")
    if ranked.shape[1] < top_k:
        raise ValueError(f"rankings have {ranked.shape[1]} columns, fewer than top_k={top_k}")
    top = ranked[:, :top_k].astype(np.int64)
    num_gallery = len(gallery_names)
    bad = np.argwhere((top < 0) | (top >= num_gallery))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise ValueError(f"query {row}: rank {col + 1} is gallery index {top[row, col]}, outside 0..{num_gallery - 1}")
    sorted_rows = np.sort(top, axis=1)
    dup_rows = np.flatnonzero((sorted_rows[:, 1:] == sorted_rows[:, :-1]).any(axis=1))
    if len(dup_rows):
        row = int(dup_rows[0])
        values, counts = np.unique(top[row], return_counts=True)
        raise ValueError(f"query {row}: gallery index {int(values[counts > 1][0])} appears more than once in the top "
                         f"{top_k} ({len(dup_rows)} rows have repeats)")
    ids = gallery_image_ids(gallery_names)[top]
    text = "".join(" ".join(map(str, row)) + "\n" for row in ids.tolist())
    path = atomic_write_text(out_path, text)
    log.info("wrote %s: %d queries x top %d", path, len(top), top_k)
    return path


def check_track2(path: str | Path, num_query: int, num_gallery: int, top_k: int = AIC_TOP_K) -> list[str]:
    """Problems with a ``track2.txt`` file, each as ``"<path>:<line>: <problem>"``; an empty list means valid.

    Checks: the file is readable UTF-8; exactly ``num_query`` lines, the last newline-terminated; each line holds
    exactly ``top_k`` entries separated by single spaces; every entry is an integer (no ``.jpg``) in
    1..``num_gallery``; no entry repeats within a line.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror or exc}"]
    except UnicodeDecodeError as exc:
        return [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    problems: list[str] = []
    if not text:
        return [f"{path}: empty file, expected {num_query} lines"] if num_query else []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    else:
        problems.append(f"{path}:{len(lines)}: no newline at end of file")
    if len(lines) != num_query:
        problems.append(f"{path}: {len(lines)} lines, expected {num_query} (one per query)")
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}:"
        if line and not _SPACED.fullmatch(line):
            problems.append(f"{where} entries must be separated by single spaces, without other whitespace")
        tokens = line.split()
        if len(tokens) != top_k:
            problems.append(f"{where} {len(tokens)} entries, expected {top_k}")
        not_int = [t for t in tokens if not _INTEGER.fullmatch(t)]
        if not_int:
            problems.append(f"{where} {len(not_int)} entries are not integers (first: {not_int[0]!r})")
        values = [int(t) for t in tokens if _INTEGER.fullmatch(t)]
        out_of_range = [v for v in values if not 1 <= v <= num_gallery]
        if out_of_range:
            problems.append(f"{where} {len(out_of_range)} entries outside 1..{num_gallery} (first: {out_of_range[0]})")
        unique, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
        repeated = unique[counts > 1].tolist()
        if repeated:
            problems.append(f"{where} repeated entries: {' '.join(map(str, repeated[:10]))}")
    return problems
