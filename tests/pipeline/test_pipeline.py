"""`vreid pipeline run`: the pipeline file's checks, and a whole run of tiny models on a tiny city
(stages, the metrics table against direct computations, skipping, resuming, refusing stale results)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from vreid.cli import main
from vreid.data.synth import SynthOptions, generate_city
from vreid.errors import ConfigError
from vreid.pipeline import DONE, Pipeline, StageFailed, load_pipeline, train_command
from vreid.retrieval import evaluate, pairwise_distance
from vreid.retrieval.submission import check_track2

REPO = Path(__file__).resolve().parents[2]
TINY = ["INPUT.SIZE_TRAIN", "(32, 32)", "INPUT.SIZE_TEST", "(32, 32)", "INPUT.PADDING", "2",
        "MODEL.BACKBONE", "resnet18", "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "2",
        "SOLVER.MAX_EPOCHS", "1", "SOLVER.AMP", "off", "DATALOADER.NUM_WORKERS", "0", "TEST.RANKLIST_QUERIES", "0",
        "TEST.RERANK.ENABLED", "True", "TEST.RERANK.K1", "6", "TEST.RERANK.K2", "3", "TEST.TRACK_RERANK", "True"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def pipeline_file(tmp: Path, city: Path, extra_opts: tuple[str, ...] = ()) -> Path:
    opts = json.dumps(["DATASETS.ROOT_DIR", str(city), *TINY, *extra_opts])
    return write(tmp / "pipeline.yml", f"""
run_dir: {tmp / "run"}
opts: {opts}
members:
  mix: {{config: {REPO}/configs/demo/city.yml, opts: [DATALOADER.SAMPLER, pk_domain, MODEL.MIXSTYLE.ENABLED, True,
                                                  MODEL.MIXSTYLE.MIX, domain]}}
  plain: {{config: {REPO}/configs/demo/city.yml, opts: [SEED, 1, DATASETS.TRAIN, "('aic21',)"]}}
