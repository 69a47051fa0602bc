"""``vreid report``: the HTML page of a hand-made evaluation folder whose APs are known by hand."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_jpeg
from vreid.cli import EXIT_BAD_INPUT, main
from vreid.config import load_config
from vreid.engine.postprocess import metrics_from_distance, write_per_query
from vreid.errors import VreidError
from vreid.features import FeatureSet
from vreid.viz import ranklist_layout, write_report
from vreid.viz import report as rp

# gallery: (vehicle id, camera, file name); the "<x" id and the "<&>" names check escaping
GALLERY = [("A", "c1", "g0.jpg"), ("A", "c2", "g1.jpg"), ("B", "c1", "g2.jpg"), ("B", "c3", "g3.jpg"),
           ("C", "c2", "g4.jpg"), ("<x", "c3", "g5.jpg")]
# query: (id, camera, file name, gallery indices best first); same-id same-camera gallery items are junk
QUERY = [
    ("A", "c1", "q0.jpg", [2, 0, 3, 1, 4, 5]),  # g0 junk; true g1 at rank 3: AP 1/3, INP 1/3
    ("B", "c2", "q1.jpg", [2, 4, 3, 0, 1, 5]),  # true at ranks 1, 3: AP (1 + 2/3) / 2, INP 2/3
    ("C", "c1", "q2.jpg", [4, 0, 1, 2, 3, 5]),  # true at rank 1: AP 1, INP 1
    ("D", "c1", "q3.jpg", [0, 1, 2, 3, 4, 5]),  # id D is not in the gallery: skipped
    ("<x", "c2", "q<4>&.jpg", [0, 1, 2, 3, 5, 4]),  # true at rank 5: AP 1/5, INP 1/5
    ("A", "c2", "a_q5.jpg", [2, 1, 3, 0, 4, 5]),  # g1 junk; true g0 at rank 3: AP 1/3 (ties q0; sorts first by path)
]
AP = {0: 1 / 3, 1: 5 / 6, 2: 1.0, 4: 1 / 5, 5: 1 / 3}
FIRST = {0: 3, 1: 1, 2: 1, 4: 5, 5: 3}
WORST_ORDER = [4, 5, 0, 1, 2]
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200)]


def make_results(root: Path) -> Path:
    """A `vreid test` output folder: images, FeatureSets, a chosen distance and the metrics it gives."""
    def feature_set(items, folder):
        paths = [str(write_jpeg(root / folder / name, COLOURS[i % 6], (24, 16))) for i, (_, _, name, *_) in
                 enumerate(items)]
        col = np.array
        return FeatureSet(np.zeros((len(items), 4), np.float32), col([it[0] for it in items]),
                          col([it[1] for it in items]), col([""] * len(items)), col(paths))

    query, gallery = feature_set(QUERY, "query"), feature_set(GALLERY, "gallery")
    dist = np.zeros((len(QUERY), len(GALLERY)), np.float32)
    for qi, (*_, order) in enumerate(QUERY):
        dist[qi, order] = np.arange(len(GALLERY)) / 10
    out = root / "results"
    out.mkdir()
    query.save(out / "query.npz")
    gallery.save(out / "gallery.npz")
    np.save(out / "distance.npy", dist)
    metrics = metrics_from_distance(load_config(None, []), dist, query, gallery)
    write_per_query(out / "per_query.csv", query, metrics.pop("_per_query"))
    metrics.update(dataset="aic21", test_split="local", weights="w<1>.pth", rerank=False)
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "config.yaml").write_text("OUTPUT_DIR: <out>\n")
    return out


@pytest.fixture
def results(tmp_path) -> Path:
    return make_results(tmp_path)


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def test_fixture_aps_are_the_hand_computed_ones(results):
    rows = rp.read_per_query(results / "per_query.csv")
    assert [r.index for r in rows if not r.evaluated] == [3]
    for r in rows:
        if r.evaluated:
            assert r.ap == pytest.approx(AP[r.index], abs=1e-6) and r.first_match_rank == FIRST[r.index]


def test_page_holds_metrics_cameras_histogram_and_worst_queries(results):
    page_path = write_report(results, worst=4, top_k=4)
    assert page_path == results / "report.html"
    page = page_path.read_text(encoding="utf-8")
    metrics = json.loads((results / "metrics.json").read_text())

    assert metrics["mAP"] == pytest.approx(sum(AP.values()) / len(AP))
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP", "aic_mAP@100"):
        assert pct(metrics[key]) in page, key
    assert "6 queries (1 without a true match, not scored), 6 gallery images" in page

    # per camera, from the formula: mean AP and share of first matches at rank 1 of the scored queries
    for camera in ("c1", "c2"):
        scored = [qi for qi, q in enumerate(QUERY) if q[1] == camera and qi in AP]
        skipped = sum(1 for qi, q in enumerate(QUERY) if q[1] == camera and qi not in AP)
        m_ap = sum(AP[qi] for qi in scored) / len(scored)
        rank1 = sum(FIRST[qi] == 1 for qi in scored) / len(scored)
        row = f"<tr><td>{camera}</td><td>{len(scored)}</td><td>{pct(m_ap)}</td><td>{pct(rank1)}</td><td>{skipped}</td>"
        assert row in page
    assert "<td>c3</td>" not in page  # no query from camera c3

    assert rp.ap_histogram(list(AP.values())) == [0, 0, 1, 2, 0, 0, 0, 0, 1, 1]
    assert page.count('<td class="bar">') == 10

    # the worst four, lowest AP first, ties by path (a_q5 before q0)
    shown = re.findall(r"query <code>([^<]*)</code>", page)
    expected = [html.escape(str(results.parent / "query" / QUERY[qi][2])) for qi in WORST_ORDER[:4]]
    assert shown == expected
    titles = re.findall(r"<h3>\d+\. AP ([\d.]+%)", page)
    assert titles == [pct(AP[qi]) for qi in WORST_ORDER[:4]]

    pictures = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pictures) == 4
    for data in pictures:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "PNG" and img.size == ranklist_layout(4, rp.TILE).size

    # text from the files is escaped: id, path, weights, config
    assert "id &lt;x" in page and "q&lt;4&gt;&amp;.jpg" in page and "w&lt;1&gt;.pth" in page
    assert "&lt;out&gt;" in page
    assert "<x" not in page and "q<4>" not in page and "<out>" not in page
    assert "<script" not in page and "http" not in page  # self-contained: no script, no network


@pytest.mark.parametrize("name", ["metrics.json", "per_query.csv", "query.npz", "gallery.npz", "distance.npy"])
def test_missing_file_is_named(results, name):
    (results / name).unlink()
    with pytest.raises(VreidError, match=f"missing {re.escape(name)}"):
        write_report(results)
    assert not (results / "report.html").exists()


def test_disagreeing_shapes_are_refused(results):
    np.save(results / "distance.npy", np.zeros((5, 6), np.float32))
    with pytest.raises(VreidError, match=r"distance\.npy: shape \(5, 6\).*expected \(6, 6\)"):
        write_report(results)
    lines = (results / "per_query.csv").read_text().splitlines()
    np.save(results / "distance.npy", np.zeros((6, 6), np.float32))
    (results / "per_query.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(VreidError, match=r"per_query\.csv: 5 rows, but query\.npz has 6 queries"):
        write_report(results)


def test_cli_writes_the_page_and_fails_clearly_on_a_missing_folder(results, tmp_path, caplog):
    out = tmp_path / "page" / "r.html"
    with caplog.at_level(logging.INFO, logger="vreid"):
        assert main(["report", "--results", str(results), "--out", str(out), "--worst", "2", "--top-k", "3"]) == 0
    assert out.is_file() and out.read_text(encoding="utf-8").count("data:image/png;base64,") == 2
    assert f"evaluation report: {out}" in caplog.text
    missing = tmp_path / "nope"
    assert main(["report", "--results", str(missing)]) == EXIT_BAD_INPUT
    assert f"{missing}: results folder does not exist" in caplog.text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_page_renders_in_headless_chromium(results, tmp_path):
    page = write_report(results)
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,1600",
                        page.as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        assert img.size == (1280, 1600)
        lo, _ = img.convert("L").getextrema()
        assert lo < 128  # text and pictures drawn, not a blank page
