"""Write the synthetic city in the AIC21 Track 2 on-disk layouts (real-like part and VehicleX-like part).

Layout written under ``OUT``::

    AIC21_Track2_ReID/              image_{train,query,test}/NNNNNN.jpg, name_*.txt, train_label.xml,
                                    {query,test}_label.xml (no vehicleID, as released), vreid_{query,test}_label.xml
                                    (with vehicleID, for evaluation), {train,test}_track.txt
    AIC21_Track2_ReID_Simulation/   sys_image_train/{vid:05d}_c{cam:03d}_{n}.jpg (n: 0-based running index of
                                    that identity's images), train_label.xml with VehicleX attributes

Planning (which vehicle, camera and frame goes to which file) is cheap and done up front in this process;
rendering is a pure function of one job, so it can be spread over worker processes without changing a byte.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vreid.data.formats.aic21 import EVAL_LABEL_FILES, REAL_FOLDER, SYNTHETIC_FOLDER
from vreid.data.records import GALLERY, QUERY
from vreid.data.synth.options import SynthOptions
from vreid.data.synth.scene import Camera, Tracklet, encode_jpeg, make_camera, make_tracklet, render_frame
from vreid.data.synth.seeding import make_rng
from vreid.data.synth.vehicles import identity_attributes

log = logging.getLogger(__name__)

# The layout's names are facts of the format: the reader owns them.
REAL_DIR, SIM_DIR = REAL_FOLDER, SYNTHETIC_FOLDER


@dataclass(frozen=True)
class RenderJob:
    """One image to render: everything a worker needs, nothing it has to look up elsewhere."""

    seed: int
    group_size: int
    track: Tracklet
    frame: int
    path: str = ""


@dataclass(frozen=True)
class RealPlan:
    """The real-like part: tracklets per split (in file order) and the query frames."""

    train: tuple[Tracklet, ...]
    gallery: tuple[Tracklet, ...]
    queries: tuple[tuple[Tracklet, int], ...]      # (tracklet, frame index one past its last frame)


def identity_cameras(seed: int, style: str, vehicle: int, num_cameras: int, at_least: int) -> list[int]:
    """The cameras (1-based, sorted) that see ``vehicle``: a random subset of size >= ``at_least``."""
    rng = make_rng(seed, style, "cameras", vehicle)
    k = int(rng.integers(at_least, num_cameras + 1))
    return sorted(int(c) + 1 for c in rng.choice(num_cameras, size=k, replace=False))


def vehicle_tracklets(options: SynthOptions, style: str, vehicle: int, at_least: int = 2) -> list[Tracklet]:
    """All sightings of one identity, one tracklet per camera that sees it, by camera."""
    cams = identity_cameras(options.seed, style, vehicle, options.num_cameras, at_least)
    return [make_tracklet(options.seed, make_camera(options.seed, c, style), vehicle, options.min_frames,
                          options.max_frames) for c in cams]


def real_tracklets(options: SynthOptions, vehicle: int) -> list[Tracklet]:
    """Sightings of a real-like identity; test identities get enough cameras for distinct-camera queries."""
    is_test = vehicle >= options.num_train_ids
    return vehicle_tracklets(options, "real", vehicle, at_least=max(2, options.queries_per_id) if is_test else 2)


def plan_real(options: SynthOptions) -> RealPlan:
    """Split identities (train first), pick the query sightings, and fix the file order of every split."""
    n_train = options.num_train_ids
    q = options.queries_per_id
    train: list[Tracklet] = []
    gallery: list[Tracklet] = []
    queries: list[tuple[Tracklet, int]] = []
    for v in range(options.num_ids):
        tracks = real_tracklets(options, v)
        if v < n_train:
            train += tracks
            continue
        gallery += tracks
        pick = make_rng(options.seed, "real", "queries", v).choice(len(tracks), size=q, replace=False)
        queries += [(tracks[int(i)], tracks[int(i)].n_frames) for i in sorted(pick)]
    # Like the real release, files are not ordered by identity; a tracklet's frames stay together.
    def shuffled(items: Sequence, key: str) -> tuple:
        order = make_rng(options.seed, "real", "order", key).permutation(len(items))
        return tuple(items[int(i)] for i in order)
    return RealPlan(shuffled(train, "train"), shuffled(gallery, "gallery"), shuffled(queries, "query"))


def plan_sim(options: SynthOptions) -> list[Tracklet]:
    """The sim-like part: every identity's tracklets, by identity then camera."""
    out: list[Tracklet] = []
    for v in range(options.sim_ids):
        out += vehicle_tracklets(options, "sim", v)
    return out


def render_job(job: RenderJob) -> tuple[bytes, dict[str, str]]:
    """JPEG bytes and label attributes of one job (pure: same job, same bytes)."""
    track = job.track
    identity = identity_attributes(job.seed, track.vehicle, job.group_size, track.style)
    camera: Camera = make_camera(job.seed, track.camera, track.style)
    img, info = render_frame(identity, camera, track, job.frame)
    attrs = {
        "orientation": f"{info.orientation:.1f}",
        "lightInt": f"{info.light_intensity:.3f}",
        "lightDir": f"{info.light_direction:.1f}",
        "camHei": f"{info.camera_height:.2f}",
        "camDis": f"{info.camera_distance:.2f}",
    }
    return encode_jpeg(img, camera.jpeg_quality), attrs


def _render_to_file(job: RenderJob) -> dict[str, str]:
    data, attrs = render_job(job)
    Path(job.path).write_bytes(data)
    return attrs


