"""The paper's Table 4 in miniature: the demo pipeline on the synthetic city for several seeds.

Runs ``vreid pipeline run`` on configs/demo/pipeline.yml once per seed (``SEED`` for every model, one
run folder per seed; the UNIT translation is trained per seed too) and prints, per member and for the
ensemble, the mean and spread over the seeds of mAP and the AIC top-100 mAP after each step: single
model, + re-ranking, + orientation/camera fusion, + track re-ranking, + ensemble.

    python benchmarks/pipeline_table4.py --work /tmp/table4 --seeds 0 1 2

Finished stages are skipped, so an interrupted benchmark continues where it stopped, and running it again
on finished seeds only prints the table. It also prints the seconds of every stage per seed (from each
stage's DONE.json) and writes all of it to WORK/table4.md. Figures go to docs/benchmarks.md with the
command, the CPU and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vreid.fileio import atomic_write_text
from vreid.pipeline import DONE

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


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds of each finished stage of a run, as its DONE.json recorded them (kept when a later run skips it)."""
    out = {}
    for marker in sorted(run_dir.glob(f"*/{DONE}"), key=lambda p: p.stat().st_mtime):
        out[marker.parent.name] = float(json.loads(marker.read_text())["seconds"])
    return out


def _children_cpu() -> float:
    """User + system CPU seconds of every finished child process (and their waited-for children) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mean_sd(xs: list[float]) -> str:
    """``mean +- sample sd`` with one decimal; the mean alone for one value; ``-`` for none."""
    if not xs:
        return "-"
    spread = f" +- {statistics.stdev(xs):.1f}" if len(xs) > 1 else ""
    return f"{statistics.mean(xs):.1f}{spread}"


def summary_table(rows: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Per model and step, mean +- sd over the seeds of mAP, AIC top-100 mAP and AIC rank-1 (percent)."""
    lines = ["| model | step | mAP | mAP@100 (AIC list) | rank-1 (AIC list) | seeds |", "|---|---|---|---|---|---|"]
    for (model, step), values in rows.items():
        cells = [mean_sd([100 * v[key] for v in values if key in v]) for key in ("mAP", "aic_mAP@100", "aic_rank1")]
        lines.append(f"| {model} | {step} | {' | '.join(cells)} | {len(values)} |")
    return lines


def times_table(seconds: dict[int, dict[str, float]]) -> list[str]:
    """Seconds of every stage per seed (rows: stages in run order), and their sum."""
    seeds = list(seconds)
    stages = list(dict.fromkeys(name for per in seconds.values() for name in per))
    lines = [f"| stage | {' | '.join(f'seed {s}' for s in seeds)} |", "|---|" + "---|" * len(seeds)]
    for name in stages:
        cells = [f"{seconds[s][name]:.0f}" if name in seconds[s] else "-" for s in seeds]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append(f"| **sum** | {' | '.join(f'{sum(seconds[s].values()):.0f}' for s in seeds)} |")
    return lines


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
    wall, cpu, seconds, load = {}, {}, {}, {}
    for seed in args.seeds:
        load[seed] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"seed {seed}: load average before {load[seed]}", flush=True)
        start, used = time.perf_counter(), _children_cpu()
        subprocess.run([*vreid, "pipeline", "run", str(seed_pipeline(args.work, city, seed))], check=True,
                       env=os.environ.copy())
        wall[seed], cpu[seed] = time.perf_counter() - start, _children_cpu() - used
        seconds[seed] = stage_seconds(args.work / f"seed{seed}")
        for row in json.loads((args.work / f"seed{seed}" / "final" / "metrics.json").read_text()):
            rows.setdefault((row["model"], row["step"]), []).append(row)
    report = [f"seeds {args.seeds}; load average (1/5/15 min) before each: "
              f"{'; '.join(f'{s}: {v}' for s, v in load.items())}",
              f"wall time of this command per seed (s; finished stages are skipped): "
              f"{', '.join(f'{wall[s]:.0f}' for s in args.seeds)}",
              f"CPU time of the pipeline's processes per seed (s, user + system; about the wall time on one idle "
              f"core): {', '.join(f'{cpu[s]:.0f}' for s in args.seeds)}", "", "Seconds per stage (DONE.json):", "",
              *times_table(seconds), "", "Metrics (percent, mean +- sample sd over the seeds):", "",
              *summary_table(rows)]
    text = "\n".join(report) + "\n"
    atomic_write_text(args.work / "table4.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
