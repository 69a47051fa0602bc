"""The ``vreid`` command: parses arguments, builds what the subcommand needs, calls it.

No logic of its own lives here. Bad input raises :class:`vreid.errors.VreidError` (or ValueError
for a bad option value) somewhere below; ``main`` logs its message and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vreid import __version__
from vreid.errors import VreidError
from vreid.fileio import atomic_save_npy, atomic_write_text, display_text

log = logging.getLogger("vreid")

EXIT_BAD_INPUT = 2


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config-file", metavar="F", required=required, help="YAML config (may use _BASE_)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. DATASETS.ROOT_DIR /data OUTPUT_DIR out")


def _add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("torch", "onnxruntime"), help="sets TEST.BACKEND (default: auto, "
                   "onnxruntime for an .onnx TEST.WEIGHT)")


def _add_retrieval_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where re-ranking, evaluation and search run "
                   "(sets TEST.RETRIEVAL_DEVICE; default auto: CUDA when available, else numpy on the CPU)")


def _given(args: argparse.Namespace, **names: str) -> dict:
    """The options the user gave, as ``{library_name: value}``; the others are left to the library's defaults, so a
    default is written once, beside the code that uses it (``names`` maps library names to argparse dests)."""
    return {lib: getattr(args, dest) for lib, dest in names.items() if getattr(args, dest) is not None}


def _config(args: argparse.Namespace):
    """The config of a command; its ``--backend`` and ``--device`` options, where it has them, are the overrides
    ``TEST.BACKEND`` and ``TEST.RETRIEVAL_DEVICE``."""
    from vreid.config import load_config

    backend, device = getattr(args, "backend", None), getattr(args, "device", None)
    return load_config(args.config_file, [*args.opts, *(["TEST.BACKEND", backend] if backend else []),
                                          *(["TEST.RETRIEVAL_DEVICE", device] if device else [])])


def cmd_data_summary(args: argparse.Namespace) -> int:
    from vreid.data.formats import load_dataset
    from vreid.data.loader import check_data_config
    from vreid.data.records import summarize

    cfg = _config(args)
    check_data_config(cfg)
    name = args.dataset or cfg.DATASETS.TEST
    root = args.root or cfg.DATASETS.ROOT_DIR
    dataset = load_dataset(
        name, root,
        test_split=args.test_split if args.test_split is not None else cfg.DATASETS.TEST_SPLIT,
        seed=cfg.DATASETS.SPLIT_SEED,
        folder_pattern=cfg.DATASETS.FOLDER_PATTERN,
        local_split_ids=cfg.DATASETS.LOCAL_SPLIT.NUM_IDS,
        local_split_queries=cfg.DATASETS.LOCAL_SPLIT.QUERIES_PER_ID,
    )
    stats = summarize(dataset)
    if args.verify_images:
        from vreid.data.images import find_unreadable

        paths = sorted({r.path for records in dataset.splits.values() for r in records})
        bad = find_unreadable(paths)
        for _, reason in bad:
            log.error("%s", reason)
        if bad:
            raise VreidError(f"{len(bad)} of {len(paths)} images cannot be decoded (listed above)")
        log.info("all %d images decode", len(paths))
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"{dataset.name} at {dataset.root}")
    print(f"{'split':<10}{'images':>9}{'ids':>8}{'cameras':>9}{'tracks':>8}")
    for split, s in stats.items():
        ids = "-" if s["ids"] is None else s["ids"]
        print(f"{split:<10}{s['images']:>9}{ids:>8}{s['cameras']:>9}{s['tracks']:>8}")
    for key in ("lists_present", "files_present"):
        if key in dataset.meta:
            present = [k for k, v in dataset.meta[key].items() if v]
            absent = [k for k, v in dataset.meta[key].items() if not v]
            print(f"files present: {', '.join(present) or 'none'}; absent: {', '.join(absent) or 'none'}")
    if any(s["ids"] is None for s in stats.values()):
        print("ids '-': unlabelled split (evaluation refuses it; a submission accepts it)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from vreid.data.synth import SynthOptions, generate_city, write_contact_sheet

    options = SynthOptions(
        num_ids=args.ids, num_sim_ids=args.sim_ids, num_cameras=args.cameras, seed=args.seed,
        min_frames=args.min_frames, max_frames=args.max_frames, queries_per_id=args.queries_per_id,
        workers=args.workers,
    )
    out = Path(args.out)
    counts = generate_city(out, options, overwrite=args.overwrite)
    # the options beside the data, so the same city can be rendered again
    atomic_write_text(out / "synth_options.json",
                      json.dumps({"vreid": __version__, **dataclasses.asdict(options), "counts": counts}, indent=2))
    log.info("wrote %s: %s", out, ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.preview:
        sheet = write_contact_sheet(out / "preview.png", options)
        log.info("contact sheet: %s", sheet)
    return 0


def cmd_model_summary(args: argparse.Namespace) -> int:
    from vreid.models import build_model
    from vreid.models.summary import format_summary

    cfg = _config(args)
    model = build_model(cfg, args.num_classes)
    height, width = cfg.INPUT.SIZE_TEST
    print(f"{cfg.MODEL.BACKBONE} (head {cfg.MODEL.HEAD.NAME}, {args.num_classes} classes)")
    print(format_summary(model, height, width))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vreid.engine.trainer import train

    cfg = _config(args)
    train(cfg, resume=args.resume)
    if args.test:
        from vreid.engine.tester import run_test, test_config_of_run

        run_test(test_config_of_run(cfg))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from vreid.engine.tester import run_test

    run_test(_config(args))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from vreid.engine.tester import run_extract, run_extract_folder

    cfg = _config(args)
    if args.images:
        run_extract_folder(cfg, args.images)
    else:
        run_extract(cfg, tuple(args.splits.split(",")))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vreid.deploy.export import run_export

    result = run_export(_config(args), args.out, args.format, args.images,
                        **_given(args, count="parity_images", min_cosine="min_cosine"))
    print(f"exported {result['path']} ({result['bytes'] / 2**20:.1f} MB, input {result['size'][0]}x"
          f"{result['size'][1]}, dynamic batch, {result['feature_dim']}-d features)")
    print(f"parity with PyTorch on {result['images']} real images: min cosine {result['min_cosine']:.7f}, "
          f"mean {result['mean_cosine']:.7f}, max |diff| {result['max_abs_diff']:.2e} "
          f"(required >= {result['required_cosine']})")
    return 0


def cmd_rerank(args: argparse.Namespace) -> int:
    from vreid.engine.results import rerank_saved

    cfg = _config(args)
    log.info("re-ranked distance: %s", rerank_saved(cfg, args.features, args.out or cfg.OUTPUT_DIR))
    return 0


def _embedder(args: argparse.Namespace, gallery):
    """The model of a gallery (its stored config, or --config-file), checked to fit the gallery."""
    from vreid.deploy.gallery import check_model_fits, index_config
    from vreid.engine.inference import Embedder

    embedder = Embedder(index_config(gallery, args.config_file, args.opts))
    check_model_fits(gallery, embedder, args.index)
    return embedder


def cmd_index_build(args: argparse.Namespace) -> int:
    from vreid.deploy.gallery import build_index

    options = _given(args, kind="kind", engine="engine", nlist="nlist", nprobe="nprobe", hnsw_m="hnsw_m",
                     ef_search="ef_search")
    with build_index(args.features, args.out, overwrite=args.overwrite, camera_norm=args.camera_norm,
                     calibration=args.calibration, **options) as gallery:
        info = gallery.settings()
    print(f"{args.out}: {info['images']} images, {gallery.dim}-d, {info['kind']} search ({info['backend']})")
    return 0


def _attributes(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VreidError(f"--attributes: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise VreidError("--attributes: give a JSON object, e.g. '{\"colour\": \"red\"}'")
    return value


def cmd_index_add(args: argparse.Namespace) -> int:
    from vreid.data.formats.folder import image_records
    from vreid.deploy.gallery import add_features, add_images, open_gallery, parse_time

    captured_at, attributes = parse_time(args.captured_at, "--captured-at"), _attributes(args.attributes)
    with open_gallery(args.index) as gallery:
        if args.features:
            ids = add_features(gallery, args.features, captured_at, attributes)
        else:
            embedder = _embedder(args, gallery)
            ids = add_images(gallery, embedder, image_records(args.images, embedder.cfg.DATASETS.FOLDER_PATTERN),
                             captured_at, attributes)
        print(f"added {len(ids)} images (ids {ids[0]}..{ids[-1]}); the gallery holds {gallery.count()}")
    return 0


def cmd_index_remove(args: argparse.Namespace) -> int:
    from vreid.deploy.gallery import open_gallery, remove_sightings

    with open_gallery(args.index) as gallery:
        removed = remove_sightings(gallery, args.ids, args.paths)
        print(f"removed {removed} images; the gallery holds {gallery.count()}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from vreid.deploy.gallery import gallery_info, open_gallery

    with open_gallery(args.index) as gallery:
        print(json.dumps(gallery_info(gallery), indent=1))
    return 0


def cmd_index_migrate(args: argparse.Namespace) -> int:
    from vreid.deploy.store import migrate

    with migrate(args.old, args.new) as gallery:
        print(f"{args.old} -> {args.new}: {gallery.count()} images")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from vreid.deploy.gallery import open_gallery, search_features, search_files, search_filter
    from vreid.retrieval.device import retrieval_device

    where = search_filter(args.camera, args.track, args.time_from, args.time_to)
    with open_gallery(args.index) as gallery:
        if args.features:  # saved query features: no model; a given config still says where retrieval runs
            if args.query_camera:
                raise VreidError("--query-camera applies to --image queries: --features queries carry their cameras")
            given = args.config_file or args.opts
            device = retrieval_device(args.device or (_config(args).TEST.RETRIEVAL_DEVICE if given else "auto"))
            queries, results = search_features(gallery, args.features, args.top_k, where, device=device)
        else:
            embedder = _embedder(args, gallery)
            device = retrieval_device(args.device or embedder.cfg.TEST.RETRIEVAL_DEVICE)
            queries, results = args.image, search_files(gallery, embedder, args.image, args.top_k, where, device=device,
                                                        camera=args.query_camera)
    if args.json:
        print(json.dumps([{"query": q, "results": [h.to_dict() for h in hits]}
                          for q, hits in zip(queries, results, strict=True)], indent=1))
        return 0
    for query, hits in zip(queries, results, strict=True):
        print(f"query {query}")
        for h in hits:
            print(f"{h.rank:4d}  {h.score:.4f}  id {h.vehicle_id or '-':>8s}  cam {h.camera_id or '-':>5s}  "
                  f"{display_text(h.path)}")  # a file name that is not UTF-8 must not stop the table
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from vreid.deploy.gallery import open_gallery
    from vreid.deploy.service import Access, Limits, check_bind, create_app, default_hosts, read_token, serve

    limits = Limits(**_given(args, max_pixels="max_pixels", max_files="max_files",
                             max_request_pixels="max_request_pixels", max_concurrent="max_concurrent",
                             body_timeout_s="body_timeout", max_connections="max_connections"),
                    **({"max_bytes": int(args.max_upload_mb * 2**20)} if args.max_upload_mb is not None else {}))
    access = Access(token=read_token(args.token_file), protect_all=args.auth_all,
                    allowed_hosts=("*",) if "*" in args.allowed_host else default_hosts(args.host, args.allowed_host),
                    allowed_origins=tuple(args.allowed_origin))
    check_bind(args.host, access, args.insecure)  # before the model is loaded: fail fast
    if args.host in ("0.0.0.0", "::") and not args.allowed_host:
        log.warning("listening on all addresses, but only the Host names %s are served: add the names clients "
                    "use with --allowed-host", ", ".join(access.allowed_hosts))
    with open_gallery(args.index) as gallery:  # the model is checked against it here, before serving
        embedder = _embedder(args, gallery)
    serve(create_app(args.index, embedder, limits, read_only=args.read_only, access=access), args.host,
          args.port, limits)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vreid.viz.report import write_report

    path = write_report(args.results, args.out, worst=args.worst, top_k=args.top_k)
    log.info("evaluation report: %s", path)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from vreid.features import load_distance
    from vreid.retrieval.ensemble import ensemble_distances

    mats = [load_distance(path) for path in args.distances]
    combined = ensemble_distances(mats, weights=args.weights, normalize=args.normalize)
    atomic_save_npy(args.out, combined.astype("float32"))
    log.info("ensemble of %d distances: %s", len(mats), args.out)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    if args.check:
        from vreid.engine.results import check_submission

        if not args.root:
            raise VreidError("--check needs --root, the AIC21 dataset folder (for name_query.txt/name_test.txt)")
        check_submission(args.check, args.root, **_given(args, top_k="top_k"))
        return 0
    from vreid.engine.results import write_submission

    if not (args.distance and args.features and args.out):
        raise VreidError("submit needs --distance D.npy --features DIR --out track2.txt (or --check FILE --root DIR)")
    write_submission(_config(args), args.distance, args.features, args.out, **_given(args, top_k="top_k"))
    return 0


def cmd_translate_train(args: argparse.Namespace) -> int:
    from vreid.config import save_config
    from vreid.prep.unit import train_unit
    from vreid.prep.unit.train import check_unit_config

    cfg = _config(args)
    options = check_unit_config(cfg)  # before anything is written
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.OUTPUT_DIR)
    result = train_unit(args.source, args.target, cfg.OUTPUT_DIR, options, resume=args.resume)
    log.info("translator: %s (%d iterations, %.2f it/s)", result["translator"], result["iteration"],
             result["iterations_per_second"])
    return 0


def cmd_translate_apply(args: argparse.Namespace) -> int:
    from vreid.prep.unit import translate_folder

    count = translate_folder(args.checkpoint, args.input, args.out, direction=args.direction,
                             batch_size=args.batch_size)
    log.info("translated %d images into %s", count, args.out)
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    from vreid.data.loader import mask_dir, prepare_training_data
    from vreid.prep.masks import FolderMaskSource, MaskRCNNSource, compute_masks

    cfg = _config(args)
    records = prepare_training_data(cfg).records
    source = MaskRCNNSource(args.weights) if args.weights else FolderMaskSource(args.mask_folder)
    cache = mask_dir(cfg)
    masks = compute_masks([r.path for r in records], cache, source, batch_size=args.batch_size, device=args.device,
                          root=cfg.DATASETS.ROOT_DIR)
    log.info("%d of %d training images have a vehicle mask in %s", len(masks), len(records), cache)
    return 0


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    from vreid.pipeline import Pipeline, StageCrashed, load_pipeline

    misplaced = [o for o in args.opts if o in ("--dry-run", "--run-dir", "-h", "--help")]
    if misplaced:
        raise VreidError(f"{misplaced[0]} must come before the pipeline file: vreid pipeline run [--dry-run] "
                         "[--run-dir DIR] PIPELINE.yml [KEY VALUE ...]")
    pipeline = Pipeline(load_pipeline(args.pipeline, args.opts, args.run_dir))
    if args.dry_run:
        for stage, state in pipeline.status():
            print(f"{state:<8} {stage}")
        return 0
    try:
        summary = pipeline.run()
    except StageCrashed as exc:  # not bad input: a crash or a kill inside a stage; rerunning resumes
        log.error("%s", exc)
        return 1
    if "track2" in summary:
        print(f"submission: {summary['track2']} ({summary['queries']} queries x {summary['top_k']})")
    if summary.get("rows"):
        from vreid.pipeline import metrics_table

        print(metrics_table(summary["rows"]), end="")
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    from vreid.config import options_markdown

    print(options_markdown(), end="")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print(_config(args).dump(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vreid", description="Vehicle re-identification toolkit.")
    parser.add_argument("--version", action="version", version=f"vreid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", required=True)
    summary = data.add_parser("summary", help="images, identities, cameras and tracks per split")
    summary.add_argument("--dataset", help="dataset name (default: DATASETS.TEST)")
    summary.add_argument("--root", help="dataset folder (default: DATASETS.ROOT_DIR)")
    summary.add_argument("--test-split", help="which test list (default: DATASETS.TEST_SPLIT)")
    summary.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    summary.add_argument("--verify-images", action="store_true", help="decode every image; fail on unreadable ones")
    _add_config_args(summary)
    summary.set_defaults(func=cmd_data_summary)

    synth = sub.add_parser("synth", help="render the built-in synthetic vehicle city (AIC21 layout)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--ids", type=int, default=40, help="real-like identities, half train, half test")
    synth.add_argument("--sim-ids", type=int, default=None, help="sim-like (VehicleX) identities (default: --ids)")
    synth.add_argument("--cameras", type=int, default=4, help="number of cameras")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    synth.add_argument("--min-frames", type=int, default=3, help="shortest tracklet")
    synth.add_argument("--max-frames", type=int, default=6, help="longest tracklet")
    synth.add_argument("--queries-per-id", type=int, default=2, help="query images per test identity")
    synth.add_argument("--workers", type=int, default=1, help="rendering processes")
    synth.add_argument("--preview", action="store_true", help="also write OUT/preview.png, a contact sheet")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    synth.set_defaults(func=cmd_synth)

    train = sub.add_parser("train", help="train a model (OUTPUT_DIR gets config, logs, checkpoints, weights)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pth")
    train.add_argument("--test", action="store_true", help="then test the final weights as `vreid test` does "
                       "(into OUTPUT_DIR/test)")
    _add_config_args(train, required=True)
    train.set_defaults(func=cmd_train)

    test = sub.add_parser("test", help="evaluate TEST.WEIGHT on the test query/gallery; writes metrics.json")
    _add_backend_arg(test)
    _add_retrieval_device_arg(test)
    _add_config_args(test, required=True)
    test.set_defaults(func=cmd_test)

    extract = sub.add_parser("extract", help="write OUTPUT_DIR/<split>.npz FeatureSets of the test dataset")
    extract.add_argument("--splits", default="query,gallery", help="comma-separated splits (default query,gallery)")
    extract.add_argument("--images", metavar="DIR", help="embed every image under DIR instead (recursive) into "
                         "OUTPUT_DIR/gallery.npz; ids from file names matching DATASETS.FOLDER_PATTERN, else empty")
    _add_backend_arg(extract)
    _add_config_args(extract, required=True)
    extract.set_defaults(func=cmd_extract)

    export = sub.add_parser("export", help="TEST.WEIGHT -> ONNX (dynamic batch), checked against PyTorch")
    export.add_argument("--format", default="onnx", choices=("onnx",))
    export.add_argument("--images", metavar="DIR", help="real images for the parity check (default: the test "
                        "dataset's query/gallery)")
    export.add_argument("--parity-images", type=int, help="how many images the check uses (default 16)")
    export.add_argument("--min-cosine", type=float, help="fail below this per-image cosine similarity of the two "
                        "embeddings (default: vreid.deploy.export.MIN_COSINE, 0.9999)")
    export.add_argument("out", metavar="OUT.onnx", help="file to write")
    _add_config_args(export, required=True)
    export.set_defaults(func=cmd_export)

    rerank = sub.add_parser("rerank", help="k-reciprocal re-ranking (and fusion, tracks, QE) of saved features")
    rerank.add_argument("--features", required=True, help="folder with query.npz and gallery.npz")
    rerank.add_argument("--out", help="output folder (default OUTPUT_DIR)")
    _add_retrieval_device_arg(rerank)
    _add_config_args(rerank)
    rerank.set_defaults(func=cmd_rerank)

    ensemble = sub.add_parser("ensemble", help="weighted mean of several distance files (.npy)")
    ensemble.add_argument("--distances", nargs="+", required=True, help="distance.npy files of several models")
    ensemble.add_argument("--weights", nargs="+", type=float, help="one weight per file (default equal)")
    ensemble.add_argument("--normalize", default="none", choices=("none", "minmax", "zscore"),
                          help="per-query normalisation before averaging")
    ensemble.add_argument("--out", required=True, help="output .npy")
    ensemble.set_defaults(func=cmd_ensemble)

    rep = sub.add_parser("report", help="one self-contained HTML page of a `vreid test` output folder")
    rep.add_argument("--results", required=True, metavar="DIR", help="OUTPUT_DIR of `vreid test` (or `vreid rerank`)")
    rep.add_argument("--out", metavar="FILE", help="HTML file to write (default DIR/report.html)")
    rep.add_argument("--worst", type=int, default=20, metavar="N", help="rank lists of the N lowest-AP queries")
    rep.add_argument("--top-k", type=int, default=10, metavar="K", help="gallery images per rank list")
    rep.set_defaults(func=cmd_report)

    submit = sub.add_parser("submit", help="write or check an AI City track2.txt")
    submit.add_argument("--distance", help="distance.npy (queries x gallery)")
    submit.add_argument("--features", help="folder with query.npz and gallery.npz (image names, tracks)")
    submit.add_argument("--out", help="track2.txt to write")
    submit.add_argument("--check", metavar="FILE", help="validate FILE instead of writing one")
    submit.add_argument("--root", help="AIC21 dataset folder, for --check")
    submit.add_argument("--top-k", type=int, help="entries per query (default: AI City's 100)")
    _add_config_args(submit)
    submit.set_defaults(func=cmd_submit)

    prep = sub.add_parser("prep", help="data preparation: synthetic-to-real translation (UNIT), foreground masks")
    prep_sub = prep.add_subparsers(dest="prep_command", required=True)
    translate = prep_sub.add_parser("translate", help="UNIT image translation").add_subparsers(
        dest="translate_command", required=True)
    t_train = translate.add_parser("train", help="train a translator between two image folders (UNIT.* keys)")
    t_train.add_argument("--source", required=True, help="images of the source domain (e.g. synthetic)")
    t_train.add_argument("--target", required=True, help="images of the target domain (e.g. real)")
    t_train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pth")
    _add_config_args(t_train)
    t_train.set_defaults(func=cmd_translate_train)
    t_apply = translate.add_parser("apply", help="translate a folder, keeping names, sizes and label files")
    t_apply.add_argument("--checkpoint", required=True, help="OUTPUT_DIR/translator.pth of a training run")
    t_apply.add_argument("--in", dest="input", required=True, help="folder to translate (recursively)")
    t_apply.add_argument("--out", required=True, help="output folder (same layout)")
    t_apply.add_argument("--direction", default="a2b", choices=("a2b", "b2a"), help="a = --source of training")
    t_apply.add_argument("--batch-size", type=int, default=16)
    t_apply.set_defaults(func=cmd_translate_apply)

    masks = prep_sub.add_parser("masks", help="foreground masks of the training images, for the background swap")
    source = masks.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="Mask R-CNN weights file (torchvision maskrcnn_resnet50_fpn, COCO)")
    source.add_argument("--mask-folder", help="use existing masks (PNG, same relative paths) instead")
    masks.add_argument("--device", default="cpu")
    masks.add_argument("--batch-size", type=int, default=4)
    _add_config_args(masks)
    masks.set_defaults(func=cmd_masks)

    index = sub.add_parser("index", help="searchable galleries").add_subparsers(dest="index_command", required=True)
    ibuild = index.add_parser("build", help="FeatureSet (vreid extract) -> index folder")
    ibuild.add_argument("--features", required=True, help="gallery.npz written by `vreid extract`")
    ibuild.add_argument("--kind", choices=("exact", "ivf", "hnsw"),
                        help="exact (default), or approximate for millions of images: ivf, hnsw (need FAISS)")
    ibuild.add_argument("--engine", choices=("auto", "numpy", "faiss"),
                        help="auto: FAISS when installed, else numpy (exact)")
    ibuild.add_argument("--nlist", type=int, help="ivf: number of lists (0: about 4 sqrt(n))")
    ibuild.add_argument("--nprobe", type=int, help="ivf: lists searched per query (default 16)")
    ibuild.add_argument("--hnsw-m", type=int, help="hnsw: links per node (default 32)")
    ibuild.add_argument("--ef-search", type=int, help="hnsw: search beam width (default 128)")
    ibuild.add_argument("--overwrite", action="store_true", help="replace an existing index in OUT")
    ibuild.add_argument("--camera-norm", choices=("none", "center", "standardize"),
                        help="per-camera normalisation fitted on the gallery (default: TEST.CAMERA_NORM.MODE of the "
                        "config beside the features; docs/retrieval.md)")
    ibuild.add_argument("--calibration", metavar="F.npz", action="append", default=[],
                        help="more features (e.g. unlabelled images of the query cameras) for the per-camera "
                        "statistics only, not indexed (repeat)")
    ibuild.add_argument("out", metavar="OUT", help="gallery to create: a folder (FOLDER/gallery.db), "
                        "sqlite:///path/gallery.db, milvus://host:port[/collection] (docs/deployment.md)")
    ibuild.set_defaults(func=cmd_index_build)
    iadd = index.add_parser("add", help="add images (embedded with the index's model) or a FeatureSet")
    iadd.add_argument("--index", required=True)
    what = iadd.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", metavar="DIR", help="every image under DIR")
    what.add_argument("--features", help="a FeatureSet .npz from the same model")
    iadd.add_argument("--captured-at", metavar="TIME", help="capture time of these images: ISO 8601 (UTC unless "
                      "a zone is given) or seconds since the epoch")
    iadd.add_argument("--attributes", metavar="JSON", help="free-form attributes stored with each image "
                      "(a JSON object)")
    _add_config_args(iadd)
    iadd.set_defaults(func=cmd_index_add)
    iremove = index.add_parser("remove", help="remove images by id or path")
    iremove.add_argument("--index", required=True)
    iremove.add_argument("--ids", type=int, nargs="*", default=[])
    iremove.add_argument("--paths", nargs="*", default=[])
    iremove.set_defaults(func=cmd_index_remove)
    iinfo = index.add_parser("info", help="size and settings of an index")
    iinfo.add_argument("--index", required=True)
    iinfo.set_defaults(func=cmd_index_info)
    imigrate = index.add_parser("migrate", help="copy an index folder of the old format (index.json) to a gallery")
    imigrate.add_argument("old", metavar="OLD_FOLDER")
    imigrate.add_argument("new", metavar="NEW_URI", help="a folder, sqlite:///path/gallery.db or milvus://host:port")
    imigrate.set_defaults(func=cmd_index_migrate)

    search = sub.add_parser("search", help="the most similar gallery images of query images")
    search.add_argument("--index", required=True, help="gallery folder or URI (`vreid index build`)")
    queries = search.add_mutually_exclusive_group(required=True)
    queries.add_argument("--image", action="append", help="query image file (repeat for several)")
    queries.add_argument("--features", metavar="Q.npz", help="query features saved by `vreid extract` with the "
                         "gallery's model (no model is loaded)")
    search.add_argument("--top-k", type=int, default=20)
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_retrieval_device_arg(search)
    search.add_argument("--camera", action="append", default=[], help="only gallery images of this camera (repeat)")
    search.add_argument("--query-camera", default="", metavar="CAM", help="the camera that took the --image queries: "
                        "normalised with its statistics when the gallery has per-camera statistics")
    search.add_argument("--track", action="append", default=[], help="only gallery images of this track (repeat)")
    search.add_argument("--from", dest="time_from", metavar="TIME", help="only images captured at or after TIME "
                        "(ISO 8601 or epoch seconds)")
    search.add_argument("--to", dest="time_to", metavar="TIME", help="only images captured at or before TIME")
    _add_config_args(search)
    search.set_defaults(func=cmd_search)

    serve = sub.add_parser("serve", help="HTTP service: POST /search, POST /gallery, GET /health (FastAPI)")
    serve.add_argument("--index", required=True, help="gallery folder or URI (`vreid index build`)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, help="largest request body (default 8 MiB)")
    serve.add_argument("--max-pixels", type=int, help="largest image, width x height (default 25 MP)")
    serve.add_argument("--max-files", type=int, help="images per POST /gallery (default 64)")
    serve.add_argument("--read-only", action="store_true", help="refuse gallery changes")
    serve.add_argument("--max-request-pixels", type=int,
                       help="pixels of all images of one request together (bounds its memory; default 50 MP)")
    serve.add_argument("--max-concurrent", type=int, help="requests decoding and embedding at once (default 2)")
    serve.add_argument("--body-timeout", type=float, metavar="S",
                       help="seconds for a whole request body to arrive (408 after; default 30)")
    serve.add_argument("--max-connections", type=int, help="open connections (503 beyond; default 64)")
    serve.add_argument("--token-file", metavar="F", help="bearer token for gallery changes (first line of F; "
                       "default: the environment variable VREID_SERVE_TOKEN, if set)")
    serve.add_argument("--auth-all", action="store_true", help="ask the token for every endpoint, searches too")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host name clients may use besides loopback and --host (repeat; '*' for any)")
    serve.add_argument("--allowed-origin", action="append", default=[], metavar="URL",
                       help="a browser origin (https://app.example) allowed to post besides the same origin")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a --host beyond loopback without a token (anyone reaching it may change it)")
    _add_config_args(serve)
    serve.set_defaults(func=cmd_serve)

    pipeline = sub.add_parser("pipeline", help="the whole AIC21 flow from one pipeline file").add_subparsers(
        dest="pipeline_command", required=True)
    prun = pipeline.add_parser("run", help="run every unfinished stage (finished ones are skipped, interrupted "
                               "ones resumed); see docs/pipeline.md")
    prun.add_argument("pipeline", metavar="PIPELINE.yml", help="pipeline file (e.g. configs/demo/pipeline.yml)")
    prun.add_argument("--dry-run", action="store_true", help="list the stages and their state; run nothing")
    prun.add_argument("--run-dir", help="folder of the run (default: the file's run_dir)")
    prun.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                      help="config overrides for every model, applied last, e.g. DATASETS.ROOT_DIR /data")
    prun.set_defaults(func=cmd_pipeline_run)

    model = sub.add_parser("model", help="inspect models").add_subparsers(dest="model_command", required=True)
    msummary = model.add_parser("summary", help="parameters per block, embedding size and FLOPs")
    msummary.add_argument("--num-classes", type=int, default=440,
                          help="training classes for the classifier (default 440, AIC21's training ids)")
    _add_config_args(msummary)
    msummary.set_defaults(func=cmd_model_summary)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="config_command", required=True)
    show = config.add_parser("show", help="print the resolved config (defaults <- file <- overrides)")
    _add_config_args(show)
    show.set_defaults(func=cmd_config_show)
    docs = config.add_parser("docs", help="print every option with its default and meaning (a Markdown table)")
    docs.set_defaults(func=cmd_config_docs)
    return parser


def overrides_last(argv: Sequence[str]) -> list[str]:
    """Move ``KEY VALUE`` config overrides after every option, so options may follow them.

    argparse hands everything after the first override to the overrides; a token counts as a key only
    if it is a real config key, so option values are never mistaken for one.
    """
    from vreid.config import _flat_keys, get_defaults

    keys = set(_flat_keys(get_defaults()))
    rest: list[str] = []
    pairs: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in keys and i + 1 < len(argv):
            pairs += argv[i : i + 2]
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return rest + pairs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(overrides_last(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (VreidError, ValueError) as exc:
        if args.verbose:
            log.exception("failed")
        log.error("%s", exc)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
