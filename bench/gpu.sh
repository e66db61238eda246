#!/usr/bin/env bash
# The GPU checks, for a session that is lent a GPU machine (see /work/.library/device).
#
#   bash bench/gpu.sh prepare     # here, once: the wheels the GPU image lacks, into .whl/ (about 30 MB)
#   bash bench/gpu.sh             # there (run tool, carry [".whl"]): everything below, logs in $OUT
#
# The GPU image has its own python3 with CUDA PyTorch, transformers, PEFT, Accelerate, pyarrow,
# pandas, typer and rich, and no network: what thumbs needs beyond that travels as wheels. The
# embedded SmolLM2 wheel (the GGUF, ~140 MB) is over the 64 MiB a call may carry, so the real-model
# check trains a SmolLM2-135M-shaped model with random weights instead.
#
# In order of value, each step bounded so that all of them fit in about 8 minutes:
#   1. the training and loss tests on CUDA (precision "auto" is bf16 there);
#   2. bench/train.py --gpu: thumbs against TRL in bf16, KTO and DPO, the 135M shape;
#   3. one KTO run of the demo's shape (LoRA, packing) on the GPU through the CLI, timed.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(duckdb pydantic pydantic-core annotated-types typing-inspection gguf trl datasets dill
        multiprocess psycopg psycopg-binary vaderSentiment)

if [ "${1:-}" = "prepare" ]; then
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  mkdir -p .whl
  py=.venv/bin/python; [ -x "$py" ] || py=python3
  for pkg in "${WHEELS[@]}"; do
    # the versions this project's own environment runs (pydantic pins pydantic-core exactly)
    name="$pkg==$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg")" || exit 1
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$name" 2>/dev/null \
    || python3 -m pip download -q --no-deps -d .whl "$name"   # pure-Python packages (sdists too)
  done
  du -sh .whl
  exit 0
fi

OUT=${OUT:-bench/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/* \
    > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
  export PYTHONPATH="$PWD/src:/tmp/site"
else
  export PYTHONPATH="$PWD/src"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"

status=0
echo "== 1. tests on CUDA"
timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/test_losses.py tests/test_packing.py tests/test_train.py \
  2>&1 | tee "$OUT/tests.log" | tail -15 || status=1

echo "== 2. bench/train.py --gpu (thumbs vs TRL, bf16, 135M shape)"
timeout 240 python3 bench/train.py --gpu --json > "$OUT/bench-train.json" 2> "$OUT/bench-train.log" || status=1
tail -c 2000 "$OUT/bench-train.json"

echo "== 3. one KTO run of the demo's shape on the GPU"
timeout 120 python3 bench/contention.py --steps 8 --once > "$OUT/demo-shape.log" 2>&1 || status=1
tail -5 "$OUT/demo-shape.log"
exit $status
