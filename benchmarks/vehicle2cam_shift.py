"""Which recipe holds up on a recording it never saw? Proxies for a shift of recording, built from train.txt alone.

vehicle-2cam's shared copy has one list, ``train.txt`` (405 vehicles, one image per camera). This script cuts it into
held-out splits and, for each split, into three *proxies* of a new recording, trains each recipe on each split with
several seeds and tests it on every proxy:

- ``plain``: 100 held-out vehicles as they are (camera-1 queries, camera-2 gallery);
- ``sharp``: the training images downscaled by ``--scale`` (0.6) before training, the held-out images untouched: the
  test recording has larger, sharper crops than the training one (the case a user meets with a closer camera);
- ``blur``: the model trained on the untouched images, the held-out images downscaled by ``--scale``: a farther or
  lower-resolution camera;
- ``colour``: the held-out images of each camera recoloured as another camera would render them (camera 1 warmer
  and brighter, camera 2 cooler and darker: ``CAMERA_COLOUR``), so queries and gallery differ in colour response;
- ``view``: each held-out image warped by a random perspective (corners moved inwards by up to 30 % of the half
  side, drawn from the file name): a camera at another height and angle.

``colour`` and ``view`` only change the test images, so they reuse the models of ``plain`` and cost one extraction.

Splits (each holds out 100 vehicles, stratified by type): ``seed0`` and ``seed1`` draw them at random, ``tail`` takes
the highest-numbered vehicles of each type (the end of the recording). No figure here comes from vehicles outside
``train.txt``: the separate recording that judges the recipe is never read.

    python benchmarks/vehicle2cam_shift.py --work /tmp/v2c --recipes 'shipped;pad;shipped+test:TEST.FLIP=True' \\
        --splits seed0,seed1,tail --seeds 0,1,2 --proxies plain,sharp,blur
    python benchmarks/vehicle2cam_shift.py --work /tmp/v2c --table          # mean +- std per recipe and proxy
    python benchmarks/vehicle2cam_shift.py --work /tmp/v2c --recipes 'ens:shipped+shipped@1' --seeds 1 \
        --splits seed0,seed1,tail --proxies plain,blur   # the two models of seeds 1 and 2, distances averaged
    python benchmarks/vehicle2cam_shift.py --work /tmp/v2c --splits seed0,seed1,tail --seeds 1 \
        --recipes 'shipped/center;ens:shipped/center+shipped/center@1' --proxies plain,blur,colour,view

``A+test:K=V`` re-tests recipe A's models with config overrides, e.g. ``shipped+test:TEST.CAMERA_NORM.BN=True``
(batch-norm statistics re-estimated per camera, one more extraction pass).

A recipe ``A/P`` post-processes recipe A's saved test features with P's ``TEST`` keys (``POST``: ``center`` and
``std``, per-camera feature normalisation), through the same code as ``vreid test``, without extracting again.

An ensemble recipe ``ens:A+B@k+...`` averages the test distances of its members (equal weights, as ``vreid
ensemble``), each a recipe name; ``@k`` trains that member with seed ``seed + k``, so ``ens:shipped+shipped@1`` at
seed 1 is the ensemble of the ``shipped`` models of seeds 1 and 2 (members are trained first if missing).

Every (recipe, split, seed, training variant) run is one ``vreid train`` + one ``vreid test`` per proxy, in
subprocesses, exactly as a user runs them; results are appended to ``WORK/results.jsonl`` and finished runs are
skipped when the script is run again, so a grid can be grown over several sittings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("vehicle2cam_shift")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "vehicle-2cam"
WEIGHTS = REPO.parent / "shared" / "weights"
HELD_OUT = 100
_NAME = re.compile(r"^(?P<type>[a-z]+)_(?P<num>\d+)_cam\d\.jpg$")

MOBILENET = ["MODEL.PRETRAIN_PATH", str(WEIGHTS / "mobilenet_v2-b0353104.pth")]
SIGNED = ["INPUT.PIXEL_MEAN", "(0.5,0.5,0.5)", "INPUT.PIXEL_STD", "(0.5,0.5,0.5)"]  # inputs in [-1, 1]
LITE0 = ["MODEL.BACKBONE", "efficientnet_lite0",
         "MODEL.PRETRAIN_PATH", str(WEIGHTS / "efficientnet-lite0-57934424.pth"), *SIGNED]
LITE2 = ["MODEL.BACKBONE", "efficientnet_lite2",
         "MODEL.PRETRAIN_PATH", str(WEIGHTS / "efficientnet-lite2-9656183e.pth"), *SIGNED]
BASE_CONFIG = "configs/vehicle2cam/mobilenetv2.yml"
LOW_RES = ["INPUT.RANDOM_RESOLUTION.PROB", "0.5", "INPUT.RANDOM_RESOLUTION.MIN_SCALE", "0.4"]
PAD = ["INPUT.RESIZE_MODE", "pad"]
# The paper's use of simulated vehicles: extra identities from the synthetic city's sim-like (VehicleX-style) set, every
# batch half real and half simulated (pk_domain; the epoch ends when the real ids run out, so each real image is seen
# as often as in `shipped`), MixStyle mixing the statistics of the two domains after stages 1-2.
SIM_IDS = 200
SIM = ["DATASETS.TRAIN", "('vehicle2cam','aic21_synthetic')", "DATALOADER.SAMPLER", "pk_domain",
       "DATALOADER.DOMAIN_EPOCH", "shortest"]
MIX_DOMAIN = ["MODEL.MIXSTYLE.ENABLED", "True", "MODEL.MIXSTYLE.MIX", "domain"]

# recipe -> (config file, overrides, trained?). One lever per row against `shipped` unless the name says otherwise.
# A name "A+test:KEY=VALUE,..." reuses recipe A's trained models and only changes how they are tested.
RECIPES: dict[str, tuple[str, list[str], bool]] = {
    "imagenet_mnv2": (BASE_CONFIG, MOBILENET, False),
    "imagenet_lite0": (BASE_CONFIG, LITE0, False),
    "imagenet_lite0_inorm": (BASE_CONFIG, LITE0[:4], False),  # ImageNet mean/std instead of [-1, 1]
    "imagenet_lite2": (BASE_CONFIG, [*LITE2, "INPUT.SIZE_TEST", "(256,256)"], False),
    "shipped": (BASE_CONFIG, MOBILENET, True),
    "pad": (BASE_CONFIG, [*MOBILENET, *PAD], True),
    "lowres": (BASE_CONFIG, [*MOBILENET, *LOW_RES], True),
    "pad_lowres": (BASE_CONFIG, [*MOBILENET, *PAD, *LOW_RES], True),
    "jitter_blur": (BASE_CONFIG, [*MOBILENET, "INPUT.COLOR_JITTER.PROB", "0.25", "INPUT.BLUR_PROB", "0.25"], True),
    # colour jitter as a camera of another recording changes colour: brightness, contrast, saturation and hue, on
    # half the images (torchvision ColorJitter; the `colour` proxy's per-channel gains and gamma are not among them)
    "jitter_colour": (BASE_CONFIG, [*MOBILENET, "INPUT.COLOR_JITTER.PROB", "0.5",
                                    "INPUT.COLOR_JITTER.BRIGHTNESS", "0.3", "INPUT.COLOR_JITTER.CONTRAST", "0.3",
                                    "INPUT.COLOR_JITTER.SATURATION", "0.3", "INPUT.COLOR_JITTER.HUE", "0.05"], True),
    "gem_s1": (BASE_CONFIG, [*MOBILENET, "MODEL.POOLING", "gem", "MODEL.LAST_STRIDE", "1"], True),
    "mixstyle": (BASE_CONFIG, [*MOBILENET, "MODEL.MIXSTYLE.ENABLED", "True"], True),
    "ibn2": (BASE_CONFIG, [*MOBILENET, "MODEL.IBN_STAGES", "2"], True),  # IBN-a norms in stages 1-2 (stride 4, 8)
    "size160": (BASE_CONFIG, [*MOBILENET, "INPUT.SIZE_TRAIN", "(160,160)", "INPUT.SIZE_TEST", "(160,160)"], True),
    "size160_lowres": (BASE_CONFIG, [*MOBILENET, *LOW_RES, "INPUT.SIZE_TRAIN", "(160,160)",
                                     "INPUT.SIZE_TEST", "(160,160)"], True),
    "lite0": (BASE_CONFIG, LITE0, True),
    "lite0_lowres": (BASE_CONFIG, [*LITE0, *LOW_RES], True),
    "lite0_pad_lowres": (BASE_CONFIG, [*LITE0, *PAD, *LOW_RES], True),
    "lite2": (BASE_CONFIG, [*LITE2, "INPUT.SIZE_TRAIN", "(256,256)", "INPUT.SIZE_TEST", "(256,256)"], True),
    "sim_mix": (BASE_CONFIG, [*MOBILENET, *SIM, *MIX_DOMAIN], True),  # + SIM_IDS simulated ids, MixStyle (domain)
    "sim": (BASE_CONFIG, [*MOBILENET, *SIM], True),  # the simulated ids alone, no MixStyle
}


def _vehicles(names: list[str]) -> dict[str, list[str]]:
    """type -> vehicle ids (``car_0012``) in numeric order."""
    by_type: dict[str, set[str]] = defaultdict(set)
    for name in names:
        m = _NAME.match(name)
        if m is None:
            raise SystemExit(f"{DATA / 'train.txt'}: unexpected file name {name!r}")
        by_type[m["type"]].add(f"{m['type']}_{m['num']}")
    return {t: sorted(ids, key=lambda v: int(v.split("_")[1])) for t, ids in sorted(by_type.items())}


def held_out_ids(names: list[str], split: str) -> set[str]:
    """100 vehicles, each type in proportion to its share (largest remainders), drawn as ``split`` says."""
    by_type = _vehicles(names)
    total = sum(len(v) for v in by_type.values())
    quotas = {t: HELD_OUT * len(v) / total for t, v in by_type.items()}
    counts = {t: int(q) for t, q in quotas.items()}
    for t in sorted(quotas, key=lambda t: counts[t] - quotas[t])[: HELD_OUT - sum(counts.values())]:
        counts[t] += 1
    chosen: set[str] = set()
    for t, ids in by_type.items():
        if split == "tail":
            chosen.update(ids[len(ids) - counts[t]:])
        else:
            chosen.update(random.Random(int(split.removeprefix("seed"))).sample(ids, counts[t]))
    return chosen


# proxy -> the folder variant its held-out images come from (``sharp`` tests untouched images on a model trained on
# downscaled ones; the others test a model trained on untouched images)
TEST_DATA = {"plain": "orig", "sharp": "lowtrain", "blur": "lowval", "colour": "colorval", "view": "viewval"}
PROXIES = tuple(TEST_DATA)
# Per-camera colour response of the ``colour`` proxy: channel gains (R, G, B) and a gamma, one pair per camera, so
# the query camera turns warmer and brighter and the gallery camera cooler and darker than any training image.
CAMERA_COLOUR = {1: ((1.10, 1.0, 0.88), 0.8), 2: ((0.90, 1.0, 1.12), 1.25)}
VIEW_DISTORTION = 0.3  # the ``view`` proxy moves each corner by up to this fraction of half the side, inwards


def camera_colour(img: Image.Image, camera: int) -> Image.Image:
    """The image as camera ``camera`` of another recording would render it: gains per channel, then a gamma."""
    gains, gamma = CAMERA_COLOUR[camera]
    pixels = np.clip(np.asarray(img, dtype=np.float32) / 255.0 * np.asarray(gains, dtype=np.float32), 0.0, 1.0)
    return Image.fromarray(np.round(255.0 * pixels ** gamma).astype(np.uint8))


def viewpoint(img: Image.Image, name: str) -> Image.Image:
    """A perspective warp drawn from the file name (the same image always gets the same warp), as a camera at
    another height and angle would see the vehicle; the uncovered corners take the image's mean colour."""
    from torchvision.transforms.functional import perspective

    rng = random.Random(name)
    w, h = img.size
    dx, dy = VIEW_DISTORTION * w / 2, VIEW_DISTORTION * h / 2
    start = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]
    end = [[round(x + sx * rng.uniform(0, dx)), round(y + sy * rng.uniform(0, dy))]
           for (x, y), (sx, sy) in zip(start, [(1, 1), (-1, 1), (-1, -1), (1, -1)], strict=True)]
    fill = [int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0)]
    return perspective(img, start, end, fill=fill)


