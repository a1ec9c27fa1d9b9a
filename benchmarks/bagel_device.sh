#!/usr/bin/env bash
# The BAGEL GPU checks and benchmark runs, as sent to the accelerator machine (one H100):
#   GPU parity tests (flex attention, fp32), then bagel_train.py for both reference shapes.
# Needs: diffusers importable (carry a wheel), the parity fixtures in $SGT_PARITY_DIR; writes $OUT/bench.jsonl.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$PWD"
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 240 python3 -m pytest -q -x tests/test_bagel_gpu.py -p no:cacheprovider 2>&1 | tail -8
fi
for spec in ${RUNS:-"qwen05b:0:0:0" "7b_2l:0:1:0" "qwen05b:0:0:1"}; do
  IFS=: read -r cfg ckl ckv comp <<<"$spec"
  timeout 200 python3 benchmarks/bagel_train.py --config "$cfg" --ckpt-llm "$ckl" --ckpt-vit "$ckv" \
    --compile "$comp" ${EXTRA:-} --json "$OUT/bench.jsonl" 2>&1 | tail -3
done
