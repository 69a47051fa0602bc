"""``vreid report``: one HTML page for a whole evaluation folder written by ``vreid test`` (or ``vreid rerank``).

The page is self-contained — inline CSS, rank lists as base64 PNG data URIs, no script, no network — so it can be
mailed or archived beside the numbers it shows. It only reads the folder: metrics come from ``metrics.json`` and
``per_query.csv`` as the evaluation wrote them (never recomputed), the pictures from ``distance.npy`` with the same
ranking and junk rule as ``ranklist.png`` (:func:`vreid.viz.ranklist.rank_row`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vreid.errors import VreidError
from vreid.features import FeatureSet, load_distance
from vreid.fileio import atomic_write_text
from vreid.runfiles import (
    CONFIG_FILE,
    DISTANCE_FILE,
    GALLERY_FILE,
    METRICS_FILE,
    PER_QUERY_FILE,
    QUERY_FILE,
    REPORT_FILE,
)
from vreid.viz.ranklist import (
    MATCH_COLOUR,
    NON_MATCH_COLOUR,
    QUERY_COLOUR,
    UNKNOWN_COLOUR,
    RankListRow,
    rank_row,
    render_ranklist,
)

log = logging.getLogger(__name__)

PER_QUERY_COLUMNS = ("query", "vehicle_id", "camera_id", "ap", "inp", "first_match_rank")
METRIC_ROWS = (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10"), ("mINP", "mINP"),
               ("aic_mAP@100", "AIC mAP@100"))
REQUIRED_METRICS = (*(key for key, _ in METRIC_ROWS), "num_query", "num_skipped", "num_gallery")
HISTOGRAM_BINS = 10
TILE = (96, 96)  # ten 96-px tiles make a 1208-px row: the page's width, no scaling in a normal window


@dataclass(frozen=True)
class QueryResult:
    """One line of ``per_query.csv``; ``first_match_rank`` is 1-based, None (and AP NaN) when the query had no true
    match and the metrics skipped it."""

    index: int
    name: str
    vehicle_id: str
    camera_id: str
    ap: float
    inp: float
    first_match_rank: int | None

    @property
    def evaluated(self) -> bool:
        return self.first_match_rank is not None


@dataclass(frozen=True)
class CameraStats:
    """Metrics of the queries of one camera, averaged as the overall metrics are (skipped queries left out)."""

    camera: str
    num_queries: int
    num_skipped: int
    mAP: float
    rank1: float


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}%"


def _camera_key(camera: str) -> tuple[int, int, str]:
    """Natural order: c2 before c10, unknown ('') last."""
    digits = "".join(ch for ch in camera if ch.isdigit())
    return (camera == "", int(digits) if digits else 0, camera)


def require_files(folder: Path) -> None:
    """Fail early, naming every file of the evaluation that is not there."""
    if not folder.is_dir():
        raise VreidError(f"{folder}: results folder does not exist (give the OUTPUT_DIR of `vreid test`)")
    missing = [name for name in (METRICS_FILE, PER_QUERY_FILE, QUERY_FILE, GALLERY_FILE, DISTANCE_FILE)
               if not (folder / name).is_file()]
    if missing:
        raise VreidError(f"{folder}: missing {', '.join(missing)} (the folder is not a complete `vreid test` "
                         "output)")


def load_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VreidError(f"{path}: not a metrics file written by vreid ({exc})") from None
    if not isinstance(metrics, dict):
        raise VreidError(f"{path}: expected a JSON object")
    absent = [key for key in REQUIRED_METRICS if key not in metrics]
    if absent:
        raise VreidError(f"{path}: missing keys {', '.join(absent)}")
    return metrics


def read_per_query(path: Path) -> list[QueryResult]:
    """The rows of ``per_query.csv`` in query order; bad values are reported with their line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VreidError(f"{path}: cannot read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != PER_QUERY_COLUMNS:
        raise VreidError(f"{path}:1: expected the columns {','.join(PER_QUERY_COLUMNS)}, got "
                         f"{','.join(reader.fieldnames or ())}")
    rows = []
    for index, rec in enumerate(reader):
        try:
            first = rec["first_match_rank"]
            rows.append(QueryResult(index, rec["query"], rec["vehicle_id"], rec["camera_id"], float(rec["ap"]),
                                    float(rec["inp"]), int(first) if first else None))
        except (TypeError, ValueError) as exc:
            raise VreidError(f"{path}:{reader.line_num}: bad value ({exc})") from None
    return rows


def camera_breakdown(results: Sequence[QueryResult]) -> list[CameraStats]:
    """Per query camera: evaluated queries, their mAP and rank-1; queries without a true match only counted."""
    stats = []
    for camera in sorted({r.camera_id for r in results}, key=_camera_key):
        mine = [r for r in results if r.camera_id == camera]
        done = [r for r in mine if r.evaluated]
        m_ap = float(np.mean([r.ap for r in done])) if done else math.nan
        rank1 = float(np.mean([r.first_match_rank == 1 for r in done])) if done else math.nan
        stats.append(CameraStats(camera, len(done), len(mine) - len(done), m_ap, rank1))
    return stats


def ap_histogram(aps: Sequence[float], bins: int = HISTOGRAM_BINS) -> list[int]:
    """Counts of AP in [i/bins, (i+1)/bins), the last bin closed; AP as read from the CSV, so 0.3 is in 30-40%
    (hence the tiny epsilon: 0.3 * 10 is 2.9999... in floating point)."""
    counts = [0] * bins
    for ap in aps:
        counts[min(bins - 1, max(0, math.floor(ap * bins + 1e-9)))] += 1
    return counts


def worst_queries(results: Sequence[QueryResult], paths: Sequence[str], count: int) -> list[QueryResult]:
    """The ``count`` evaluated queries of lowest AP, ties by image path, so the order is reproducible."""
    done = [r for r in results if r.evaluated]
    return sorted(done, key=lambda r: (r.ap, str(paths[r.index])))[:max(0, count)]


def load_results(folder: Path) -> tuple[dict[str, Any], list[QueryResult], FeatureSet, FeatureSet, np.ndarray]:
    """Everything the page needs, checked to describe one and the same evaluation."""
    require_files(folder)
    metrics = load_metrics(folder / METRICS_FILE)
    results = read_per_query(folder / PER_QUERY_FILE)
    query, gallery = FeatureSet.load(folder / QUERY_FILE), FeatureSet.load(folder / GALLERY_FILE)
    dist = load_distance(folder / DISTANCE_FILE)
    if dist.ndim != 2 or dist.shape != (len(query), len(gallery)):
        raise VreidError(f"{folder / DISTANCE_FILE}: shape {dist.shape}, but {QUERY_FILE} has {len(query)} queries "
                         f"and {GALLERY_FILE} {len(gallery)} images: expected ({len(query)}, {len(gallery)})")
    if len(results) != len(query):
        raise VreidError(f"{folder / PER_QUERY_FILE}: {len(results)} rows, but {QUERY_FILE} has {len(query)} queries")
    for r in results:
        if r.name != Path(str(query.paths[r.index])).name:
            raise VreidError(f"{folder / PER_QUERY_FILE}:{r.index + 2}: query {r.name!r}, but query {r.index} of "
                             f"{QUERY_FILE} is {query.paths[r.index]!r}")
    if metrics["num_gallery"] != len(gallery) or metrics["num_query"] + metrics["num_skipped"] != len(query):
        raise VreidError(f"{folder / METRICS_FILE}: {metrics['num_query']} + {metrics['num_skipped']} queries and "
                         f"{metrics['num_gallery']} gallery images, but {QUERY_FILE} has {len(query)} and "
                         f"{GALLERY_FILE} {len(gallery)}")
    return metrics, results, query, gallery, dist


def _ranklist_data_uri(row: RankListRow) -> str:
    """The rank-list picture of ``draw_ranklist``, as a PNG data URI (in memory: the page carries its pictures)."""

    buffer = io.BytesIO()
    render_ranklist(row, TILE).save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


CSS = """
body{font-family:"DejaVu Sans",system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;max-width:1216px;
  margin:20px auto;padding:0 12px;font-size:14px;line-height:1.4}
h1{font-size:22px;margin:0 0 6px}
h2{font-size:17px;margin:22px 0 8px;padding-bottom:3px;border-bottom:1px solid #ccc}
h3{font-size:14px;margin:0 0 2px}
.meta{color:#555;margin:2px 0}
.meta code,.q code{font-size:13px;word-break:break-all}
.panels{display:flex;flex-wrap:wrap;gap:36px;align-items:flex-start}
.panels h2{margin-top:12px}
table{border-collapse:collapse}
th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #e4e4e4;white-space:nowrap}
th{background:#f3f3f3}
th:first-child,td:first-child{text-align:left}
td.bar{width:220px;padding-left:4px}
td.bar div{height:12px;background:#4a74c9}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-1px}
.q{margin:14px 0 0;padding-top:10px;border-top:1px solid #eee}
.q img{display:block;max-width:100%;height:auto;margin-top:4px}
details{margin-top:22px}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
"""


class Markup(str):
    """A table cell that is already HTML (a histogram bar), so :func:`_table` does not escape it."""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; every plain ``str`` cell is escaped here, :class:`Markup` cells are put in as they are."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(c if isinstance(c, Markup) else f"<td>{html.escape(c)}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _header(folder: Path, metrics: dict[str, Any], query: FeatureSet, gallery: FeatureSet) -> str:
    dataset = str(metrics.get("dataset", "?"))
    split = str(metrics.get("test_split") or "standard")
    skipped = int(metrics["num_skipped"])
    queries = f"{len(query)} queries" + (f" ({skipped} without a true match, not scored)" if skipped else "")
    lines = [f"dataset <b>{html.escape(dataset)}</b>, test split <b>{html.escape(split)}</b>",
             f"weights <code>{html.escape(str(metrics.get('weights', '?')))}</code>"
             + (", k-reciprocal re-ranking" if metrics.get("rerank") else ", no re-ranking"),
             f"{html.escape(queries)}, {len(gallery)} gallery images; results <code>{html.escape(str(folder))}</code>"]
    return (f"<h1>Evaluation report: {html.escape(dataset)}</h1>"
            + "".join(f'<p class="meta">{line}</p>' for line in lines))


def _metrics_panel(metrics: dict[str, Any]) -> str:
    rows = [(label, _pct(float(metrics[key]))) for key, label in METRIC_ROWS]
    return f"<div><h2>Metrics</h2>{_table(('metric', 'value'), rows, 'metrics')}</div>"


def _camera_panel(results: Sequence[QueryResult]) -> str:
    rows = [(s.camera or "(unknown)", str(s.num_queries), _pct(s.mAP), _pct(s.rank1), str(s.num_skipped))
            for s in camera_breakdown(results)]
    table = _table(("query camera", "queries", "mAP", "rank-1", "no true match"), rows, "cameras")
    return f"<div><h2>Per camera</h2>{table}</div>"


def _histogram_panel(results: Sequence[QueryResult]) -> str:
    counts = ap_histogram([r.ap for r in results if r.evaluated])
    top = max(counts) or 1
    rows = [(f"{100 * i // HISTOGRAM_BINS}–{100 * (i + 1) // HISTOGRAM_BINS}%",
             Markup(f'<td class="bar"><div style="width:{100 * n / top:.1f}%"></div></td>'), str(n))
            for i, n in enumerate(counts)]
    return f"<div><h2>AP histogram</h2>{_table(('AP', '', 'queries'), rows, 'hist')}</div>"


def _worst_section(results: Sequence[QueryResult], query: FeatureSet, gallery: FeatureSet, dist: np.ndarray,
                   worst: int, top_k: int) -> str:

    chosen = worst_queries(results, query.paths, worst)
    scored = sum(r.evaluated for r in results)
    swatches = ((QUERY_COLOUR, "query"), (MATCH_COLOUR, "true match"), (NON_MATCH_COLOUR, "false match"),
                (UNKNOWN_COLOUR, "same id, same camera (ignored by the metrics)"))
    legend = "".join(f'<span style="background:rgb{c}"></span>{html.escape(text)}' for c, text in swatches)
    parts = [f"<h2>Worst {len(chosen)} of {scored} queries (lowest AP first)</h2>",
             f'<p class="meta legend">Top {top_k} of the ranking in {DISTANCE_FILE}, rank and distance d under each '
             f"image: {legend}</p>"]
    for n, r in enumerate(chosen, 1):
        path = str(query.paths[r.index])
        title = (f"{n}. AP {_pct(r.ap)} · INP {_pct(r.inp)} · first true match at rank {r.first_match_rank} "
                 "(same-camera matches removed)")
        meta = f"query <code>{html.escape(path)}</code> · id {html.escape(r.vehicle_id)} · camera " \
               f"{html.escape(r.camera_id or '?')}"
        alt = html.escape(f"rank list of query {path}", quote=True)
        uri = _ranklist_data_uri(rank_row(query, gallery, dist, r.index, top_k))
        parts.append(f'<div class="q"><h3>{html.escape(title)}</h3><p class="meta">{meta}</p>'
                     f'<img alt="{alt}" src="{uri}"></div>')
    return "".join(parts)


def write_report(
    results_dir: str | Path, out_html: str | Path | None = None, worst: int = 20, top_k: int = 10
) -> Path:
    """Write the HTML page of the evaluation in ``results_dir`` (default ``results_dir/report.html``): header,
    metrics, per-camera breakdown, AP histogram and the rank lists of the ``worst`` lowest-AP queries (``top_k``
    gallery images each). Returns the page's path; raises :class:`VreidError` if files are missing or disagree."""
    if worst < 0:
        raise ValueError(f"worst must be >= 0, got {worst}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    folder = Path(results_dir)
    metrics, results, query, gallery, dist = load_results(folder)
    config = folder / CONFIG_FILE
    config_html = (f"<details><summary>{CONFIG_FILE}</summary><pre>"
                   f"{html.escape(config.read_text(encoding='utf-8', errors='replace'))}</pre></details>"
                   if config.is_file() else "")
    title = html.escape(f"vreid report: {metrics.get('dataset', '?')} ({folder.name})")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body>\n"
            + _header(folder, metrics, query, gallery) + "\n"
            + '<div class="panels">' + _metrics_panel(metrics) + _camera_panel(results) + _histogram_panel(results)
            + "</div>\n"
            + _worst_section(results, query, gallery, dist, worst, top_k) + "\n"
            + config_html + "\n</body></html>\n")
    out = Path(out_html) if out_html is not None else folder / REPORT_FILE
    return atomic_write_text(out, page)