def make_split(work: Path, split: str, variant: str, scale: float) -> Path:
    """A vehicle-2cam folder: train.txt + val.txt; ``variant`` 'lowtrain' / 'lowval' downscales that part's images."""
    root = work / "data" / f"{split}-{variant}"
    if (root / "val.txt").is_file():
        return root
    names = [n.strip() for n in (DATA / "train.txt").read_text().splitlines() if n.strip()]
    held = held_out_ids(names, split)
    val = [n for n in names if n.rsplit("_", 1)[0] in held]
    train = [n for n in names if n.rsplit("_", 1)[0] not in held]
    images = root / "images" / "train"
    images.mkdir(parents=True, exist_ok=True)
    changed = set(train if variant == "lowtrain" else val if variant in ("lowval", "colorval", "viewval") else [])
    for name in names:
        target = images / name
        if target.exists():
            continue
        if name in changed:
            img = Image.open(DATA / "images" / "train" / name).convert("RGB")
            if variant == "colorval":
                img = camera_colour(img, int(name[-5]))
            elif variant == "viewval":
                img = viewpoint(img, name)
            else:
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.BILINEAR, reducing_gap=None)
            img.save(target, quality=95)
        else:
            target.symlink_to(DATA / "images" / "train" / name)
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "val.txt").write_text("\n".join(val) + "\n")  # written last: marks the folder complete
    return root


