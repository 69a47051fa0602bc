"""The file names inside a run folder (``OUTPUT_DIR``): one place for every name that two stages share.

Torch-free and import-free on purpose: the trainer, the tester, the report, the pipeline and the CLI all
name these files, and the commands that only read saved outputs must not pull torch in to learn a name.
"""

from __future__ import annotations

CHECKPOINT_DIR = "checkpoints"  # OUTPUT_DIR/checkpoints/: resumable training state
LAST_CHECKPOINT = "last.pth"  # everything to resume exactly (weights, optimizer, scaler, iteration, RNG)
BEST_CHECKPOINT = "best.pth"  # the weights of the best validation so far
FINAL_WEIGHTS = "model_final"  # model_final.pth and model_final.safetensors: what `vreid train` leaves
LOG_FILE = "log.txt"  # the run's log, beside the console
TRAIN_METRICS_FILE = "metrics.jsonl"  # one JSON line per logged training step / validation
LOSSES_FILE = "losses.jsonl"  # the UNIT trainer's losses, one JSON line per logged step
TRANSLATOR_FILE = "translator.pth"  # the UNIT generator `vreid prep translate` loads
CONFIG_FILE = "config.yaml"  # the merged configuration the run used (beside extracted features: the gallery's model)
TENSORBOARD_DIR = "tensorboard"  # the trainer's TensorBoard events, when tensorboard is installed
SAMPLES_DIR = "samples"  # the UNIT trainer's sample grids

QUERY_FILE, GALLERY_FILE = "query.npz", "gallery.npz"  # saved features (vreid.features.FeatureSet)
DISTANCE_FILE = "distance.npy"  # query x gallery distances after post-processing
METRICS_FILE = "metrics.json"  # mAP, CMC, AIC top-100 mAP of a test
PER_QUERY_FILE = "per_query.csv"  # AP and first-match rank of every query
RANKLIST_FILE = "ranklist.png"  # rank lists of the first TEST.RANKLIST_QUERIES queries
REPORT_FILE = "report.html"  # `vreid report`'s page
