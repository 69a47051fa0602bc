"""Synthetic city: rendering speed on one core, and how far colour alone gets at cross-camera retrieval.

Usage: python benchmarks/synth_speed.py [--ids 200] [--cameras 6] [--seed 0]

Prints images/minute for the real-like and sim-like parts (one process pinned to one core), then rank-1 and mAP
of retrieval by a coarse colour histogram on the generated query/gallery (labels from vreid_*_label.xml),
next to chance and to "oracle" rankings that know the exact colour (and type) label. Colour alone must not
solve retrieval: identities come in groups sharing type and paint and differing only in details.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from vreid.data.synth import SynthOptions, generate_city, identity_attributes
from vreid.data.synth.city import RenderJob, plan_real, plan_sim, run_jobs


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity here)"


def time_part(jobs: list[RenderJob]) -> float:
    start = time.perf_counter()
    run_jobs(jobs, workers=1)
    return len(jobs) / (time.perf_counter() - start) * 60.0


def speed(options: SynthOptions, out: Path) -> None:
    plan = plan_real(options)
    out.mkdir(parents=True)
    real = [RenderJob(options.seed, options.group_size, t, f, str(out / f"r{k}.jpg"))
            for k, (t, f) in enumerate((t, f) for t in plan.train + plan.gallery for f in range(t.n_frames))]
    real += [RenderJob(options.seed, options.group_size, t, f, str(out / f"q{k}.jpg"))
             for k, (t, f) in enumerate(plan.queries)]
    sim = [RenderJob(options.seed, options.group_size, t, f, str(out / f"s{k}.jpg"))
           for k, (t, f) in enumerate((t, f) for t in plan_sim(options) for f in range(t.n_frames))]
    real_rate, sim_rate = time_part(real), time_part(sim)
    print(f"real-like: {len(real)} images, {real_rate:,.0f} images/min on one core")
    print(f"sim-like:  {len(sim)} images, {sim_rate:,.0f} images/min on one core")


def read_items(path: Path) -> list[dict[str, str]]:
    lines = path.read_bytes().decode("ascii").split("\n")
    return [dict(e.attrib) for e in ET.fromstring("\n".join(lines[1:])).iter("Item")]


def colour_histogram(path: Path, bins: int = 4, centre: bool = False) -> np.ndarray:
    arr = np.asarray(Image.open(path).convert("RGB"))
    if centre:  # the middle 60 % of the crop: mostly vehicle
        h, w = arr.shape[:2]
        arr = arr[int(h * 0.2):int(h * 0.8), int(w * 0.2):int(w * 0.8)]
    q = (arr.astype(np.int32) * bins) // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.bincount(idx.ravel(), minlength=bins ** 3).astype(np.float64)
    return np.sqrt(hist / hist.sum())  # Hellinger embedding: Euclidean distance ~ Bhattacharyya


def evaluate(dist: np.ndarray, q_ids: np.ndarray, q_cams: np.ndarray, g_ids: np.ndarray,
             g_cams: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Rank-1 and mAP, ignoring gallery images of the query's identity in the query's camera (AIC/Market)."""
    rank1, aps = [], []
    for i in range(len(q_ids)):
        valid = ~((g_ids == q_ids[i]) & (g_cams == q_cams[i]))
        d = dist[i, valid] + rng.random(int(valid.sum())) * 1e-9  # random tie-breaking
        match = (g_ids[valid] == q_ids[i])[np.argsort(d, kind="stable")]
        if not match.any():
            continue
        rank1.append(float(match[0]))
        hits = np.cumsum(match)
        aps.append(float(np.mean(hits[match] / (np.flatnonzero(match) + 1))))
    return float(np.mean(rank1)), float(np.mean(aps))


def colour_baseline(options: SynthOptions, out: Path) -> None:
    start = time.perf_counter()
    counts = generate_city(out, options)
    print(f"generated city ({counts}) in {time.perf_counter() - start:.1f} s")
    root = out / "AIC21_Track2_ReID"
    query, gallery = read_items(root / "vreid_query_label.xml"), read_items(root / "vreid_test_label.xml")
    q_ids = np.array([int(r["vehicleID"]) for r in query])
    g_ids = np.array([int(r["vehicleID"]) for r in gallery])
    q_cams = np.array([r["cameraID"] for r in query])
    g_cams = np.array([r["cameraID"] for r in gallery])
    rng = np.random.default_rng(0)
    print(f"query {len(query)} images, gallery {len(gallery)} images, {len(set(g_ids))} test identities")

    for centre in (False, True):
        qf = np.stack([colour_histogram(root / "image_query" / r["imageName"], centre=centre) for r in query])
        gf = np.stack([colour_histogram(root / "image_test" / r["imageName"], centre=centre) for r in gallery])
        dist = np.linalg.norm(qf[:, None, :] - gf[None, :, :], axis=2)
        r1, m = evaluate(dist, q_ids, q_cams, g_ids, g_cams, rng)
        print(f"colour histogram 4x4x4 ({'centre crop' if centre else 'whole crop'}): "
              f"rank-1 {r1:.1%}  mAP {m:.1%}")

    def attrs(vid: int) -> tuple[int, int]:
        a = identity_attributes(options.seed, vid - 1, options.group_size, "real")
        return a.type_id, a.color_id

    for name, key in (("colour label", lambda v: attrs(v)[1]), ("type+colour labels", attrs)):
        qk = [key(int(v)) for v in q_ids]
        gk = [key(int(v)) for v in g_ids]
        dist = np.array([[0.0 if a == b else 1.0 for b in gk] for a in qk])
        r1, m = evaluate(dist, q_ids, q_cams, g_ids, g_cams, rng)
        print(f"oracle ranking by exact {name} (random ties): rank-1 {r1:.1%}  mAP {m:.1%}")
    r1, m = evaluate(rng.random((len(q_ids), len(g_ids))), q_ids, q_cams, g_ids, g_cams, rng)
    print(f"chance (random ranking): rank-1 {r1:.1%}  mAP {m:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=200, help="real-like identities (half of them test)")
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(pin_to_one_core())
    options = SynthOptions(num_ids=args.ids, num_cameras=args.cameras, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        speed(options, Path(tmp) / "speed")
        colour_baseline(options, Path(tmp) / "city")


if __name__ == "__main__":
    main()
