"""Streaming DiT merge benchmark: fold one rank-32 LoRA (every block linear) into a Wan-shaped checkpoint with random
weights generated on the spot, and compare with a plain `cp` of the same file.

    python bench/bench_merge.py --model wan2.1-t2v-14b --device cuda            # the 14B-shaped file (~28 GB bf16)
    python bench/bench_merge.py --model wan2.1-t2v-14b --blocks 3 --device cuda  # ~2.5 GB (memory criterion)

Reports the checkpoint size, seconds and throughput (GB/s) of the merge and of `cp`, and the peak resident memory
of the merge above the interpreter's baseline: the merge runs in a child process that imports the merge modules,
records its resident memory (the baseline), then samples it every 5 ms while `python -m backend merge` runs; the
merge's seconds include the interpreter start. The page cache is not dropped: `cp` runs first, so both read a
warm file when RAM allows. `--blocks N` keeps only the first N blocks (top-level tensors stay), to make smaller files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.adapters.formats import save_lora  # noqa: E402
from backend.compose.stream import TensorEntry, write_streaming  # noqa: E402
from backend.models.names import BLOCK_LINEARS, block_index, diffusers_to_wan, lora_key_prefix  # noqa: E402

CONFIGS = ROOT / "backend" / "models" / "configs"


def checkpoint_entries(model: str, blocks: int | None, dtype: torch.dtype) -> list[TensorEntry]:
    """Original-name tensor list of the model kind, from a meta-device model (no memory used)."""
    from diffusers import WanTransformer3DModel

    config_path = CONFIGS / model / "config.json"
    if not config_path.exists():
        config_path = CONFIGS / model / "low_noise" / "config.json"
    config = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**config)
    entries = []
    for name, tensor in transformer.state_dict().items():
        wan = diffusers_to_wan(name)
        block = block_index(wan)
        if blocks is not None and block is not None and block >= blocks:
            continue
        entries.append(TensorEntry(wan, dtype, tuple(tensor.shape)))
    return entries


def write_checkpoint(path: Path, entries: list[TensorEntry], device: str) -> None:
    generator = torch.Generator(device=device).manual_seed(0)

    def produce(entry: TensorEntry) -> torch.Tensor:
        return (torch.randn(entry.shape, generator=generator, device=device) * 0.02).to(entry.dtype).cpu()

    write_streaming(path, entries, produce)


def write_lora(path: Path, entries: list[TensorEntry], rank: int) -> int:
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for entry in entries:
        module = entry.name[: -len(".weight")]
        if block_index(module) is None or module.split(".", 2)[2] not in BLOCK_LINEARS:
            continue
        out_features, in_features = entry.shape
        prefix = lora_key_prefix(module)
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * 0.01
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
        tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    save_lora(path, tensors, precision="bf16")
    return len(tensors) // 3


_MERGE_CHILD = """
import sys, threading, psutil
import backend.compose.merge_cli, backend.compose.merge_dit
from backend.__main__ import main
process = psutil.Process()
baseline = peak = process.memory_info().rss
stop = threading.Event()
def sample():
    global peak
    while not stop.is_set():
        peak = max(peak, process.memory_info().rss)
        stop.wait(0.005)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
assert main(sys.argv[1:]) == 0
stop.set()
thread.join()
print("RSS", baseline, peak)
"""


def merge_in_child(argv: list[str]) -> tuple[float, int, int]:
    """(seconds, RSS after imports, peak RSS during the merge) of `python -m backend merge` run in a child that
    samples its own resident memory every 5 ms."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MERGE_CHILD, *argv], check=True, cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(done.stdout, end="")
    _, baseline, peak = next(line for line in done.stdout.splitlines() if line.startswith("RSS ")).split()
    return seconds, int(baseline), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-14b")
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", type=Path, default=Path("bench_merge_work"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    base, lora, merged, copy = (work / n for n in ("base.safetensors", "lora.safetensors", "merged.safetensors",
                                                   "copy.safetensors"))
    entries = checkpoint_entries(args.model, args.blocks, torch.bfloat16)
    started = time.perf_counter()
    write_checkpoint(base, entries, args.device)
    generate_s = time.perf_counter() - started
    modules = write_lora(lora, entries, args.rank)
    size = base.stat().st_size

    started = time.perf_counter()
    subprocess.run(["cp", str(base), str(copy)], check=True)
    with open(copy, "rb+") as handle:
        os.fsync(handle.fileno())  # the merge fsyncs its output too
    cp_s = time.perf_counter() - started
    copy.unlink()

    merge_s, baseline_rss, merge_rss = merge_in_child(
        ["merge", "--dit", str(base), "--lora", str(lora), "--out", str(merged), "--device", args.device])
    result = {
        "model": args.model, "blocks": args.blocks, "device": args.device, "rank": args.rank,
        "lora_modules": modules, "checkpoint_gb": size / 1e9, "generate_s": generate_s,
        "merge_s": merge_s, "merge_gb_per_s": size / 1e9 / merge_s, "cp_s": cp_s, "cp_gb_per_s": size / 1e9 / cp_s,
        "merge_vs_cp": merge_s / cp_s, "peak_rss_merge_mb": merge_rss / 2**20,
        "peak_rss_baseline_mb": baseline_rss / 2**20, "peak_rss_above_baseline_mb": (merge_rss - baseline_rss) / 2**20,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
