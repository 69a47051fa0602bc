"""The paper's Table 4 in miniature: the demo pipeline on the synthetic city for several seeds.

Runs ``vreid pipeline run`` on configs/demo/pipeline.yml once per seed (``SEED`` for every model, one
run folder per seed; the UNIT translation is trained per seed too) and prints, per member and for the
ensemble, the mean and spread over the seeds of mAP and the AIC top-100 mAP after each step: single
model, + re-ranking, + orientation/camera fusion, + track re-ranking, + ensemble.

    python benchmarks/pipeline_table4.py --work /tmp/table4 --seeds 0 1 2

Finished stages are skipped, so an interrupted benchmark continues where it stopped. Figures go to
docs/benchmarks.md with the command, the CPU and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo" / "pipeline.yml"


def seed_pipeline(work: Path, city: Path, seed: int) -> Path:
    """The demo pipeline with every config path absolute, this seed, this city and its own run folder."""
    tree = yaml.safe_load(DEMO.read_text())
    tree["run_dir"] = str(work / f"seed{seed}")
    opts = list(tree.get("opts") or [])
    opts[opts.index("DATASETS.ROOT_DIR") + 1] = str(city)
    tree["opts"] = [*opts, "SEED", seed]
    for section in (tree["members"], {k: tree[k] for k in ("orientation", "camera") if tree.get(k)}):
        for spec in section.values():
            spec["config"] = str((DEMO.parent / spec["config"]).resolve())
            if "SEED" in (spec.get("opts") or []):  # a member's own seed offset stays an offset
                o = spec["opts"]
                o[o.index("SEED") + 1] = seed * 10 + int(o[o.index("SEED") + 1])
    path = work / f"pipeline_seed{seed}.yml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the city and the runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ids", type=int, default=40, help="identities of the city (vreid synth --ids)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    vreid = [sys.executable, "-m", "vreid.cli"]
    city = args.work / "city"
    if not (city / "synth_options.json").is_file():
        subprocess.run([*vreid, "synth", "--out", str(city), "--ids", str(args.ids), "--overwrite"], check=True)
    rows: dict[tuple[str, str], list[dict]] = {}
    seconds = {}
    for seed in args.seeds:
        start = time.perf_counter()
        subprocess.run([*vreid, "pipeline", "run", str(seed_pipeline(args.work, city, seed))], check=True,
                       env=os.environ.copy())
        seconds[seed] = time.perf_counter() - start
        for row in json.loads((args.work / f"seed{seed}" / "final" / "metrics.json").read_text()):
            rows.setdefault((row["model"], row["step"]), []).append(row)
    print(f"seeds {args.seeds}; wall time per seed (s): {', '.join(f'{s:.0f}' for s in seconds.values())}")
    print("| model | step | mAP | mAP@100 (AIC list) | rank-1 (AIC list) |")
    print("|---|---|---|---|---|")

    def cell(values: list[dict], key: str) -> str:
        xs = [100 * v[key] for v in values if key in v]
        if not xs:
            return "-"
        spread = f" +- {statistics.stdev(xs):.1f}" if len(xs) > 1 else ""
        return f"{statistics.mean(xs):.1f}{spread}"

    for (model, step), values in rows.items():
        print(f"| {model} | {step} | {cell(values, 'mAP')} | {cell(values, 'aic_mAP@100')} | "
              f"{cell(values, 'aic_rank1')} |")


if __name__ == "__main__":
    main()
