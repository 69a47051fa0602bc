"""The layering of the package (.importlinter) and what it buys: commands on saved outputs start without torch."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Runs a command in a fresh interpreter and reports, after it, whether torch was ever imported.
PROBE = ("import sys; from vreid.cli import main; rc = main(sys.argv[1:]); "
         "sys.stderr.write('\\nTORCH=%s\\n' % ('torch' in sys.modules)); sys.exit(rc)")


def test_import_contracts_hold():
    """Every import counts (inside functions too): layers only import downward, no cycle between subpackages."""
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if linter is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([linter, "--config", str(REPO / ".importlinter")], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def _features(path: Path, ids: list[str], cams: list[str], rng: np.random.Generator) -> None:
    """A FeatureSet file written with numpy alone, in the format `vreid extract` writes."""
    n = len(ids)
    buffer = io.BytesIO()
    np.savez(buffer, features=rng.standard_normal((n, 16)).astype(np.float32), vehicle_ids=np.array(ids),
             camera_ids=np.array(cams), track_ids=np.array([""] * n),
             paths=np.array([f"img/{i + 1:06d}.jpg" for i in range(n)]))
    path.write_bytes(buffer.getvalue())


def _run(*args: str) -> tuple[int, bool, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    torch_imported = "TORCH=True" in proc.stderr
    return proc.returncode, torch_imported, proc.stdout + proc.stderr


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(),
                    reason="with an NVIDIA driver, retrieval's 'auto' device asks torch for CUDA on purpose")
def test_commands_on_saved_features_never_import_torch(tmp_path):
    rng = np.random.default_rng(0)
    feats = tmp_path / "features"
    feats.mkdir()
    _features(feats / "query.npz", [str(i % 6) for i in range(12)], ["c1"] * 12, rng)
    _features(feats / "gallery.npz", [str(i % 6) for i in range(60)], ["c2"] * 60, rng)
    rc, torch_imported, out = _run("rerank", "--features", str(feats), "--out", str(tmp_path / "rr"),
                                   "TEST.RERANK.K1", "5", "TEST.RERANK.K2", "2", "TEST.RANKLIST_QUERIES", "0")
    assert rc == 0 and not torch_imported, out
    for name in ("query.npz", "gallery.npz"):  # a test folder: results beside the features
        shutil.copy(feats / name, tmp_path / "rr" / name)
    commands = {
        "report": ["report", "--results", str(tmp_path / "rr")],
        "ensemble": ["ensemble", "--distances", str(tmp_path / "rr" / "distance.npy"),
                     str(tmp_path / "rr" / "distance.npy"), "--out", str(tmp_path / "ens.npy")],
        "submit": ["submit", "--distance", str(tmp_path / "rr" / "distance.npy"), "--features", str(feats),
                   "--out", str(tmp_path / "track2.txt"), "--top-k", "10"],
        "index build": ["index", "build", "--features", str(feats / "gallery.npz"), str(tmp_path / "gallery")],
        "search": ["search", "--index", str(tmp_path / "gallery"), "--features", str(feats / "query.npz"),
                   "--top-k", "3", "--json"],
        "config show": ["config", "show"],
    }
    for name, argv in commands.items():
        rc, torch_imported, out = _run(*argv)
        assert rc == 0, f"{name}: {out}"
        assert not torch_imported, f"vreid {name} imported torch"
    assert (tmp_path / "rr" / "report.html").is_file() and (tmp_path / "track2.txt").is_file()
    assert len((tmp_path / "track2.txt").read_text().splitlines()) == 12


def test_search_with_saved_query_features_matches_brute_force(tmp_path):
    """`vreid search --features` ranks the gallery by cosine similarity, as a brute-force product does."""
    import json

    rng = np.random.default_rng(1)
    _features(tmp_path / "gallery.npz", [str(i) for i in range(40)], ["c2"] * 40, rng)
    _features(tmp_path / "query.npz", ["0", "1", "2"], ["c1"] * 3, rng)
    assert _run("index", "build", "--features", str(tmp_path / "gallery.npz"), str(tmp_path / "g"))[0] == 0
    rc, _, out = _run("search", "--index", str(tmp_path / "g"), "--features", str(tmp_path / "query.npz"),
                      "--top-k", "5", "--json")
    assert rc == 0, out
    results = json.loads(out[: out.rindex("]") + 1])
    with np.load(tmp_path / "gallery.npz") as g, np.load(tmp_path / "query.npz") as q:
        gf = g["features"] / np.linalg.norm(g["features"], axis=1, keepdims=True)
        qf = q["features"] / np.linalg.norm(q["features"], axis=1, keepdims=True)
        expected = np.argsort(-(qf @ gf.T), axis=1, kind="stable")[:, :5]
        gallery_paths = g["paths"]
    for row, want in zip(results, expected, strict=True):
        assert [hit["path"] for hit in row["results"]] == [str(gallery_paths[i]) for i in want]
