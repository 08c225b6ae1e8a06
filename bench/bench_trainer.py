"""The whole trainer on the GPU machine, as a user runs it: random-weight real-size model files written to disk, a
one-clip dataset cached by our own cache commands, then `accelerate launch -m backend.train` on it.

    python bench/bench_trainer.py --model wan2.1-t2v-1.3b --steps 8
    python bench/bench_trainer.py --model wan2.1-t2v-14b --steps 5 --memory_limit_gb 24
    python bench/bench_trainer.py --model wan2.2-t2v-a14b --steps 4 --memory_limit_gb 24 --set expert=both \
        --dit /tmp/loraid-bench/dit-wan2.1-t2v-14b.safetensors
    python bench/bench_trainer.py --model wan2.1-t2v-1.3b --set network_args=use_dora=True
    python bench/bench_trainer.py --model wan2.2-ti2v-5b --steps 8 [--set ti2v_mode=i2v]
    python bench/bench_trainer.py --model wan2.2-ti2v-5b --steps 6 --frames 121 --width 1280 --height 704

What is measured: the seconds between consecutive `step` events of the trainer's own events file (the trainer logs
every step; the first `--warmup` steps, which hold torch.compile's compilation and allocator warm-up, are reported
apart), the GPU memory the trainer process held at its peak (nvidia-smi, sampled every 0.2 s: the whole process,
CUDA context included) and the trainer's own `torch.cuda.max_memory_allocated`. MFU: FLOPs counted analytically as
in bench/bench_train.py (block linears 2x forward, attention 3x forward per LoRA step; gradient checkpointing's
recomputation is not counted as useful work), divided by a bf16 matmul peak measured in the same run
(8192x8192x8192 products, best of 10).

Inputs: the clip is 81 frames of 832x480 moving noise, so the latents are 21x60x104 = 32,760 tokens;
the text encoder is a 2-layer UMT5 of width 4096 (the DiT's text_dim) over 512 tokens; the VAE is the Wan2.1 VAE's
architecture (z 16, stride 4x8x8) with random weights, or for TI2V-5B the Wan2.2 VAE's (the shipped
backend/models/configs/vae-wan2.2: z 48, stride 4x16x16, so the same clip is 21x30x52 latents = 8,190 tokens).
Only the shapes matter for speed and memory.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_files import DEVICE, GpuMemoryPeak, write_dit, write_tokenizer, write_vae  # noqa: E402
from bench_train import forward_flops  # noqa: E402

from backend.models.registry import get_model_kind  # noqa: E402

CAPTION = "a red ball rolls across a wooden table in warm evening light"


def measured_bf16_peak_tflops() -> float:
    if DEVICE == "cpu":
        return float("nan")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 8192 ** 3 / best / 1e12


def write_dataset(work: Path, frames: int, width: int, height: int) -> Path:
    """One clip of moving noise (MPEG-4 part 2 through PyAV, which any ffmpeg build has) and its caption."""
    import av

    videos = work / "data" / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    with av.open(str(videos / "clip_000.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=16)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, shift=4 * index, axis=1), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (videos / "clip_000.txt").write_text(CAPTION + "\n")
    toml = work / "data" / "dataset.toml"
    toml.write_text(
        f"[general]\nresolution = [{width}, {height}]\ncaption_extension = \".txt\"\nbatch_size = 1\n"
        "enable_bucket = true\nbucket_no_upscale = false\n\n"
        f"[[datasets]]\nvideo_directory = \"{videos}\"\ncache_directory = \"{work / 'data' / 'cache'}\"\n"
        f"target_frames = [{frames}]\nframe_extraction = \"head\"\nnum_repeats = 1\n")
    return toml


def write_encoders(work: Path, text_dim: int, wan22_vae: bool = False) -> tuple[Path, Path, Path]:
    """The tokenizer, a 2-layer UMT5 of the DiT's text width (the cache's shape is what training sees) and the VAE."""
    from transformers import UMT5Config, UMT5EncoderModel

    encoder_dir = work / f"text_encoder-{text_dim}"
    if not encoder_dir.exists():
        config = UMT5Config(vocab_size=256, d_model=text_dim, d_kv=min(128, text_dim), d_ff=2 * text_dim, num_layers=2,
                            num_heads=max(1, text_dim // 128), dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                            decoder_start_token_id=0)
        UMT5EncoderModel(config).eval().save_pretrained(encoder_dir)
    return write_tokenizer(work / "tokenizer", CAPTION), encoder_dir, write_vae(work, wan22_vae)


def run_cache(toml: Path, tokenizer: Path, encoder: Path, vae: Path, model: str) -> float:
    start = time.perf_counter()
    for what, extra in (("latents", ["--vae", str(vae), "--vae_tiling", "--model_kind", model]),
                        ("text", ["--text_encoder", str(encoder), "--tokenizer", str(tokenizer)])):
        subprocess.run([sys.executable, "-m", "backend", "cache", what, "--dataset_config", str(toml),
                        "--device", DEVICE, *extra], cwd=ROOT, check=True)
    return time.perf_counter() - start


def train(work: Path, args, dits: dict[str, Path], toml: Path) -> dict:
    job = work / f"job-{int(time.time())}"
    job.mkdir()
    flags = {"model_kind": args.model, "dataset_config": str(toml), "network_dim": str(args.rank),
             "network_alpha": str(args.rank / 2), "mixed_precision": "bf16", "max_train_steps": str(args.steps),
             "log_every_n_steps": "1", "output_dir": str(job / "out"), "output_name": "bench",
             "learning_rate": "1e-4"}
    if "low" in dits:
        flags["dit"], flags["dit_high_noise"] = str(dits["low"]), str(dits["high"])
    else:
        flags["dit"] = str(dits["single"])
    if args.memory_limit_gb:
        flags["memory_limit_gb"] = str(args.memory_limit_gb)
    extra: list[str] = []
    for item in args.set:
        key, _, value = item.partition("=")
        if key == "network_args":
            extra += ["--network_args", value]
        else:
            flags[key] = value
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "backend.train", "--config",
               str(ROOT / "presets" / "lora.json")]
    for key, value in flags.items():
        command += [f"--{key}", value]
    command += extra
    print(" ".join(command), flush=True)
    env = dict(os.environ, LORAID_JOB_DIR=str(job), PYTHONUNBUFFERED="1",
               **({"LORAID_PROFILE_STEPS": args.profile_steps, "LORAID_PROFILE_OUT": str(args.profile_out)}
                  if args.profile_steps else {}),
               PYTHONPATH=os.pathsep.join(filter(None, [str(stack_dumper(work)), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    plan_lines = []
    with GpuMemoryPeak.other_processes() as peak, subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True) as process:
        watch = Watchdog(process, job / "events.jsonl", args.deadline_s, args.stacks_after_s)
        for line in process.stdout:
            print(f"[{time.perf_counter() - start:6.0f}s] {line}", end="", flush=True)
            if line.startswith(("memory=", "torch.compile", "attention")):
                plan_lines.append(line.strip())
        watch.stop()
    result = process
    wall = time.perf_counter() - start
    events_file = job / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()] \
        if events_file.exists() else []
    if result.returncode != 0 and not watch.stopped_at_deadline:
        errors = [e.get("message") for e in events if e["event"] == "error"]
        raise SystemExit(f"trainer failed (exit {result.returncode}): {errors}")
    steps = [e for e in events if e["event"] == "step"]
    times = [e["t"] for e in steps]
    gaps = [b - a for a, b in zip(times, times[1:])]
    timed = gaps[args.warmup - 1:] if args.warmup >= 1 else gaps
    start_event = next((e for e in events if e["event"] == "start"), {"t": float("nan")})
    if not timed:
        print(f"BENCH-PARTIAL {len(steps)} step(s) inside the deadline; no step time to report", flush=True)
        timed = [float("nan")]
    return {"s_per_it": statistics.median(timed), "s_per_it_mean": statistics.fmean(timed), "timed_steps": len(timed),
            "stopped_at_deadline": watch.stopped_at_deadline,
            "first_step_s": times[0] - start_event["t"] if times else None,
            "peak_trainer_process_mib": peak.peak_mib,
            "max_memory_allocated_gib": round(max((e.get("vram") or 0 for e in steps), default=0) / 2**30, 2),
            "losses": [round(e["loss"], 4) for e in steps], "wall_s": round(wall, 1),
            "plan": plan_lines}


def stack_dumper(work: Path) -> Path:
    """A sitecustomize that makes every Python process of the trainer print all its threads' stacks on SIGUSR1."""
    folder = work / "stack-dumper"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import faulthandler, signal, sys\nfaulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)\n")
    return folder


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return children + [grandchild for child in children for grandchild in descendants(child)]