def with_simulated(work: Path, train_root: Path) -> Path:
    """A dataset root holding ``train_root`` as vehicle-2cam beside the synthetic city's sim-like identities."""
    city = work / "city"
    if not (city / "AIC21_Track2_ReID_Simulation" / "train_label.xml").is_file():
        _vreid(["synth", "--out", str(city), "--ids", "4", "--sim-ids", str(SIM_IDS), "--cameras", "2",
                "--seed", "0", "--overwrite"], work / "synth.log")
    root = train_root.with_name(train_root.name + "-sim")
    root.mkdir(exist_ok=True)
    for name, target in (("vehicle-2cam", train_root), ("AIC21_Track2_ReID_Simulation",
                                                         city / "AIC21_Track2_ReID_Simulation")):
        if not (root / name).exists():
            (root / name).symlink_to(target.resolve(), target_is_directory=True)
    return root


def _vreid(args: list[str], log_file: Path) -> None:
    with log_file.open("a") as out:
        code = subprocess.call([sys.executable, "-m", "vreid.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                               cwd=REPO)
    if code != 0:
        raise SystemExit(f"vreid {args[0]} failed (exit {code}); see {log_file}")


# A name "A/P" reuses recipe A's saved test features and only changes the post-processing: P's TEST keys, applied by
# the same code as `vreid test` (no extraction); allowed on ensemble members ("ens:A/center+A/center@1").
POST: dict[str, list[str]] = {
    "center": ["TEST.CAMERA_NORM.MODE", "center"],
    "std": ["TEST.CAMERA_NORM.MODE", "standardize"],
}


def split_post(recipe: str) -> tuple[str, str]:
    """``A/P`` -> ("A", "P"); a name without a post-processing variant -> (name, "")."""
    base, _, post = recipe.partition("/")
    if post and post not in POST:
        raise SystemExit(f"unknown post-processing {post!r} in {recipe!r}; known: {', '.join(POST)}")
    return base, post


def parse_recipe(recipe: str) -> tuple[str, list[str]]:
    """``A+test:K=V,K=V`` -> ("A", [K, V, K, V]); a plain name -> (name, []); a ``/P`` suffix is checked and
    ignored here."""
    base, _, tail = split_post(recipe)[0].partition("+test:")
    if base not in RECIPES:
        raise SystemExit(f"unknown recipe {base!r}; known: {', '.join(RECIPES)}")
    extra: list[str] = []
    for item in filter(None, tail.split(",")):
        key, _, value = item.partition("=")
        extra += [key, value]
    return base, extra


ENSEMBLE = "ens:"


def parse_ensemble(recipe: str) -> list[tuple[str, int]]:
    """``ens:A+B@1`` -> [("A", 0), ("B", 1)]: member recipes and their seed offsets."""
    members = []
    for item in re.split(r"\+(?!test:)", recipe.removeprefix(ENSEMBLE)):  # "A+test:K=V" is one member
        name, _, offset = item.partition("@")
        parse_recipe(name)
        if offset and not offset.isdigit():
            raise SystemExit(f"{recipe}: seed offset of {item!r} must be a whole number")
        members.append((name, int(offset or 0)))
    if len(members) < 2:
        raise SystemExit(f"{recipe}: an ensemble needs at least two members")
    return members


def test_dir(work: Path, recipe: str, split: str, seed: int, proxy: str) -> Path:
    """Where ``vreid test`` wrote recipe's outputs (distance.npy, query/gallery.npz) for one proxy."""
    tested, post = split_post(recipe)
    base, test_overrides = parse_recipe(tested)
    variant = "lowtrain" if proxy == "sharp" else "orig"
    suffix = "-" + re.sub(r"[^A-Za-z0-9.=_-]", "_", tested) if test_overrides else ""
    suffix += f"-post-{post}" if post else ""
    return work / "runs" / f"{base}-{split}-{variant}-s{seed}" / f"test-{proxy}{suffix}"


def record(work: Path, done: set, recipe: str, split: str, seed: int, proxy: str, metrics: dict,
           train_s: float = 0.0) -> None:
    """One scored (recipe, split, seed, proxy) cell: appended to WORK/results.jsonl and marked done."""
    row = {"recipe": recipe, "split": split, "seed": seed, "proxy": proxy, "mAP": float(metrics["mAP"]),
           "rank1": float(metrics["rank1"]), "train_s": round(train_s, 1)}
    with (work / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    done.add((recipe, split, seed, proxy))
    log.info("%s", row)


def run_post(work: Path, recipe: str, split: str, seed: int, proxies: list[str], scale: float, done: set) -> None:
    """Recipe ``A/P``: A's saved query/gallery features, post-processed with P's TEST keys, scored."""
    from vreid.config import load_config
    from vreid.engine.postprocess import final_distance, metrics_from_distance
    from vreid.features import load_pair
    from vreid.fileio import atomic_save_npy
    from vreid.runfiles import DISTANCE_FILE, GALLERY_FILE, QUERY_FILE

    tested, post = split_post(recipe)
    run(work, tested, split, seed, proxies, scale, done)
    base, test_overrides = parse_recipe(tested)
    config, overrides, _ = RECIPES[base]
    cfg = load_config(REPO / config, [*overrides, "TEST.CAMERA_NORM.MODE", "none", *test_overrides, *POST[post]])
    for proxy in proxies:
        if (recipe, split, seed, proxy) in done:
            continue
        source, out = test_dir(work, tested, split, seed, proxy), test_dir(work, recipe, split, seed, proxy)
        query, gallery = load_pair(source)
        dist = final_distance(cfg, query, gallery)
        out.mkdir(parents=True, exist_ok=True)
        for name in (QUERY_FILE, GALLERY_FILE):  # the ensemble code reads the images' order from here
            if not (out / name).exists():
                (out / name).symlink_to(source / name)
        atomic_save_npy(out / DISTANCE_FILE, dist)
        record(work, done, recipe, split, seed, proxy, metrics_from_distance(cfg, dist, query, gallery))


def run_ensemble(work: Path, recipe: str, split: str, seed: int, proxies: list[str], scale: float,
                 done: set) -> None:
    """Train/test the members as needed, then score the mean of their distance matrices on each proxy."""
    from vreid.features import load_distance, load_pair
    from vreid.retrieval.metrics import evaluate
    from vreid.runfiles import DISTANCE_FILE

    members = parse_ensemble(recipe)
    for name, offset in members:
        run(work, name, split, seed + offset, proxies, scale, done)
    for proxy in proxies:
        if (recipe, split, seed, proxy) in done:
            continue
        folders = [test_dir(work, name, split, seed + offset, proxy) for name, offset in members]
        query, gallery = load_pair(folders[0])
        for folder in folders[1:]:  # members must rank the same images in the same order
            q, g = load_pair(folder)
            if list(q.paths) != list(query.paths) or list(g.paths) != list(gallery.paths):
                raise SystemExit(f"{folder}: not the same query/gallery images as {folders[0]}")
        dist = sum(load_distance(f / DISTANCE_FILE) for f in folders) / len(folders)
        record(work, done, recipe, split, seed, proxy,
               evaluate(dist, query.vehicle_ids, gallery.vehicle_ids, query.camera_ids, gallery.camera_ids))


def run(work: Path, recipe: str, split: str, seed: int, proxies: list[str], scale: float, done: set) -> None:
    if recipe.startswith(ENSEMBLE):
        run_ensemble(work, recipe, split, seed, proxies, scale, done)
        return
    if split_post(recipe)[1]:
        run_post(work, recipe, split, seed, proxies, scale, done)
        return
    base, test_overrides = parse_recipe(recipe)
    config, overrides, trained = RECIPES[base]
    # proxies that share a trained model: plain and blur train on untouched images, sharp on downscaled ones
    for variant, tested in (("orig", [p for p in proxies if p != "sharp"]),
                            ("lowtrain", [p for p in proxies if p == "sharp"])):
        todo = [p for p in tested if (recipe, split, seed, p) not in done]
        if not todo or (not trained and variant == "lowtrain"):
            continue
        run_dir = work / "runs" / f"{base}-{split}-{variant}-s{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        train_root = make_split(work, split, variant, scale)
        weight, seconds = "", 0.0
        if trained:
            weight = str(run_dir / "train" / "model_final.pth")
            if not Path(weight).is_file():
                start = time.time()
                train_data = with_simulated(work, train_root) if "aic21_synthetic" in str(overrides) else train_root
                _vreid(["train", "--config-file", config, *overrides, "DATASETS.ROOT_DIR", str(train_data),
                        "SEED", str(seed), "OUTPUT_DIR", str(run_dir / "train")], run_dir / "log.txt")
                seconds = time.time() - start
        for proxy in todo:
            test_root = make_split(work, split, TEST_DATA[proxy], scale)  # plain and sharp: the training folder
            out = test_dir(work, recipe, split, seed, proxy)
            # levers are compared without the flip test and the per-camera normalisation whatever the config says;
            # "+test:TEST.FLIP=True" and "/std" add them
            _vreid(["test", "--config-file", config, *overrides, "TEST.FLIP", "False", "TEST.CAMERA_NORM.MODE", "none",
                    *test_overrides,
                    "DATASETS.ROOT_DIR", str(test_root),
                    "DATASETS.TEST_SPLIT", "val", "TEST.WEIGHT", weight, "OUTPUT_DIR", str(out)], run_dir / "log.txt")
            record(work, done, recipe, split, seed, proxy, json.loads((out / "metrics.json").read_text()), seconds)


def table(work: Path, reference: str = "shipped") -> str:
    """mAP mean +- sd (n runs) per recipe and proxy, then each recipe's paired difference from ``reference`` over
    the (split, seed) cells both have: the same held-out vehicles and the same seed, so the split's own difficulty
    cancels out."""
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines() if line.strip()]
    runs: dict[tuple[str, str], dict[tuple[str, int], float]] = defaultdict(dict)
    for r in rows:
        runs[(r["recipe"], r["proxy"])][(r["split"], r["seed"])] = r["mAP"]
    proxies = [p for p in PROXIES if any(k[1] == p for k in runs)]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))

    def cell(values: list[float], signed: bool = False) -> str:
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):{'+' if signed else ''}.3f} +- {sd:.3f} ({len(values)})"

    header = "| recipe | " + " | ".join(f"{p} mAP (n)" for p in proxies) + " |"
    lines = [header, "|---" * (len(proxies) + 1) + "|"]
    for recipe in recipes:
        lines.append(f"| {recipe} | " + " | ".join(cell(list(runs[(recipe, p)].values())) for p in proxies) + " |")
    lines += ["", f"Paired difference from `{reference}` (same split and seed):", "",
              header.replace("mAP (n)", "diff (n)"), lines[1]]
    for recipe in recipes:
        if recipe == reference:
            continue
        parts = []
        for p in proxies:
            ref, own = runs.get((reference, p), {}), runs.get((recipe, p), {})
            parts.append(cell([own[k] - ref[k] for k in sorted(own.keys() & ref.keys())], signed=True))
        lines.append(f"| {recipe} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--recipes", default="shipped", help="';'-separated recipe names (see RECIPES)")
    parser.add_argument("--splits", default="seed0")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--proxies", default="plain,sharp,blur")
    parser.add_argument("--scale", type=float, default=0.6, help="downscaling factor of the low-resolution side")
    parser.add_argument("--table", action="store_true", help="print the table of what results.jsonl holds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.table:
        print(table(args.work))
        return
    if not (DATA / "train.txt").is_file():
        raise SystemExit(f"{DATA}/train.txt not found: this benchmark needs the shared vehicle-2cam data")
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.jsonl"
    done = set()
    if results.is_file():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done.add((r["recipe"], r["split"], r["seed"], r["proxy"]))
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    proxies = args.proxies.split(",")
    unknown = sorted(set(proxies) - set(PROXIES))
    if unknown:
        raise SystemExit(f"--proxies: unknown {', '.join(unknown)}; known: {', '.join(PROXIES)}")
    for recipe in args.recipes.split(";"):
        parse_ensemble(recipe) if recipe.startswith(ENSEMBLE) else parse_recipe(recipe)
        for split in args.splits.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                run(args.work, recipe, split, seed, proxies, args.scale, done)
    print(table(args.work))


if __name__ == "__main__":
    main()