orientation: {{config: {REPO}/configs/demo/orientation.yml}}
camera: {{config: {REPO}/configs/demo/camera.yml, opts: [SOLVER.IMS_PER_BATCH, 4]}}  # 3 cameras: P = 2
""")


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("city")
    generate_city(out, SynthOptions(num_ids=8, num_sim_ids=8, num_cameras=3, seed=2, min_frames=2, max_frames=3))
    return out


def test_pipeline_file_errors_name_the_file_and_key(tmp_path, city):
    good = pipeline_file(tmp_path, city)
    text = good.read_text()
    cases = {
        "colour: red\n": "unknown key 'colour'",
        "nproc_per_node: 0\n": "nproc_per_node must be an integer >= 1",
        "ensemble: {normalize: max}\n": "ensemble.normalize must be one of",
        "masks: {prob: 0.5}\n": "exactly one of weights",
    }
    for addition, message in cases.items():
        bad = write(tmp_path / "bad.yml", text + addition)
        with pytest.raises(ConfigError, match=message) as exc:
            load_pipeline(bad)
        assert str(bad) in str(exc.value)
    bad = write(tmp_path / "bad.yml", text.replace("configs/demo/camera.yml", "configs/demo/nope.yml"))
    with pytest.raises(ConfigError, match="camera: config file .*nope.yml not found"):
        load_pipeline(bad)
    bad = write(tmp_path / "bad.yml", text.replace("SEED, 1,", "SEED,"))
    with pytest.raises(ConfigError, match="members.plain.opts: opts must be a list of KEY, VALUE pairs"):
        load_pipeline(bad)
    # a bad config key fails before any stage runs, naming the stage
    bad = write(tmp_path / "bad.yml", text.replace("SEED, 1,", "SOLVER.NOPE, 1,"))
    with pytest.raises(ConfigError, match="stage train_plain .*SOLVER.NOPE"):
        Pipeline(load_pipeline(bad))
    assert not (tmp_path / "run").exists()
    assert main(["pipeline", "run", str(bad)]) == 2
    # a bad value (checked by its builder, not by reading the config) fails up front too, also with --dry-run
    bad = write(tmp_path / "bad.yml", text.replace("SEED, 1,", "MODEL.POOLING, sum,"))
    with pytest.raises(ConfigError, match="stage train_plain .*MODEL.POOLING: 'sum' is not one of"):
        Pipeline(load_pipeline(bad))
    assert main(["pipeline", "run", str(bad), "--dry-run"]) == 2
    bad = write(tmp_path / "bad.yml", text + "translate: {opts: [UNIT.AMP, half]}\n")
    with pytest.raises(ConfigError, match="stage translate: UNIT.AMP: 'half' must be one of"):
        Pipeline(load_pipeline(bad))
    assert not (tmp_path / "run").exists()


def test_training_stages_launch_torchrun_with_n_processes():
    one = train_command(Path("m.yml"), ["A", "1"], resume=False, nproc_per_node=1, python="py")
    assert one == ["py", "-m", "vreid.cli", "train", "--config-file", "m.yml", "A", "1"]
    four = train_command(Path("m.yml"), ["A", "1"], resume=True, nproc_per_node=4, python="py")
    assert four == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "vreid.cli",
                    "train", "--resume", "--config-file", "m.yml", "A", "1"]


def test_runner_skips_finished_reruns_changed_and_names_the_failing_stage(tmp_path, city, caplog):
    """The stage machinery alone (stand-in stages, no training): skip, rerun, refuse, name the failure."""
    from vreid.pipeline.run import Stage

    caplog.set_level(logging.INFO)
    pipeline = Pipeline(load_pipeline(pipeline_file(tmp_path, city)))
    calls: list[str] = []
    settings = {"a": "1", "b": "1"}

    def action(name, fail=False):
        def run(folder: Path):
            calls.append(name)
            assert folder == tmp_path / "run" / name and folder.is_dir()
            if fail:
                raise ValueError("the input is bad")
            return {"name": name}
        return run

    def stages(fail_b=False):
        return [Stage("a", action("a"), lambda: settings["a"], precious=True),
                Stage("b", action("b", fail_b), lambda: settings["b"])]

    pipeline.stages = stages(fail_b=True)
    with pytest.raises(StageFailed, match="^stage b: the input is bad$"):
        pipeline.run()
    assert calls == ["a", "b"] and (tmp_path / "run" / "a" / DONE).is_file()
    assert not (tmp_path / "run" / "b" / DONE).exists()
    pipeline.stages = stages()
    assert pipeline.run() == {"name": "b"} and calls == ["a", "b", "b"]  # a skipped, b finished now
    assert json.loads((tmp_path / "run" / "b" / DONE).read_text())["fingerprint"] == "1"
    assert pipeline.run() == {"name": "b"} and calls == ["a", "b", "b"]  # nothing to do
    assert [state for _, state in pipeline.status()] == ["done", "done"]
    settings["b"] = "2"  # a cheap stage whose settings changed runs again
    assert [state for _, state in pipeline.status()] == ["done", "changed"]
    pipeline.run()
    assert calls == ["a", "b", "b", "b"] and "running it again" in caplog.text
    settings["a"] = "2"  # a precious one refuses and names its folder
    with pytest.raises(StageFailed, match=f"stage a: finished earlier with other settings.*delete {tmp_path}"):
        pipeline.run()
    assert calls == ["a", "b", "b", "b"]


@pytest.mark.slow
def test_whole_pipeline_on_a_tiny_city_then_skip_resume_and_refuse_stale(tmp_path, city, caplog):
    caplog.set_level(logging.INFO)
    spec = load_pipeline(pipeline_file(tmp_path, city))
    pipeline = Pipeline(spec)
    names = [s.name for s in pipeline.stages]
    assert names == ["train_mix", "train_plain", "train_orientation", "train_camera", "extract_mix", "extract_plain",
                     "extract_orientation", "extract_camera", "post_mix", "post_plain", "ensemble", "final"]
    summary = pipeline.run()
    run = tmp_path / "run"
    assert all((run / n / DONE).is_file() for n in names)

    # the table: every member after each step, then the ensemble
    rows = json.loads((run / "final" / "metrics.json").read_text())
    assert [(r["model"], r["step"]) for r in rows] == [
        (m, s) for m in ("mix", "plain") for s in ("single model", "+ re-ranking", "+ orientation/camera fusion",
                                                   "+ track re-ranking")] + [("ensemble", "+ ensemble")]
    assert summary["rows"] == rows and "| ensemble | + ensemble |" in (run / "final" / "metrics.md").read_text()
    # single model: the plain distance of the extracted features, evaluated directly
    from vreid.features import load_pair

    q, g = load_pair(run / "extract_mix")
    direct = evaluate(pairwise_distance(q.features, g.features), q.vehicle_ids, g.vehicle_ids, q.camera_ids,
                      g.camera_ids)
    assert rows[0]["mAP"] == pytest.approx(float(direct["mAP"]))
    # orientation/camera features describe the same images in the same order as the members'
    for aux in ("orientation", "camera"):
        qa, ga = load_pair(run / f"extract_{aux}")
        assert list(qa.paths) == list(q.paths) and list(ga.paths) == list(g.paths)
    # the ensemble is the mean of the members' final (fused) distances
    mats = [np.load(run / f"post_{m}" / "distance.npy") for m in ("mix", "plain")]
    assert np.allclose(np.load(run / "ensemble" / "distance.npy"), (mats[0] + mats[1]) / 2, atol=1e-6)
    assert np.allclose(mats[0], np.load(run / "post_mix" / "distance_orientation.npy"))
    # track2.txt: one line per query, top-k gallery ids, valid
    lines = (run / "final" / "track2.txt").read_text().splitlines()
    assert len(lines) == len(q)
    assert check_track2(run / "final" / "track2.txt", len(q), 10**6, summary["top_k"]) == []

    # again: every stage is skipped
    caplog.clear()
    before = {n: (run / n / DONE).stat().st_mtime_ns for n in names}
    Pipeline(load_pipeline(spec.path)).run()
    assert caplog.text.count("done earlier, skipped") == len(names)
    assert before == {n: (run / n / DONE).stat().st_mtime_ns for n in names}

    # an interrupted training (checkpoint, no weights, no marker) resumes; the later stages it feeds run again
    (run / "train_plain" / DONE).unlink()
    (run / "train_plain" / "model_final.pth").unlink()
    for n in ("extract_plain", "post_plain", "ensemble", "final"):
        (run / n / DONE).unlink()
    caplog.clear()
    Pipeline(load_pipeline(spec.path)).run()
    assert "resumed from" in (run / "train_plain" / "log.txt").read_text()
    assert (run / "train_plain" / "model_final.pth").is_file()
    assert caplog.text.count("done earlier, skipped") == len(names) - 5
    assert json.loads((run / "final" / "metrics.json").read_text())[4:8] == rows[4:8]  # the same weights again

    # a changed test setting: extraction and after run again, training is kept
    caplog.clear()
    changed = pipeline_file(tmp_path, city, ("TEST.RERANK.LAMBDA", "0.5"))
    Pipeline(load_pipeline(changed)).run()
    assert caplog.text.count("done earlier, skipped") == 4  # the four trainings
    assert caplog.text.count("running it again") == len(names) - 4
    # a changed training setting: the finished training refuses to be reused or overwritten (exit 2)
    changed = pipeline_file(tmp_path, city, ("SOLVER.BASE_LR", "0.002"))
    with pytest.raises(StageFailed, match="stage train_mix: finished earlier with other settings") as exc:
        Pipeline(load_pipeline(changed)).run()
    assert f"delete {run / 'train_mix'}" in str(exc.value)
    assert main(["pipeline", "run", str(changed)]) == 2


@pytest.mark.parametrize("name", ["aic21/pipeline.yml", "aic21/pipeline_submission.yml", "demo/pipeline.yml"])
def test_shipped_pipeline_files_resolve(name):
    """Every stage's config of the shipped pipelines loads; the paper's has every stage."""
    pipeline = Pipeline(load_pipeline(REPO / "configs" / name))
    stages = [s.name for s in pipeline.stages]
    assert stages[-2:] == ["ensemble", "final"] and "translate" in stages
    assert [s for s in stages if s.startswith("train_")][-2:] == ["train_orientation", "train_camera"]
    for member in pipeline.spec.members:
        train = pipeline.train_cfgs[member.name]
        assert train.DATASETS.SYNTHETIC_IMAGES.endswith("translate/images")
        assert pipeline.extract_cfgs[member.name].TEST.WEIGHT.endswith(f"train_{member.name}/model_final.pth")
    aux = pipeline.extract_cfgs["orientation"]
    first = pipeline.extract_cfgs[pipeline.spec.members[0].name]
    assert aux.DATASETS.LOCAL_SPLIT.NUM_IDS == first.DATASETS.LOCAL_SPLIT.NUM_IDS  # the members' query/gallery
    assert not aux.TEST.FLIP and not pipeline.train_cfgs["orientation"].DATASETS.SYNTHETIC_IMAGES
    if name.startswith("aic21"):
        assert "masks" in stages and len(pipeline.spec.members) == 3
        assert all(pipeline.train_cfgs[m.name].INPUT.BACKGROUND_SWAP.PROB == 0.6 for m in pipeline.spec.members)
        split = 80 if name == "aic21/pipeline.yml" else 0
        assert first.DATASETS.LOCAL_SPLIT.NUM_IDS == split


def test_masks_stage_feeds_the_members_background_swap(tmp_path, city):
    """masks: the real training images' masks in run/masks; the members swap with them, aux models do not."""
    from PIL import Image

    from vreid.data.loader import build_background_swap, prepare_training_data

    real = sorted((city / "AIC21_Track2_ReID" / "image_train").glob("*.jpg"))[:6]
    folder = tmp_path / "user_masks"
    for path in real:  # a vehicle in the middle of each of six images
        with Image.open(path) as img:
            w, h = img.size
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
        target = folder / path.relative_to(city).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(target)
    file = pipeline_file(tmp_path, city)
    write(file, file.read_text() + f"masks: {{mask_folder: {folder}, prob: 0.5}}\n")
    pipeline = Pipeline(load_pipeline(file))
    assert [s.name for s in pipeline.stages][0] == "masks"
    pipeline.stages = pipeline.stages[:1]
    summary = pipeline.run()
    index = json.loads((tmp_path / "run" / "masks" / "masks.json").read_text())
    assert summary["with_mask"] == 6 and summary["images"] == len(list(city.glob("AIC21_Track2_ReID/image_train/*")))
    assert sum(v is not None for v in index.values()) == 6
    member = pipeline.train_cfgs["mix"]
    assert member.INPUT.BACKGROUND_SWAP.PROB == 0.5
    swap = build_background_swap(member, prepare_training_data(member))
    assert swap is not None and swap.num_backgrounds == 6
    assert pipeline.train_cfgs["camera"].INPUT.BACKGROUND_SWAP.PROB == 0.0