class Watchdog:
    """Stops the trainer `deadline_s` after it started (what it logged so far is still reported), and while no
    new step event arrives for `stacks_after_s`, has its processes print their Python stacks (where the time goes)."""

    def __init__(self, process: subprocess.Popen, events: Path, deadline_s: float, stacks_after_s: float) -> None:
        self.process, self.events, self.deadline_s, self.stacks_after_s = process, events, deadline_s, stacks_after_s
        self.stopped_at_deadline = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _steps(self) -> int:
        try:
            return self.events.read_text().count('"event": "step"')
        except OSError:
            return 0

    def _run(self) -> None:
        start = last_progress = time.perf_counter()
        seen = 0
        while not self._stop.wait(5):
            now, steps = time.perf_counter(), self._steps()
            if steps != seen:
                seen, last_progress = steps, now
            if self.deadline_s and now - start > self.deadline_s:
                self.stopped_at_deadline = True
                os.killpg(self.process.pid, signal.SIGKILL)
                return
            if self.stacks_after_s and now - last_progress > self.stacks_after_s:
                for pid in [self.process.pid, *descendants(self.process.pid)]:
                    try:
                        if b"backend.train" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue
                        os.kill(pid, signal.SIGUSR1)
                    except OSError:
                        pass
                last_progress = now

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-1.3b")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="leading steps reported apart (compile, warm-up)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--memory_limit_gb", type=float, default=None, help="the trainer's memory cap (a setting)")
    parser.add_argument("--set", action="append", default=[], help="extra training setting KEY=VALUE")
    parser.add_argument("--dit", type=Path, default=None, help="an existing DiT file of this shape to train on")
    parser.add_argument("--work", type=Path, default=Path("/tmp/loraid-bench"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--deadline_s", type=float, default=0,
                        help="stop the trainer this many seconds after its start and report the steps done by then")
    parser.add_argument("--profile_steps", default=None,
                        help="FIRST:LAST steps to profile (the trainer's LORAID_PROFILE_STEPS); table in --profile_out")
    parser.add_argument("--profile_out", type=Path, default=Path("kernels.txt"))
    parser.add_argument("--stacks_after_s", type=float, default=0,
                        help="print the trainer's Python stacks whenever no step ended for this many seconds")
    args = parser.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    kind = get_model_kind(args.model)
    config = kind.config("low" if kind.has_experts else None)
    peak = measured_bf16_peak_tflops()
    toml = write_dataset(work, args.frames, args.width, args.height)
    tokenizer, encoder, vae = write_encoders(work, int(config["text_dim"]), kind.uses_wan22_vae)
    t0 = time.perf_counter()
    # Both A14B experts read one file (same shape, same speed and memory): two 28.6 GB files do not fit the
    # machine's disk beside the 14B one. --dit reuses a file already written (e.g. the 14B one for A14B).
    expert = "low" if kind.has_experts else None
    single = args.dit or write_dit(work / f"dit-{args.model}{'-' + expert if expert else ''}.safetensors", args.model,
                                   expert)
    dits = {"high": single, "low": single} if kind.has_experts else {"single": single}
    build_s = time.perf_counter() - t0
    print(f"DiT file ready in {build_s:.0f} s", flush=True)
    cache_s = run_cache(toml, tokenizer, encoder, vae, args.model)
    print(f"caches ready in {cache_s:.0f} s", flush=True)
    result = train(work, args, dits, toml)

    spatial = 16 if kind.uses_wan22_vae else 8
    lat_f, lat_h, lat_w = (args.frames - 1) // 4 + 1, args.height // spatial, args.width // spatial
    tokens = lat_f * (lat_h // 2) * (lat_w // 2)
    linear, attention = forward_flops(config, tokens, 512)
    useful = 2 * linear + 3 * attention
    result.update({
        "model": args.model, "settings": args.set, "memory_limit_gb": args.memory_limit_gb,
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__, "tokens": tokens,
        "measured_bf16_peak_tflops": round(peak, 1), "useful_tflop_per_step": round(useful / 1e12, 1),
        "mfu": round(useful / result["s_per_it"] / (peak * 1e12), 3), "dit_write_s": round(build_s, 1),
        "cache_s": round(cache_s, 1),
    })
    if args.profile_steps and args.profile_out.exists():
        print("\n".join(args.profile_out.read_text().splitlines()[:30]))
    print("BENCH " + json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
