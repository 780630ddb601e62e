#!/usr/bin/env bash
# One-file GPU check: train, infer and refine on CUDA on small scans; prints throughputs.
# Run on a machine with a CUDA GPU from the repository root (ptychopinn installed):
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# It records nothing by itself; copy the printed numbers into docs/performance.md with the date
# and the device.
set -euo pipefail
OUT=${1:-gpu-check}
mkdir -p "$OUT"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
ptychopinn simulate --output "$OUT/train.npz" --patch-size 64 --n-positions 4096 --seed 1 --quiet
ptychopinn simulate --output "$OUT/test.npz" --patch-size 64 --n-positions 16384 --seed 2 --quiet
/usr/bin/time -f "train: %e s wall, %M KB peak RSS" \
  ptychopinn train --train-data "$OUT/train.npz" --output-dir "$OUT/model" --max-epochs 2 \
  --accelerator gpu --devices 1 --overwrite --quiet
/usr/bin/time -f "infer: %e s wall, %M KB peak RSS" \
  ptychopinn infer --model "$OUT/model/model.ptpinn" --data "$OUT/test.npz" --output-dir "$OUT/infer" \
  --accelerator gpu --overwrite --quiet
/usr/bin/time -f "infer bf16-mixed: %e s wall, %M KB peak RSS" \
  ptychopinn infer --model "$OUT/model/model.ptpinn" --data "$OUT/test.npz" --output-dir "$OUT/infer-bf16" \
  --accelerator gpu --inference-precision bf16-mixed --overwrite --quiet
/usr/bin/time -f "reconstruct (refinement, 20 epochs): %e s wall, %M KB peak RSS" \
  ptychopinn reconstruct --data "$OUT/test.npz" --output-dir "$OUT/refine" --refine-epochs 20 \
  --refine-probe off --accelerator gpu --overwrite --quiet
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
with np.load(out / "infer" / "reconstruction.npz") as z:
    meta = json.loads(str(z["metadata"]))
print(f"inference: {meta['patterns_per_second']:.0f} patterns/s (network pass, N=64, 16384 patterns)")
with np.load(out / "infer-bf16" / "reconstruction.npz") as z:
    meta = json.loads(str(z["metadata"]))
print(f"inference bf16-mixed: {meta['patterns_per_second']:.0f} patterns/s")
with np.load(out / "refine" / "reconstruction.npz") as z:
    meta = json.loads(str(z["metadata"]))
m, epochs = 16384, meta["refine_epochs_run"]
print(f"refinement: {m * epochs / meta['refine_seconds']:.0f} pattern-updates/s ({epochs} epochs)")
PY
