#!/usr/bin/env bash
# Train the UNIT sim->real translator of benchmarks/domain_gap.py on a GPU, translate the sim-like set, and
# pack what comes back (translated images in <= 15 MiB parts, sample grids, loss log).
#   bash benchmarks/gpu_unit.sh CITY OUT_DIR [SECONDS]
# CITY is a `vreid synth` output (the one domain_gap.py uses); SECONDS is UNIT.TIME_LIMIT (default 240).
# Afterwards, on any machine: cat OUT_DIR/translated.tar.part* | tar -x -C WORK/translated
set -euo pipefail
PYTHON=${PYTHON:-python3}
CITY=$1 OUT=$2 SECONDS_LIMIT=${3:-240}
WORK=${WORK:-/tmp/vreid_gpu_unit}
REAL=AIC21_Track2_ReID SIM=AIC21_Track2_ReID_Simulation
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
"$PYTHON" -m vreid.cli prep translate train --source "$CITY/$SIM/sys_image_train" --target "$CITY/$REAL/image_train" \
    OUTPUT_DIR "$WORK/unit" SEED 0 DATALOADER.NUM_WORKERS 8 UNIT.IMAGE_SIZE 64 UNIT.WIDTH 64 UNIT.N_RES 4 \
    UNIT.BATCH_SIZE 4 UNIT.ITERATIONS 100000 UNIT.TIME_LIMIT "$SECONDS_LIMIT" UNIT.SAMPLE_PERIOD 1000 \
    UNIT.CHECKPOINT_PERIOD 5000 2>&1 | grep -v " iter .*0/100000" | tail -n 40
tail -n 3 "$WORK/unit/losses.jsonl" || true
"$PYTHON" -m vreid.cli prep translate apply --checkpoint "$WORK/unit/translator.pth" --in "$CITY/$SIM" \
    --out "$WORK/translated/$SIM" 2>&1 | tail -n 3
tar -C "$WORK/translated" -cf - "$SIM" | split -b 15m - "$OUT/translated.tar.part"
tar -C "$WORK/unit" -czf "$OUT/unit_log.tgz" samples log.txt $(cd "$WORK/unit" && ls losses.jsonl 2>/dev/null)
ls -l "$OUT"
