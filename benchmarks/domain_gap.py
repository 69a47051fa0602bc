"""The paper's Table 2 in miniature, on the built-in synthetic city, end to end with the `vreid` command line.

Usage: python benchmarks/domain_gap.py [--work /tmp/vreid_domain_gap] [--ids 40] [--sim-ids 60] [--cameras 4]
           [--seed 0] [--epochs 3] [--size 64] [--unit-iters 25] [--picture docs/images/domain_gap_translation.png]

"Real" is the city's real-like part (AIC21_Track2_ReID), "synthetic" its sim-like part
(AIC21_Track2_ReID_Simulation). The same small model (configs/demo/city.yml with the overrides printed below,
identical for every row) is trained five ways and tested on the real-like query/gallery:

  1. real only                       DATASETS.TRAIN ('aic21',)
  2. real + synthetic                ('aic21', 'aic21_synthetic')
  3. real + UNIT-translated synthetic  (a UNIT translator sim -> real trained with `vreid prep translate train`,
                                      the sim-like set translated with `vreid prep translate apply`)
  4. 3 + MixStyle across domains     DATALOADER.SAMPLER pk_domain, MODEL.MIXSTYLE.ENABLED True, MIX domain
  5. 4 + background swap             INPUT.BACKGROUND_SWAP.PROB 0.6, masks from `vreid prep masks --mask-folder`

The city ships no masks. The sim-like images have a flat (plain or vertical-gradient) background and a
darkened footprint shadow, so this script derives their masks from the pixels (background model from the
top and bottom rows, shadow = background x 0.65, orthogonal-convex fill) and reuses them for the translated
copies (translation keeps names and sizes). The real-like images (textured roads, noise, blur, occluders)
get no mask, so the swap only moves translated-synthetic vehicles onto other translated-synthetic
backgrounds: real images are never swapped nor used as backgrounds.

Defaults are what was run on a shared 2-core CPU machine under heavy load (1-minute load 4-10): there, UNIT
managed 0.03-0.5 iterations/s (its discriminators, 16.5 M parameters, are not sized by UNIT.WIDTH and no
UNIT.* key reaches them), so --unit-iters 25 is what fitted, and 25 iterations translate into coloured
noise: rows 3-5 then measure an untrained translator, not UNIT. Raise --unit-iters (thousands) on a GPU.
The optional rows (not in the default --rows): `syn+mixstyle` is MixStyle on real + untranslated synthetic,
`+pk_domain` is real + translated synthetic in domain-balanced batches without MixStyle (it separates the
sampler's effect from MixStyle's).
Note that `pk_domain` draws fewer batches per epoch than `pk` (it is limited by the real identities), so
with equal SOLVER.MAX_EPOCHS the MixStyle rows take fewer optimisation steps.

Prints one table (mAP, rank-1, train and test seconds, 1-minute load before each training) and writes
WORK/results.json, plus a picture of a few synthetic images before/after translation (--picture).
Everything but the picture goes under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo" / "city.yml"
REAL, SIM = "AIC21_Track2_ReID", "AIC21_Track2_ReID_Simulation"
SHADOW = 1.0 - 90.0 / 255.0  # the sim-like renderer darkens the footprint by pasting black at alpha 90

ROWS = {
    "real": "real only",
    "real+syn": "real + synthetic",
    "real+unit": "real + UNIT-translated synthetic",
    "+pk_domain": "  + domain-balanced batches (no MixStyle)",  # optional: separates the sampler from MixStyle
    "+mixstyle": "  + MixStyle (domain pairs)",
    "+bgswap": "  + background swap",
    "syn+mixstyle": "real + synthetic (untranslated) + MixStyle",  # optional, not in the default --rows
}
DEFAULT_ROWS = ("real", "real+syn", "real+unit", "+mixstyle", "+bgswap")


def vreid_exe() -> str:
    exe = Path(sys.executable).with_name("vreid")
    return str(exe) if exe.is_file() else (shutil.which("vreid") or "vreid")


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(cmd: list[str], log: Path) -> float:
    """Run a vreid command (output to ``log``); stop with its log tail if it fails. Returns seconds."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        sys.exit(f"command failed (exit {proc.returncode}, log {log}):\n" + "\n".join(tail))
    return seconds


