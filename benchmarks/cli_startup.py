"""Start-up time of the `vreid` commands that only read saved outputs, and whether each imports torch.

`vreid rerank`, `ensemble`, `submit`, `report` and `search --features --json` work on saved features and
distances; none needs the model, so none should pay for importing torch (about 1-2 s on a laptop CPU).
This script writes a small labelled query/gallery pair, a distance file, a test folder and a gallery,
then runs each command N times in a fresh interpreter and prints the median wall time and whether
``torch`` was in ``sys.modules`` when the command returned.

    python benchmarks/cli_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROBE = ("import sys; from vreid.cli import main; rc = main(sys.argv[1:]); "
         "sys.stderr.write('\\nTORCH_IMPORTED=%s\\n' % ('torch' in sys.modules)); sys.exit(rc)")


def feature_file(path: Path, n: int, ids: list[str], cams: list[str], rng: np.random.Generator) -> None:
    """A FeatureSet .npz written with numpy alone (the format `vreid extract` writes)."""
    buffer = io.BytesIO()
    np.savez(buffer, features=rng.standard_normal((n, 64)).astype(np.float32), vehicle_ids=np.array(ids),
             camera_ids=np.array(cams), track_ids=np.array([""] * n),
             paths=np.array([f"img/{i + 1:06d}.jpg" for i in range(n)]))
    path.write_bytes(buffer.getvalue())


def fixtures(work: Path) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    feats = work / "features"
    feats.mkdir()
    feature_file(feats / "query.npz", 50, [str(i % 25) for i in range(50)], ["c1"] * 50, rng)
    feature_file(feats / "gallery.npz", 500, [str(i % 25) for i in range(500)], ["c2"] * 500, rng)
    np.save(work / "d1.npy", rng.random((50, 500)).astype(np.float32))
    np.save(work / "d2.npy", rng.random((50, 500)).astype(np.float32))
    base = [sys.executable, "-c", PROBE]
    subprocess.run([*base, "rerank", "--features", str(feats), "--out", str(work / "test")], check=True,
                   capture_output=True)
    for name in ("query.npz", "gallery.npz"):  # a `vreid test` folder holds the features beside its results
        (work / "test" / name).write_bytes((feats / name).read_bytes())
    subprocess.run([*base, "index", "build", "--features", str(feats / "gallery.npz"), str(work / "gallery")],
                   check=True, capture_output=True)
    return {
        "rerank": ["rerank", "--features", str(feats), "--out", str(work / "rr")],
        "ensemble": ["ensemble", "--distances", str(work / "d1.npy"), str(work / "d2.npy"), "--out",
                     str(work / "ens.npy")],
        "submit": ["submit", "--distance", str(work / "d1.npy"), "--features", str(feats), "--out",
                   str(work / "track2.txt")],
        "report": ["report", "--results", str(work / "test"), "--out", str(work / "report.html")],
        "search --json": ["search", "--index", str(work / "gallery"), "--features", str(feats / "query.npz"),
                          "--json"],
        "config show": ["config", "show"],
    }


def time_command(args: list[str], repeat: int) -> tuple[float, bool | None, str]:
    times, torch_imported, error = [], None, ""
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode:
            errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "error:" in line]
            error = errors[-1] if errors else f"exit {proc.returncode}"
        for line in proc.stderr.splitlines():
            if line.startswith("TORCH_IMPORTED="):
                torch_imported = line.endswith("True")
    return statistics.median(times), torch_imported, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commands = fixtures(Path(tmp))
        rows = {name: time_command(argv, args.repeat) for name, argv in commands.items()}
    if args.json:
        print(json.dumps({k: {"median_s": v[0], "torch": v[1], "error": v[2]} for k, v in rows.items()}))
        return
    print("| command | median start-to-exit (s) | imports torch |")
    print("|---|---|---|")
    for name, (median, torch_imported, error) in rows.items():
        print(f"| `vreid {name}` | {median:.2f} | {'yes' if torch_imported else 'no'}"
              f"{' (failed: ' + error + ')' if error else ''} |")


if __name__ == "__main__":
    main()
