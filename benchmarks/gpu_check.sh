#!/usr/bin/env bash
# One short GPU check (< 8 minutes): AMP training and extraction throughput of ResNet50-IBN-a and
# ResNeXt101-IBN-a at 320x320, retrieval on the GPU at CityFlowV2-test scale (re-ranking plain and fused,
# evaluation, exact search; checked against numpy at 1,000 x 10,000), then a few hundred training iterations
# on the synthetic city.
# Run from the repository root on a machine with a CUDA GPU and torch, torchvision, numpy, pillow,
# yacs, tqdm and safetensors importable (PYTHON may point at any such interpreter):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${1:-${OUT:-gpu_check_output}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/throughput.txt"
import time, torch
from vreid.config import load_config
from vreid.models import build_model
from vreid.losses import build_criterion
assert torch.cuda.is_available(), "no CUDA GPU visible"
dev = torch.device("cuda")
print(torch.__version__, torch.cuda.get_device_name(0))
for backbone in ("resnet50_ibn_a", "resnext101_ibn_a"):
    cfg = load_config(None, ["MODEL.BACKBONE", backbone, "MODEL.HEAD.NAME", "multihead"])
    model = build_model(cfg, 440).to(dev).to(memory_format=torch.channels_last)
    crit = build_criterion(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), 3.5e-4)
    x = torch.randn(64, 3, 320, 320, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.arange(16, device=dev).repeat_interleave(4)
    for dtype in (torch.bfloat16, torch.float16):
        scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
        for i in range(25):
            if i == 5:
                torch.cuda.synchronize(); t = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype):
                out = model.train()(x, y)
            loss, _ = crit({k: v.float() for k, v in out.items()}, y)
            opt.zero_grad(set_to_none=True); scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        torch.cuda.synchronize()
        train_ips = 20 * 64 / (time.perf_counter() - t)
        model.eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            for i in range(25):
                if i == 5:
                    torch.cuda.synchronize(); t = time.perf_counter()
                model(x)
        torch.cuda.synchronize()
        eval_ips = 20 * 64 / (time.perf_counter() - t)
        print(f"{backbone:18s} {str(dtype):15s} train {train_ips:7.1f} img/s  extract {eval_ips:7.1f} img/s  "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        torch.cuda.reset_peak_memory_stats()
PY
"$PYTHON" benchmarks/retrieval_device.py --device cuda 2>&1 | tee "$OUT/retrieval.txt"
"$PYTHON" -m vreid.cli synth --out "$OUT/city" --ids 200 --cameras 6 --seed 0 --overwrite --workers 8
rm -rf "$OUT/train"
time "$PYTHON" -m vreid.cli train --config-file configs/demo/city.yml DATASETS.ROOT_DIR "$OUT/city" \
    OUTPUT_DIR "$OUT/train" MODEL.BACKBONE resnet50_ibn_a INPUT.SIZE_TRAIN "(256, 256)" INPUT.SIZE_TEST "(256, 256)" \
    SOLVER.IMS_PER_BATCH 64 SOLVER.MAX_EPOCHS 4 DATALOADER.NUM_WORKERS 8 SOLVER.AMP bf16 2>&1 | tail -25
"$PYTHON" -m vreid.cli test --config-file configs/demo/city.yml DATASETS.ROOT_DIR "$OUT/city" \
    MODEL.BACKBONE resnet50_ibn_a INPUT.SIZE_TEST "(256, 256)" TEST.WEIGHT "$OUT/train/model_final.pth" \
    OUTPUT_DIR "$OUT/test" 2>&1 | tail -3
cat "$OUT/test/metrics.json"
