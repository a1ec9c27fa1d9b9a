#!/usr/bin/env bash
# Issue 5 on the accelerator machine: the depth gpu tests, then the depth_pool benchmark (two image sizes, and
# all of the host's CPUs when it has more than 16). Run from the repo root with `.whl/depth` carried (slim ray
# wheel + the packages ray needs that the image lacks + pytest; see slim_wheel.py).
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
echo "cpus $(nproc)"
quiet() { grep -v "Loading weights\|Writing model\|logging.cc\|SIGTERM\|^    @\|^PC: @"; }
timeout 75 python3 -m pytest tests/test_depth_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -8
timeout 100 python3 benchmarks/depth_pool.py --cpus 16 --baseline-images 120 --json "$OUT/bench_1024x768.json" 2>&1 | quiet | tee "$OUT/bench_1024x768.log" | tail -9
timeout 90 python3 benchmarks/depth_pool.py --cpus 16 --size 2250x1500 --images 1000 --baseline-images 40 \
  --json "$OUT/bench_2250x1500.json" 2>&1 | quiet | tee "$OUT/bench_2250x1500.log" | tail -7
if [ "$(nproc)" -gt 16 ]; then
  timeout 60 python3 benchmarks/depth_pool.py --cpus "$(nproc)" --images 4000 --baseline-images 30 \
    --json "$OUT/bench_1024x768_allcpus.json" 2>&1 | quiet | tee "$OUT/bench_1024x768_allcpus.log" | tail -7
fi
