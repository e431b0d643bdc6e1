#!/usr/bin/env bash
# GPU speed run (benchmarks/gpu.py): training step time and peak memory per method with AMP on
# retinanet_r50_fpn, eager vs CUDA-graph serving at batch 1 and 8; tables in benchmarks/results/.
# Runs from a plain copy of the repository (no install); needs python with torch (+ torchvision,
# numpy, pillow, pyyaml, safetensors); no pycocotools. Without CUDA it says "no CUDA" and exits 0.
#   bash benchmarks/gpu.sh [gpu.py options]      PYTHON=python3.12 bash benchmarks/gpu.sh
#   GPU_TIME_LIMIT=480 (seconds, default) bounds the whole run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "benchmarks/gpu.sh: $PY cannot import torch" >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA: benchmarks/gpu.sh needs a CUDA GPU; nothing was run"
    exit 0
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"
timeout --signal=INT "${GPU_TIME_LIMIT:-480}" "$PY" benchmarks/gpu.py "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ]; then
    echo "benchmarks/gpu.sh: stopped at the ${GPU_TIME_LIMIT:-480} s limit (rc $rc)" >&2
fi
exit "$rc"