def test_ensemble_on_a_dataset_without_tracks_or_submission(tmp_path):
    """`submission: false` on a vehicle-2cam-style test (one true match per query, no tracks): no track2.txt, no
    track row, and the ensemble row's full-ranking mAP is the mean of 1 / rank of each query's one match under the
    mean of the members' distances, counted by hand."""
    from vreid.features import FeatureSet
    from vreid.pipeline.run import STEP_ENSEMBLE, STEP_RERANK, STEP_SINGLE

    spec_file = write(tmp_path / "pipeline.yml", f"""
run_dir: {tmp_path / "run"}
opts: [DATASETS.ROOT_DIR, {tmp_path / "data"}, MODEL.PRETRAIN, False]
members:
  a: {{config: {REPO}/configs/vehicle2cam/mobilenetv2.yml}}
  b: {{config: {REPO}/configs/vehicle2cam/mobilenetv2.yml, opts: [SEED, 1]}}
submission: false
""")
    spec = load_pipeline(spec_file)
    assert spec.top_k is None
    pipeline = Pipeline(spec)
    rng = np.random.default_rng(0)
    n, dim = 12, 16
    ids = np.array([f"car_{i:04d}" for i in range(n)])
    centres = rng.normal(size=(n, dim))
    members = {}
    for name in ("a", "b"):  # each member sees the vehicles through its own noise; extraction writes unit vectors
        q, g = (centres + rng.normal(scale=1.6, size=(n, dim)) for _ in range(2))
        q, g = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
        folder = tmp_path / "run" / f"extract_{name}"
        folder.mkdir(parents=True)
        blank = np.array([""] * n)
        FeatureSet(q.astype(np.float32), ids, np.array(["1"] * n), blank, np.array([f"q/{i}_cam1.jpg" for i in ids])
                   ).save(folder / "query.npz")
        FeatureSet(g.astype(np.float32), ids, np.array(["2"] * n), blank, np.array([f"g/{i}_cam2.jpg" for i in ids])
                   ).save(folder / "gallery.npz")
        members[name] = (q, g)
    for stage in pipeline.stages:
        if stage.name.startswith(("post_", "ensemble", "final")):
            (tmp_path / "run" / stage.name).mkdir(parents=True, exist_ok=True)
            summary = stage.action(tmp_path / "run" / stage.name)
    assert not (tmp_path / "run" / "final" / "track2.txt").exists() and "track2" not in summary
    rows = json.loads((tmp_path / "run" / "final" / "metrics.json").read_text())
    assert [(r["model"], r["step"]) for r in rows] == [
        ("a", STEP_SINGLE), ("a", STEP_RERANK), ("b", STEP_SINGLE), ("b", STEP_RERANK), ("ensemble", STEP_ENSEMBLE)]
    # by hand: mobilenetv2.yml standardises each camera's features (TEST.CAMERA_NORM; query = camera 1, gallery =
    # camera 2, 12 images each), then euclidean distance of unit vectors, averaged over the members; AP of one
    # match = 1 / its rank
    def standardised(x):
        x = x.astype(np.float32).astype(np.float64)
        z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    members = {name: (standardised(q), standardised(g)) for name, (q, g) in members.items()}
    dist = sum(np.sqrt(np.maximum(((qn[:, None] - gn[None]) ** 2).sum(-1), 0)) for qn, gn in members.values()) / 2
    ranks = [1 + int((dist[i] < dist[i, i]).sum()) for i in range(n)]
    assert rows[-1]["mAP"] == pytest.approx(np.mean([1 / r for r in ranks]), abs=1e-6)
    assert rows[-1]["rank1"] == pytest.approx(np.mean([r == 1 for r in ranks]))
    assert 0.2 < rows[-1]["mAP"] < 1.0  # the noise makes it a real ranking, not a trivial one
    # the single-model rows agree with the same hand count for member a alone
    qa, ga = members["a"]
    da = np.sqrt(np.maximum(((qa[:, None] - ga[None]) ** 2).sum(-1), 0))
    assert rows[0]["mAP"] == pytest.approx(np.mean([1 / (1 + int((da[i] < da[i, i]).sum())) for i in range(n)]),
                                           abs=1e-6)


