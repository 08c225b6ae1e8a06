#!/usr/bin/env bash
# The whole trainer on a CUDA machine: the demo workspace (built unless WORKSPACE already holds one), its caches
# rebuilt on the GPU, the demo preset trained for 30 steps under accelerate with bf16 mixed precision, then the LoRA
# it wrote inspected.
#   bash bench/cuda_trainer_proof.sh [WORKSPACE]        (default /tmp/loraid-cuda-proof)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work="${1:-/tmp/loraid-cuda-proof}"
python=${PYTHON:-python3}
"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("GPU:", torch.cuda.get_device_name(0))'
[ -f "$work/workspace.json" ] || "$python" -m backend demo --workspace "$work"
toml="$work/datasets/demo/concept_a/dataset.toml"
"$python" -m backend cache latents --workspace "$work" --dataset_config "$toml" --device cuda --no-skip_existing
"$python" -m backend cache text --workspace "$work" --dataset_config "$toml" --device cuda --no-skip_existing
start=$(date +%s.%N)
"$python" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
    -m backend.train --config presets/demo.json --workspace "$work" --mixed_precision bf16 \
    --output_dir "$work/loras" --output_name cuda-proof --log_every_n_steps 5
"$python" -c "import sys, time; print(f\"train wall seconds: {time.time() - float(sys.argv[1]):.1f}\")" "$start"
"$python" -m backend inspect "$work/loras/cuda-proof.safetensors"
