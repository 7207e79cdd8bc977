#!/usr/bin/env bash
# The GPU check (issue #17): CUDA-marked tests, the whole pipeline on a random-weight SmolLM2-shaped
# model in bfloat16, and LLaMA-7B / Llama-3-8B shapes at 32 layers, with peak memory and throughput.
# Sized for <= 8 minutes on one H200. Writes gpu_check.json + gpu_check.md (and each stage's log and
# results) into the folder given, else $OUT (the device tool's), else benchmarks/results/gpu_check.
#
#   python benchmarks/gpu_prepare.py             # once, where the asset cache and a registry are reachable
#   bash benchmarks/gpu_check.sh [DIR]           # on the GPU machine (carry .gpu_carry and .whl there)
#   GPU_CHECK_SMALL=1 bash benchmarks/gpu_check.sh DIR    # every stage at test size (any machine)
#
# Needs torch, transformers, peft and accelerate; lm-eval and datasets (evaluation only) come from
# the wheels in .whl/ when the machine lacks them; optuna and gguf are not needed. Models have random
# weights built from configs (nothing is downloaded); the evaluation documents are real: the first
# 50 of each task, copied from the asset cache into .gpu_carry/cache by gpu_prepare.py, with the
# start of the Brown corpus (calibration, recovery and perplexity text) and SmolLM2's tokenizer.
set -u
cd "$(dirname "$0")/.." || exit 2
out="${1:-${OUT:-benchmarks/results/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if ! "$py" -c "import lm_eval, datasets" > /dev/null 2>&1 && ls .whl/*.whl > /dev/null 2>&1; then
  site="${TMPDIR:-/tmp}/rankadaptor-gpu-check-site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$py" benchmarks/gpu_check.py --out "$out" ${GPU_CHECK_SMALL:+--small}