def test_submission_false_and_bad_top_k(tmp_path, city):
    text = pipeline_file(tmp_path, city).read_text()
    assert load_pipeline(write(tmp_path / "p.yml", text)).top_k == 100  # absent: the AI City submission
    for value, message in (("{top_k: 0}", "submission.top_k must be an integer >= 1"),
                           ("{top_k: true}", "submission.top_k must be an integer >= 1"),
                           ("{k: 3}", "unknown key 'k'")):
        with pytest.raises(ConfigError, match=message):
            load_pipeline(write(tmp_path / "p.yml", text + f"submission: {value}\n"))


def test_command_line_overrides_and_run_dir(tmp_path, city):
    """`vreid pipeline run P.yml --run-dir R KEY VALUE`: the pairs win over the file's and the models' own opts,
    for every model; an odd count is bad input (exit 2) naming the command line."""
    path = pipeline_file(tmp_path, city)
    spec = load_pipeline(path, ["SEED", "7", "SOLVER.MAX_EPOCHS", "3"], tmp_path / "elsewhere")
    pipeline = Pipeline(spec)
    assert pipeline.run_dir == tmp_path / "elsewhere"
    for name, cfg in pipeline.train_cfgs.items():  # member `plain` says SEED 1 in the file: the command line wins
        assert (cfg.SEED, cfg.SOLVER.MAX_EPOCHS) == (7, 3), name
        assert cfg.OUTPUT_DIR == str((tmp_path / "elsewhere" / f"train_{name}").resolve())
    assert Pipeline(load_pipeline(path)).train_cfgs["plain"].SEED == 1
    with pytest.raises(ConfigError, match="command line: opts must be a list of KEY, VALUE pairs"):
        load_pipeline(path, ["SEED"])
    assert main(["pipeline", "run", "--dry-run", str(path), "SEED"]) == 2
    assert main(["pipeline", "run", "--dry-run", "--run-dir", str(tmp_path / "r2"), str(path), "SEED", "3"]) == 0
    assert not (tmp_path / "r2").exists()  # a dry run writes nothing
    assert main(["pipeline", "run", str(path), "--dry-run"]) == 2  # options after the file: said, not guessed


def test_vehicle2cam_ensemble_file_resolves():
    """configs/vehicle2cam/pipeline_ensemble.yml: two members of the shipped recipe that differ only in their seed."""
    spec = load_pipeline(REPO / "configs" / "vehicle2cam" / "pipeline_ensemble.yml", ["DATASETS.ROOT_DIR", "/data"])
    pipeline = Pipeline(spec)
    assert spec.top_k is None and [s.name for s in pipeline.stages][-2:] == ["ensemble", "final"]
    a, b = (pipeline.train_cfgs[m.name] for m in spec.members)
    assert (a.SEED, b.SEED) == (0, 1) and a.DATASETS.ROOT_DIR == b.DATASETS.ROOT_DIR == "/data"
    a.defrost(), b.defrost()
    a.SEED = b.SEED = 0
    a.OUTPUT_DIR = b.OUTPUT_DIR = ""
    assert a.dump() == b.dump()
