#!/usr/bin/env bash
# The prepared GPU run (not measured yet: no GPU was lent to the sessions that wrote it).
#
#     bash benchmarks/gpu.sh [OUT.md]     # default gpu-benchmark.md; under 8 minutes in all
#
# Needs a Python with a CUDA build of torch and this package importable (pip install -e . --no-deps
# in the repository, or PYTHONPATH=.).  What it runs: benchmarks/gpu.py (eager and CUDA-graph
# steps, fp32 and bf16, batch 1/8/64, both models of benchmarks/compare.py), then
# benchmarks/generate.py --device cuda --quick for the per-step table, each under a hard timeout
# so that the whole script ends within its slot; the tables are written to OUT.md.
set -uo pipefail
OUT=${1:-gpu-benchmark.md}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
timeout 400 python benchmarks/gpu.py --out "$OUT" --budget 300
echo "gpu.py exit $?"
{
  echo
  echo '## benchmarks/generate.py --device cuda --quick'
  echo '```'
  timeout 60 python benchmarks/generate.py --device cuda --quick 2>&1 | tail -40
  echo '```'
} >> "$OUT"
echo "wrote $OUT"