def run_jobs(jobs: Sequence[RenderJob], workers: int = 1) -> list[dict[str, str]]:
    """Render and write every job; label attributes come back in job order."""
    if workers <= 1 or len(jobs) < 2 * workers:
        return [_render_to_file(j) for j in jobs]
    # spawn, not fork: the parent may hold torch threads, which fork does not survive reliably.
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(64, len(jobs) // (workers * 8)))
    with ctx.Pool(workers) as pool:
        return list(pool.imap(_render_to_file, jobs, chunksize=chunk))


# --- Writers -------------------------------------------------------------------------------------------------

def _xml(path: Path, items: Iterable[dict[str, str]]) -> None:
    """A label file in the release format: gb2312 declaration (content is ASCII), one <Item/> per line."""
    rows = [f"<Item {' '.join(f'{k}={chr(34)}{v}{chr(34)}' for k, v in item.items())} />" for item in items]
    text = "\n".join(['<?xml version="1.0" encoding="gb2312"?>', '<TrainingImages Version="1.0">',
                      f'<Items number="{len(rows)}">', *rows, "</Items>", "</TrainingImages>"]) + "\n"
    path.write_bytes(text.encode("ascii"))


def _lines(path: Path, lines: Iterable[str]) -> None:
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("ascii"))


def _frames(tracks: Iterable[Tracklet]) -> Iterator[tuple[Tracklet, int]]:
    for t in tracks:
        for f in range(t.n_frames):
            yield t, f


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def generate_city(out: Path, options: SynthOptions, *, overwrite: bool = False) -> dict[str, int]:
    """Render the city into ``out``; return image counts {"train", "query", "gallery", "synthetic"}.

    Refuses (ValueError) to write over an existing dataset in ``out`` unless ``overwrite`` is true, in which
    case the two dataset folders (and nothing else in ``out``) are replaced.
    """
    options.check()
    out = Path(out)
    real_root, sim_root = out / REAL_DIR, out / SIM_DIR
    for folder in (real_root, sim_root):
        if _has_files(folder):
            if not overwrite:
                raise ValueError(f"{folder} already contains files; pass overwrite=True "
                                 "(vreid synth --overwrite) to replace it")
            shutil.rmtree(folder)
    start = time.perf_counter()
    seed, gs = options.seed, options.group_size
    plan = plan_real(options)
    dirs = {split: real_root / f"image_{split}" for split in ("train", "query", "test")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    jobs: list[RenderJob] = []
    split_items: dict[str, list[tuple[str, Tracklet]]] = {"train": [], "query": [], "test": []}
    track_lines: dict[str, list[str]] = {"train": [], "test": []}
    for split, tracks in (("train", plan.train), ("test", plan.gallery)):
        n = 0
        for t in tracks:
            names = []
            for f in range(t.n_frames):
                n += 1
                name = f"{n:06d}.jpg"
                names.append(name)
                split_items[split].append((name, t))
                jobs.append(RenderJob(seed, gs, t, f, str(dirs[split] / name)))
            track_lines[split].append(" ".join(names))
    for k, (t, f) in enumerate(plan.queries, start=1):
        name = f"{k:06d}.jpg"
        split_items["query"].append((name, t))
        jobs.append(RenderJob(seed, gs, t, f, str(dirs["query"] / name)))

    sim_tracks = plan_sim(options)
    sim_names: list[tuple[str, Tracklet]] = []
    if sim_tracks:
        (sim_root / "sys_image_train").mkdir(parents=True, exist_ok=True)
        running: dict[int, int] = {}
        for t, f in _frames(sim_tracks):
            n = running.get(t.vehicle, 0)
            running[t.vehicle] = n + 1
            name = f"{t.vehicle + 1:05d}_c{t.camera:03d}_{n}.jpg"
            sim_names.append((name, t))
            jobs.append(RenderJob(seed, gs, t, f, str(sim_root / "sys_image_train" / name)))

    log.info("rendering %d images with %d worker(s)", len(jobs), options.workers)
    attrs = run_jobs(jobs, options.workers)

    def vid(t: Tracklet) -> str:
        return f"{t.vehicle + 1:04d}"

    def cam(t: Tracklet) -> str:
        return f"c{t.camera:03d}"

    for split, items in split_items.items():
        _lines(real_root / f"name_{split}.txt", (name for name, _ in items))
    _xml(real_root / "train_label.xml",
         ({"imageName": n, "vehicleID": vid(t), "cameraID": cam(t)} for n, t in split_items["train"]))
    for split in ("query", "test"):
        _xml(real_root / f"{split}_label.xml",
             ({"imageName": n, "cameraID": cam(t)} for n, t in split_items[split]))
        _xml(real_root / EVAL_LABEL_FILES[QUERY if split == "query" else GALLERY],
             ({"imageName": n, "vehicleID": vid(t), "cameraID": cam(t)} for n, t in split_items[split]))
    for split, lines in track_lines.items():
        _lines(real_root / f"{split}_track.txt", lines)

    if sim_tracks:
        sim_attrs = attrs[len(jobs) - len(sim_names):]
        items = []
        for (name, t), a in zip(sim_names, sim_attrs, strict=True):
            ident = identity_attributes(seed, t.vehicle, gs, "sim")
            items.append({"imageName": name, "vehicleID": f"{t.vehicle + 1:05d}", "cameraID": cam(t),
                          "colorID": str(ident.color_id), "typeID": str(ident.type_id), **a,
                          **ident.details()})
        _xml(sim_root / "train_label.xml", items)

    counts = {"train": len(split_items["train"]), "query": len(split_items["query"]),
              "gallery": len(split_items["test"]), "synthetic": len(sim_names)}
    elapsed = time.perf_counter() - start
    log.info("synthetic city in %s: %s (%.1f s, %.0f images/min)", out, counts, elapsed,
             len(jobs) / max(elapsed, 1e-9) * 60)
    return counts