# ----------------------------------------------------------------------------------------------------------------
# Masks of the sim-like images


def _fill_orthogonal(mask: np.ndarray) -> np.ndarray:
    """Pixels between the first and last mask pixel of both their row and their column (fills holes)."""
    h, w = mask.shape

    def span(m: np.ndarray) -> np.ndarray:  # along axis 1
        any_ = m.any(axis=1)
        first = np.where(any_, m.argmax(axis=1), w)
        last = np.where(any_, m.shape[1] - 1 - m[:, ::-1].argmax(axis=1), -1)
        cols = np.arange(m.shape[1])[None, :]
        return (cols >= first[:, None]) & (cols <= last[:, None])

    return span(mask) & span(mask.T).T


def sim_mask(image: Image.Image, threshold: float = 28.0) -> np.ndarray:
    """The vehicle of a sim-like image: not the (plain or vertical-gradient) background, not its shadow."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = a.shape
    k = max(1, h // 20)
    top, bottom = np.median(a[:k].reshape(-1, 3), axis=0), np.median(a[-k:].reshape(-1, 3), axis=0)
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    bg = top * (1 - ramp) + bottom * ramp  # h x 1 x 3
    not_bg = np.abs(a - bg).max(axis=2) > threshold
    not_shadow = np.abs(a - bg * SHADOW).max(axis=2) > threshold * 0.8
    m = Image.fromarray(((not_bg & not_shadow) * 255).astype(np.uint8))
    m = m.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))  # remove JPEG specks
    return _fill_orthogonal(np.asarray(m) > 127)


def derive_sim_masks(sim_root: Path, out: Path) -> tuple[int, float]:
    """Masks (8-bit PNG, 255 = vehicle) of every sim-like training image, under ``out/SIM/sys_image_train``."""
    n, cover = 0, 0.0
    for path in sorted((sim_root / "sys_image_train").glob("*.jpg")):
        with Image.open(path) as img:
            mask = sim_mask(img)
        target = out / SIM / "sys_image_train" / (path.stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((mask * 255).astype(np.uint8)).save(target)
        n += 1
        cover += float(mask.mean())
    return n, cover / max(n, 1)


# ----------------------------------------------------------------------------------------------------------------
# Picture


def translation_picture(city: Path, translated: Path, masks: Path | None, out: Path, count: int = 6,
                        height: int = 96) -> None:
    """Columns of (synthetic, translated[, mask]) for ``count`` sim-like images of different cameras."""
    images = sorted((city / SIM / "sys_image_train").glob("*.jpg"))
    by_cam: dict[str, list[Path]] = {}
    for p in images:  # names are ID_cCAM_N.jpg
        by_cam.setdefault(p.stem.split("_")[1], []).append(p)
    picked: list[Path] = []
    rng = np.random.default_rng(0)
    while len(picked) < min(count, len(images)):
        for cam in sorted(by_cam):
            left = [p for p in by_cam[cam] if p not in picked]
            if left and len(picked) < count:
                picked.append(left[int(rng.integers(len(left)))])
    rows = []
    for p in picked:
        tiles = [Image.open(p).convert("RGB"), Image.open(translated / SIM / "sys_image_train" / p.name).convert("RGB")]
        if masks is not None and (masks / SIM / "sys_image_train" / (p.stem + ".png")).is_file():
            tiles.append(Image.open(masks / SIM / "sys_image_train" / (p.stem + ".png")).convert("RGB"))
        tiles = [t.resize((max(1, round(t.width * height / t.height)), height), Image.Resampling.BICUBIC)
                 for t in tiles]
        rows.append(tiles)
    pad, label_h = 4, 14
    col_w = [max(r[i].width for r in rows if len(r) > i) for i in range(max(len(r) for r in rows))]
    sheet = Image.new("RGB", (sum(col_w) + pad * (len(col_w) + 1), label_h + len(rows) * (height + pad) + pad),
                      (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    names = ["synthetic (sim-like)", "UNIT sim->real", "derived mask"]
    x = pad
    for i, w in enumerate(col_w):
        draw.text((x, 2), names[i], fill=(0, 0, 0))
        x += w + pad
    for j, tiles in enumerate(rows):
        x = pad
        for i, t in enumerate(tiles):
            sheet.paste(t, (x, label_h + pad + j * (height + pad)))
            x += col_w[i] + pad
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)


# ----------------------------------------------------------------------------------------------------------------


def batches_per_epoch(root: Path, overrides: list[str]) -> int:
    """Batches one epoch of this row's sampler yields (the trainer's epoch), read through vreid itself."""
    from vreid.config import load_config
    from vreid.data.loader import build_train_sampler, prepare_training_data

    cfg = load_config(CONFIG, ["DATASETS.ROOT_DIR", str(root), *overrides])
    return len(build_train_sampler(cfg, prepare_training_data(cfg)))


def summarise(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * float(np.mean(values)):.1f} ± {100 * float(np.std(values, ddof=1)):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/vreid_domain_gap", help="everything is written here (must not exist "
                    "unless --reuse)")
    ap.add_argument("--reuse", action="store_true", help="keep finished steps of an earlier run in --work")
    ap.add_argument("--city", help="use this `vreid synth` output instead of rendering one (--ids etc. ignored)")
    ap.add_argument("--translated", help="an existing UNIT translation of the city's sim-like part (a folder "
                    f"holding {SIM}/, e.g. from benchmarks/gpu_unit.sh) instead of training UNIT here")
    ap.add_argument("--ids", type=int, default=40, help="real-like identities (half train, half test)")
    ap.add_argument("--sim-ids", type=int, default=60, help="sim-like identities")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="city and UNIT seed")
    ap.add_argument("--train-seeds", default="0", help="comma-separated training seeds; each row is trained once "
                    "per seed and the table gives mean ± sample std")
    ap.add_argument("--epochs", type=int, default=3, help="SOLVER.MAX_EPOCHS of every row (when --steps is 0)")
    ap.add_argument("--steps", type=int, default=0, help="train every row for about this many optimisation steps "
                    "(epochs = ceil(steps / the row's batches per epoch), warm-up an eighth of them); 0: --epochs "
                    "for every row")
    ap.add_argument("--size", type=int, default=64, help="INPUT.SIZE_TRAIN/SIZE_TEST (square)")
    ap.add_argument("--unit-size", type=int, default=64)
    ap.add_argument("--unit-width", type=int, default=16)
    ap.add_argument("--unit-n-res", type=int, default=2)
    ap.add_argument("--unit-iters", type=int, default=25)
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--extra", nargs="*", default=[], help="more KEY VALUE overrides for every training/test")
    ap.add_argument("--picture", default=str(REPO / "docs" / "images" / "domain_gap_translation.png"))
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if unknown := [r for r in rows if r not in ROWS]:
        ap.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    seeds = [int(x) for x in args.train_seeds.split(",") if x]

    vreid = vreid_exe()
    work = Path(args.work).resolve()
    if work.exists() and not args.reuse:
        ap.error(f"{work} exists: remove it or pass --reuse")
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    city, troot, unit, masks = work / "city", work / "translated", work / "unit", work / "sim_masks"
    timings: dict[str, float] = {}
    print(f"load before start: {load()}  ({os.cpu_count()} CPUs)", flush=True)

    # 1. the city
    if args.city and not city.exists():
        city.symlink_to(Path(args.city).resolve())
    if not (city / "synth_options.json").is_file():
        timings["synth"] = run([vreid, "synth", "--out", str(city), "--ids", str(args.ids), "--sim-ids",
                                str(args.sim_ids), "--cameras", str(args.cameras), "--seed", str(args.seed),
                                "--overwrite"], logs / "synth.log")
    counts = json.loads((city / "synth_options.json").read_text())["counts"]
    print(f"city: {counts}", flush=True)

    # 2. UNIT sim -> real (or a given translation), and the translated copy beside a link to the real-like part
    need_unit = any(r in rows for r in ("real+unit", "+pk_domain", "+mixstyle", "+bgswap"))
    troot.mkdir(exist_ok=True)
    if need_unit and args.translated and not (troot / SIM).exists():
        given = Path(args.translated).resolve()
        (troot / SIM).symlink_to(given / SIM if (given / SIM).is_dir() else given)
    if need_unit and not (troot / SIM / "train_label.xml").is_file() and not (unit / "translator.pth").is_file():
        print(f"load before UNIT: {load()}", flush=True)
        timings["unit_train"] = run(
            [vreid, "prep", "translate", "train", "--source", str(city / SIM / "sys_image_train"),
             "--target", str(city / REAL / "image_train"), "OUTPUT_DIR", str(unit), "SEED", str(args.seed),
             "UNIT.IMAGE_SIZE", str(args.unit_size), "UNIT.WIDTH", str(args.unit_width),
             "UNIT.N_RES", str(args.unit_n_res), "UNIT.ITERATIONS", str(args.unit_iters),
             "UNIT.SAMPLE_PERIOD", str(max(1, args.unit_iters // 4)),
             "UNIT.CHECKPOINT_PERIOD", str(max(1, args.unit_iters // 4))], logs / "unit_train.log")
    if need_unit and not (troot / SIM / "train_label.xml").is_file():
        timings["unit_apply"] = run([vreid, "prep", "translate", "apply", "--checkpoint", str(unit / "translator.pth"),
                                     "--in", str(city / SIM), "--out", str(troot / SIM)], logs / "unit_apply.log")
    if need_unit and not (troot / REAL).exists():
        (troot / REAL).symlink_to(city / REAL)

    # 3. masks for the background swap (sim-like images only; see the module docstring)
    if "+bgswap" in rows and not (troot / "masks" / "masks.json").is_file():
        n, cover = derive_sim_masks(city / SIM, masks)
        print(f"derived {n} sim-like masks, mean vehicle area {cover:.1%}", flush=True)
        # --mask-folder must come before the KEY VALUE pairs: everything after them is taken as overrides
        run([vreid, "prep", "masks", "--mask-folder", str(masks), "--config-file", str(CONFIG),
             "DATASETS.ROOT_DIR", str(troot)], logs / "masks.log")

    # 4. train and test every row, once per training seed
    common = ["INPUT.SIZE_TRAIN", f"({args.size}, {args.size})", "INPUT.SIZE_TEST", f"({args.size}, {args.size})",
              *args.extra]
    both = "('aic21', 'aic21_synthetic')"
    mix = ["DATALOADER.SAMPLER", "pk_domain", "MODEL.MIXSTYLE.ENABLED", "True", "MODEL.MIXSTYLE.MIX", "domain"]
    plans = {
        "real": (city, ["DATASETS.TRAIN", "('aic21',)"]),
        "real+syn": (city, ["DATASETS.TRAIN", both]),
        "real+unit": (troot, ["DATASETS.TRAIN", both]),
        "+pk_domain": (troot, ["DATASETS.TRAIN", both, "DATALOADER.SAMPLER", "pk_domain"]),
        "+mixstyle": (troot, ["DATASETS.TRAIN", both, *mix]),
        "+bgswap": (troot, ["DATASETS.TRAIN", both, *mix, "INPUT.BACKGROUND_SWAP.PROB", "0.6"]),
        "syn+mixstyle": (city, ["DATASETS.TRAIN", both, *mix]),
    }
    results: dict[str, dict] = {}
    results_file = work / "results.json"
    if results_file.is_file() and args.reuse:
        results = json.loads(results_file.read_text())["rows"]
    for seed in seeds:
        for name in rows:
            key = f"{name}@{seed}"
            if key in results:
                continue
            root, extra = plans[name]
            per_epoch = batches_per_epoch(root, [*extra, *common])
            epochs = max(1, -(-args.steps // per_epoch)) if args.steps else args.epochs
            settings = ["SEED", str(seed), "SOLVER.MAX_EPOCHS", str(epochs), *common]
            if args.steps:  # the same warm-up in steps for every row: an eighth of them
                settings += ["SOLVER.WARMUP_EPOCHS", f"{epochs / 8:.4f}"]
            out = work / "runs" / f"{name.replace('+', 'plus_')}_seed{seed}"
            if out.exists():
                shutil.rmtree(out)  # an unfinished earlier attempt
            before = load()
            train_s = run([vreid, "train", "--config-file", str(CONFIG), "DATASETS.ROOT_DIR", str(root),
                           "OUTPUT_DIR", str(out), *extra, *settings], logs / f"train_{out.name}.log")
            test_s = run([vreid, "test", "--config-file", str(CONFIG), "DATASETS.ROOT_DIR", str(city),
                          "TEST.WEIGHT", str(out / "model_final.pth"), "OUTPUT_DIR", str(out / "test"), *settings],
                         logs / f"test_{out.name}.log")
            m = json.loads((out / "test" / "metrics.json").read_text())
            results[key] = {"row": name, "seed": seed, "mAP": m["mAP"], "rank1": m["rank1"], "rank5": m["rank5"],
                            "epochs": epochs, "steps": epochs * per_epoch, "train_s": train_s, "test_s": test_s,
                            "load_before": before, "load_after": load(), "num_query": m["num_query"],
                            "num_gallery": m["num_gallery"]}
            print(f"{key}: mAP {m['mAP']:.3f} rank-1 {m['rank1']:.3f} ({epochs} epochs = {epochs * per_epoch} "
                  f"steps, train {train_s:.0f} s, load {before})", flush=True)
            if results_file.is_file():  # merge: another invocation (--reuse --rows ...) may have added rows
                saved = json.loads(results_file.read_text())
                results = {**saved["rows"], **results}
                timings = {**saved.get("timings", {}), **timings}
            results_file.write_text(json.dumps({"args": vars(args), "counts": counts, "timings": timings,
                                                "rows": results}, indent=1))

    # 5. the picture
    if need_unit and args.picture:
        translation_picture(city, troot, masks if masks.is_dir() else None, Path(args.picture))
        print(f"picture: {args.picture} ({Path(args.picture).stat().st_size / 1024:.0f} KB)")

    print(f"\ncity {counts}; training seeds {seeds}")
    print(f"every row: configs/demo/city.yml SEED s SOLVER.MAX_EPOCHS e {' '.join(common)}")
    if "unit_train" in timings:
        print(f"UNIT: {args.unit_iters} it at {args.unit_size}px width {args.unit_width} n_res {args.unit_n_res}: "
              f"train {timings['unit_train']:.0f} s, apply {timings.get('unit_apply', 0):.0f} s")
    print("\n| row | mAP | rank-1 | rank-5 | steps | train s (each) | per-seed mAP |")
    print("|---|---|---|---|---|---|---|")
    for name in rows:
        got = [results[f"{name}@{s}"] for s in seeds if f"{name}@{s}" in results]
        if not got:
            continue
        print(f"| {ROWS[name].strip()} | {summarise([r['mAP'] for r in got])} | "
              f"{summarise([r['rank1'] for r in got])} | {summarise([r['rank5'] for r in got])} | "
              f"{got[0]['steps']} | {np.mean([r['train_s'] for r in got]):.0f} | "
              f"{' / '.join(format(100 * r['mAP'], '.1f') for r in got)} |")


if __name__ == "__main__":
    main()
