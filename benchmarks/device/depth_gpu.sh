#!/usr/bin/env bash
# Issue 5 on the accelerator machine: the depth gpu tests, then the depth_pool benchmark (two image sizes).
# Run from the repo root with `.whl/depth` carried (slim ray wheel + its missing deps + pytest; see slim_wheel.py).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# One GPU and 16 CPUs, the single-H100 machine's shape, even when the call lands on a bigger host.
export CUDA_VISIBLE_DEVICES=0
export PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/depth/*.whl \
  > "$OUT/pip.log" 2>&1 || { tail -5 "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, transformers, ray, cv2; print('torch', torch.__version__, 'transformers', transformers.__version__, 'ray', ray.__version__, 'cv2', cv2.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,utilization.gpu,memory.used,clocks.sm --format=csv
nproc
timeout 120 python3 -m pytest tests/test_depth_gpu.py tests/test_depth.py -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -15
timeout 120 python3 benchmarks/depth_pool.py --cpus 16 --json "$OUT/bench_1024x768.json" 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/bench_1024x768.log" | tail -12
timeout 100 python3 benchmarks/depth_pool.py --cpus 16 --size 2250x1500 --images 1500 --baseline-images 60 --skip-runner \
  --json "$OUT/bench_2250x1500.json" 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/bench_2250x1500.log" | tail -8
