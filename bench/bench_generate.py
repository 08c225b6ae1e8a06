"""Generation as a user runs it, on real-size random-weight files: `python -m backend generate`'s own code path
(its argument parser and `generate_all`), timing every denoising step and the decode, and reporting peak memory.

    python bench/bench_generate.py --model wan2.1-t2v-14b --memory_limit_gb 24            # 81x480x832, GPU
    python bench/bench_generate.py --model wan2.2-t2v-a14b --memory_limit_gb 24           # both experts
    python bench/bench_generate.py --model wan2.1-t2v-14b                                 # uncapped, bf16
    python bench/bench_generate.py --model wan2.1-t2v-14b --memory_limit_gb 24 --extra=--memory=manual \
        --extra=--fp8 --extra=--cpu_offload                                               # the old low-memory path
    python bench/bench_generate.py --model demo-t2v                                       # CPU smoke run (tiny)
    python bench/bench_generate.py --model wan2.1-t2v-14b --dit /tmp/loraid-bench/dit-wan2.1-t2v-14b.safetensors \
        --memory_limit_gb 24                            # reuse the file bench_trainer.py wrote (disk space)
    python bench/bench_generate.py --model wan2.2-ti2v-5b                                 # its Wan2.2 VAE, 16x

Files (written once into --work and reused): the transformer from the shipped config with random bf16 weights in
the original Wan layout (an A14B pair uses the one file for both experts: same shapes, same cost), a UMT5 encoder of
UMT5-XXL's size (24 layers, d_model 4096, 5.7B parameters, bf16; `--text_encoder_layers` shrinks it) and the Wan2.1
VAE's architecture (the Wan2.2 VAE's, backend/models/configs/vae-wan2.2, for TI2V-5B), both random. Only shapes matter for speed and memory; the video is noise.

Reported: seconds per denoising step (median over the steps after the first; each step is the two guided
transformer forwards; `s_per_transformer_forward` halves it, comparable with bench/bench_generate_step.py's base), the first step apart (expert load / warm-up), decode seconds, `torch.cuda.max_memory_allocated`
and the process's peak GPU memory from nvidia-smi (CUDA context included), and the memory plan's printed choices.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_files import DEVICE, GpuMemoryPeak, write_dit, write_tokenizer, write_vae  # noqa: E402

from backend.jobs.protocol import JobContext  # noqa: E402
from backend.models.registry import get_model_kind  # noqa: E402

UMT5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24, vocab_size=256384,
                feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True)


class TimedContext(JobContext):
    """The job context the CLI emits into, keeping each event with the time it came."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[float, str, dict]] = []

    def emit(self, event: str, **fields) -> None:
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        self.events.append((time.perf_counter(), event, fields))


def write_files(work: Path, model: str, text_encoder_layers: int, dit: Path | None = None) -> dict[str, Path]:
    """The tokenizer, a UMT5 encoder of UMT5-XXL's size (`text_encoder_layers` deep), the VAE and the DiT."""
    from transformers import UMT5Config, UMT5EncoderModel

    kind = get_model_kind(model)
    expert = kind.experts[0] if kind.has_experts else None
    paths = {"tokenizer": write_tokenizer(work / "tokenizer", "a red ball rolls across a wooden table"),
             "text_encoder": work / f"text_encoder-{text_encoder_layers}", "vae": write_vae(work, kind.uses_wan22_vae),
             "dit": dit or write_dit(work / f"dit-{model}.safetensors", model, expert)}
    text_dim = int(kind.config(expert)["text_dim"])
    if not paths["text_encoder"].exists():
        size = dict(UMT5_XXL, num_layers=text_encoder_layers) if text_dim == 4096 else dict(
            d_model=text_dim, d_kv=min(64, text_dim), d_ff=2 * text_dim, num_heads=max(1, text_dim // 64),
            num_layers=text_encoder_layers, vocab_size=256)
        config = UMT5Config(dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **size)
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16 if DEVICE == "cuda" else torch.float32)
        with torch.device(DEVICE):
            encoder = UMT5EncoderModel(config).eval()
        torch.set_default_dtype(torch.float32)
        encoder.save_pretrained(paths["text_encoder"])
        del encoder
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return paths


def generate(args, paths: dict[str, Path]) -> dict:
    from backend.generate.cli import add_arguments, generate_all

    kind = get_model_kind(args.model)
    argv = ["--dit", str(paths["dit"]), *([str(paths["dit"])] if kind.has_experts else []),
            "--model_kind", args.model, "--vae", str(paths["vae"]), "--text_encoder", str(paths["text_encoder"]),
            "--tokenizer", str(paths["tokenizer"]), "--prompt", "a red ball rolls across a wooden table",
            "--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
            "--steps", str(args.steps), "--seed", "0", "--out_dir", str(args.work / "out")]
    if args.memory_limit_gb:
        argv += ["--memory_limit_gb", str(args.memory_limit_gb)]
    argv += args.extra
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cli_args = parser.parse_args(argv)
    ctx = TimedContext()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    unwritten = None
    with GpuMemoryPeak.this_process() as peak:
        try:
            generate_all(cli_args, ctx)
        except ModuleNotFoundError as exc:  # a GPU machine without imageio-ffmpeg: all but the mp4 write ran
            if exc.name != "imageio_ffmpeg":
                raise
            unwritten = "decoded, not written: imageio_ffmpeg is not installed on this machine"
    ended = time.perf_counter()
    times = {event: [t for t, e, _ in ctx.events if e == event] for event in ("start", "progress", "sample")}
    steps = [b - a for a, b in zip([times["start"][0]] + times["progress"][:-1], times["progress"])]
    return {
        "argv": argv, "load_s": round(times["start"][0] - started, 1),
        "first_step_s": round(steps[0], 2),
        "s_per_step": round(statistics.median(steps[1:] or steps), 2),
        # classifier-free guidance runs the transformer twice a step: this compares with bench_generate_step.py
        "s_per_transformer_forward": round(statistics.median(steps[1:] or steps)
                                           / (2 if cli_args.guidance_scale > 1 else 1), 2),
        "decode_and_write_s": round((times["sample"][0] if times["sample"] else ended) - times["progress"][-1], 1),
        "video": unwritten or "written",
        "total_s": round(ended - started, 1),
        "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if DEVICE == "cuda" else None,
        "process_peak_gib_nvidia_smi": round(peak.peak_mib / 1024, 2) if DEVICE == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-14b" if DEVICE == "cuda" else "demo-t2v")
    parser.add_argument("--frames", type=int, default=81 if DEVICE == "cuda" else 5)
    parser.add_argument("--height", type=int, default=480 if DEVICE == "cuda" else 32)
    parser.add_argument("--width", type=int, default=832 if DEVICE == "cuda" else 32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--memory_limit_gb", type=float, default=None)
    parser.add_argument("--text_encoder_layers", type=int, default=24 if DEVICE == "cuda" else 2)
    parser.add_argument("--extra", action="append", default=[], help="one more generate argument (--extra=--fp8)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/loraid-bench-generate"))
    parser.add_argument("--dit", type=Path, default=None,
                        help="use this transformer file (e.g. one bench_trainer.py wrote) instead of writing one")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    paths = write_files(args.work, args.model, args.text_encoder_layers, args.dit)
    result = {"model": args.model, "shape": f"{args.frames}x{args.height}x{args.width}",
              "memory_limit_gb": args.memory_limit_gb, "files_s": round(time.perf_counter() - t0, 1),
              "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__}
    result.update(generate(args, paths))
    print("BENCH " + json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
