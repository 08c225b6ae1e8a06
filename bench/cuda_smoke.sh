#!/usr/bin/env bash
# A minute on the GPU machine that runs every CUDA-only path on small shapes before the long benchmarks: the trainer
# (accelerate launch) with block swap, activation offload, scaled fp8, gradient checkpointing and compile, with LoRA
# and DoRA; generation with block swap, CPU offload and a memory limit.
#   bash bench/cuda_smoke.sh [WORK]        (default /tmp/loraid-smoke)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work="${1:-/tmp/loraid-smoke}"
python=${PYTHON:-python3}
small=(--model demo-t2v --frames 17 --width 256 --height 256 --steps 3 --warmup 1 --work "$work")
savers=(--set memory=manual --set gradient_checkpointing=true --set blocks_to_swap=4 --set offload_activations=true)
status=0
for extra in "--set fp8_scaled=true" "--set network_type=dora" "--set network_type=loha --set compile=false"; do
    # shellcheck disable=SC2086
    "$python" bench/bench_trainer.py "${small[@]}" "${savers[@]}" $extra 2>&1 | grep -E "^BENCH|Error|error:" \
        | cut -c1-600 || status=1
done
"$python" bench/bench_generate.py --model demo-t2v --frames 17 --height 256 --width 256 --steps 2 \
    --text_encoder_layers 2 --memory_limit_gb 4 --extra=--memory=manual --extra=--blocks_to_swap=4 \
    --extra=--cpu_offload --work "$work-generate" 2>&1 | grep -E "^BENCH|Error|error:" | cut -c1-600 || status=1
exit $status
