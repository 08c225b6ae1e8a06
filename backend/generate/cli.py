"""`python -m backend generate`: text/image-to-video and text-to-image on Wan models with any set of LoRAs / LORAIDs.

    python -m backend generate --workspace W --model demo-t2v --prompt "a red ball" --width 32 --height 32 \
        --frames 5 --steps 4 --loraid 1 2 --multiplier 1.0 0.7
    python -m backend generate --dit high.safetensors low.safetensors --model_kind wan2.2-t2v-a14b \
        --vae VAE --text_encoder TE --tokenizer TOK --prompt "..." --guidance_scale 4 --guidance_scale_2 3
    python -m backend generate --workspace W --model demo-t2v --from_file prompts.txt
    python -m backend generate --workspace W --decode_latents W/outputs/20260101-120000_42.safetensors
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from backend.config.settings import add_setting_arguments
from backend.errors import UserError
from backend.output_guard import check_folder
from backend.generate.engine import GenerateSession, LoraRequest, Stopped, decode_latents
from backend.generate.memory import MemoryOptions
from backend.generate.outputs import output_stem, read_latents, write_result
from backend.generate.pipeline import DEMO_MODELS, ModelChoice
from backend.generate.prompts import settings_from_file
from backend.generate.settings import GenerateSettings, validate
from backend.jobs.protocol import JobContext
from backend.loraid.cli_args import add_loraid_arguments, add_multiplier_argument, flatten_appended, resolve_loraids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--workspace", default=None, help="workspace folder: demo models, LoRA registry, outputs")
    model.add_argument("--model", choices=DEMO_MODELS, default=None, help="a demo model of the workspace")
    model.add_argument("--dit", nargs="+", default=None, metavar="FILE",
                       help="your transformer file (two for a Wan2.2 A14B pair: high-noise then low-noise)")
    model.add_argument("--model_kind", default=None, help="model type (e.g. wan2.2-t2v-a14b) or a config folder")
    model.add_argument("--vae", default=None, help="AutoencoderKLWan folder (default: the workspace's)")
    model.add_argument("--text_encoder", default=None, help="UMT5 encoder folder (default: the workspace's)")
    model.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the workspace's)")
    model.add_argument("--image_encoder", default=None, help="CLIP vision folder (Wan2.1 I2V only)")
    model.add_argument("--boundary_ratio", type=float, default=None,
                       help="where an expert pair switches (fraction of 1000 timesteps; default: the model's)")

    gen = parser.add_argument_group("generation")
    add_setting_arguments(gen, GenerateSettings, prompt=None, seed=None)  # no seed: a random one, recorded
    gen.add_argument("--from_file", default=None, metavar="PROMPTS",
                     help="one prompt per line, musubi options after it (--w --h --f --s --d --g --n)")

    lora = parser.add_argument_group("LoRAs")
    lora.add_argument("--lora", nargs="+", action="append", default=None, metavar="FILE", help="LoRA file(s)")
    add_loraid_arguments(lora, allocation_options=False)
    add_multiplier_argument(lora)
    lora.add_argument("--allow_overlap", action="store_true", help="apply LoRAs that change the same weights")
    lora.add_argument("--hooked", action="store_true",
                      help="keep LoRAs as live adapters instead of merging them into the weights (slower steps, "
                           "multipliers changeable without reloading)")

    moe = parser.add_argument_group("LoRA-MoE")
    moe.add_argument("--moe", default=None, metavar="FILE", help="a LoRA-MoE file (experts + router + timestep gate)")
    moe.add_argument("--hint", default=None, metavar="NAME", help="route every sample to this expert (else the "
                                                                 "router chooses)")
    moe.add_argument("--expert_strength", nargs="+", default=None, metavar="NAME=VALUE",
                     help="scale experts, e.g. red=0.8 (`*=X` for all)")
    moe.add_argument("--router_ema", type=float, default=None,
                     help="smooth the router's gates over denoising steps (β in [0, 1); default: the file's)")

    memory = parser.add_argument_group("memory")
    memory.add_argument("--cpu_offload", action="store_true",
                        help="keep idle models (text encoder, transformer, VAE) on the CPU and move each to the GPU "
                             "only while it runs; saves GPU memory, costs a transfer per model per prompt "
                             "(needs a CUDA GPU and accelerate)")
    memory.add_argument("--fp8", action="store_true",
                        help="store transformer weights in fp8 (half of bf16), upcast per layer; costs a small "
                             "loss of precision and some speed; applied after LoRAs are merged or hooked")
    memory.add_argument("--blocks_to_swap", type=int, default=0, metavar="N",
                        help="keep N transformer blocks in CPU memory and copy each to the GPU just before it runs "
                             "(the next one while the current one computes); saves their weights' GPU memory, "
                             "costs transfer time per step")
    memory.add_argument("--fp8_scaled", action="store_true",
                        help="store the transformer's block weights in fp8 with one scale per output row (half of "
                             "bf16, closer to it than --fp8); a ComfyUI scaled-fp8 file loads straight into it")
    memory.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                        help="the transformer's weights and compute (text encoder: bf16 on a GPU; VAE: fp32)")
    memory.add_argument("--memory", choices=["auto", "manual"], default="auto",
                        help="auto: on a GPU, turn on CPU offload, --fp8_scaled and block swap as the model and the "
                             "largest video need (each choice is printed); manual: only the options given")
    memory.add_argument("--memory_limit_gb", type=float, default=None, metavar="GB",
                        help="plan for, and stay under, this much GPU memory (the whole card, e.g. 24)")
    memory.add_argument("--vae_tiling", action="store_true",
                        help="decode the video in tiles; saves VAE memory at large sizes, costs decode time and "
                             "may show faint seams")

    out = parser.add_argument_group("outputs")
    out.add_argument("--out_dir", default=None, help="output folder (default: <workspace>/outputs)")
    out.add_argument("--save_latents", action="store_true", help="also save the final latents (.safetensors)")
    out.add_argument("--save_frames", action="store_true", help="also save every video frame as a png")
    out.add_argument("--decode_latents", default=None, metavar="FILE",
                     help="decode latents saved with --save_latents (needs only the VAE) instead of generating")


def _base_settings(args: argparse.Namespace) -> GenerateSettings:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
    given = {name: getattr(args, name) for name in GenerateSettings.model_fields}
    return GenerateSettings(**{**given, "prompt": args.prompt or "", "seed": seed})


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out_dir:
        folder = Path(args.out_dir).expanduser()
        check_folder(folder, None, outside_confirmed=True)
        return folder
    if args.workspace:
        from backend.workspace import Workspace

        return Workspace(args.workspace).outputs
    raise UserError("No output folder; pass --out_dir DIR or --workspace W (outputs go to W/outputs).")


def _choice(args: argparse.Namespace) -> ModelChoice:
    return ModelChoice(workspace=Path(args.workspace).expanduser() if args.workspace else None, model=args.model,
                       dit=tuple(args.dit or ()), model_kind=args.model_kind, vae=args.vae,
                       text_encoder=args.text_encoder, tokenizer=args.tokenizer, image_encoder=args.image_encoder,
                       boundary_ratio=args.boundary_ratio)


def _decode_only(args: argparse.Namespace, ctx: JobContext) -> int:
    from diffusers import AutoencoderKLWan

    from backend.generate.pipeline import companion_folders

    latents, record = read_latents(args.decode_latents)
    vae_dir = companion_folders(_choice(args), int(latents.shape[1]))[0]
    vae = AutoencoderKLWan.from_pretrained(str(vae_dir), local_files_only=True).eval()
    if args.vae_tiling:
        vae.enable_tiling()
    frames = decode_latents(vae, latents)
    record = {**record, "decoded_from": str(args.decode_latents)}
    record.setdefault("settings", {"fps": args.fps})
    stem = output_stem(_out_dir(args), int(record.get("seed", 0)))
    written = write_result(stem, frames, record, save_frames=args.save_frames)
    ctx.emit("sample", path=written.get("video") or written.get("image"))
    print(f"decoded {args.decode_latents} -> {written.get('video') or written.get('image')}")
    return 0


def generate_all(args: argparse.Namespace, ctx: JobContext) -> list[dict]:
    """Run every prompt of the command line; returns the written paths of each result."""
    base = _base_settings(args)
    if args.from_file:
        if args.prompt:
            raise UserError("Pass either --prompt or --from_file, not both.")
        batch = settings_from_file(args.from_file, base)
    else:
        batch = [validate(base)]
    lora_request = LoraRequest(files=[str(f) for f in flatten_appended(args.lora)], loraids=resolve_loraids(args),
                               multipliers=flatten_appended(args.multiplier) or None,
                               allow_overlap=args.allow_overlap, hooked=args.hooked)
    memory = MemoryOptions(cpu_offload=args.cpu_offload, fp8=args.fp8, vae_tiling=args.vae_tiling,
                           fp8_scaled=args.fp8_scaled, dtype=args.dtype, memory=args.memory,
                           memory_limit_gb=args.memory_limit_gb, blocks_to_swap=args.blocks_to_swap)
    out_dir = _out_dir(args)
    largest = max(batch, key=lambda s: s.frames * s.height * s.width)
    session = GenerateSession(_choice(args), lora_request, memory, image_to_video=args.image is not None,
                              warn=lambda message: (print(message), ctx.emit("warning", message=message)),
                              moe=_moe_request(args),
                              plan_size=(largest.frames, largest.height, largest.width))
    total = sum(settings.steps for settings in batch)
    ctx.emit("start", total=total, prompts=len(batch))
    done, results = 0, []
    started = time.perf_counter()
    for settings in batch:
        print(f"generating {settings.frames}x{settings.height}x{settings.width}, {settings.steps} steps, "
              f"seed {settings.seed}", flush=True)

        def on_step(step: int, steps: int, offset=done) -> bool:
            ctx.emit("progress", step=offset + step, total=total)
            print(f"step {offset + step}/{total} ({time.perf_counter() - started:.1f} s)", flush=True)
            return ctx.stop_requested()

        latents = session.denoise(settings, on_step)
        print("decoding the latents", flush=True)
        done += settings.steps
        record = session.record(settings)
        written = write_result(output_stem(out_dir, settings.seed), session.decode(latents), record,
                               save_frames=args.save_frames, latents=latents if args.save_latents else None)
        ctx.emit("sample", path=written.get("video") or written.get("image"), prompt=settings.prompt,
                 **({"routing": record["moe"]["routing"]} if "moe" in record else {}))
        print(f"wrote {written.get('video') or written.get('image')} (seed {settings.seed})")
        results.append(written)
    return results


def _moe_request(args: argparse.Namespace):
    if not args.moe:
        if args.hint or args.expert_strength:
            raise UserError("--hint and --expert_strength choose experts of a LoRA-MoE file; add --moe FILE.")
        return None
    from backend.moe.inference import MoeRequest, parse_strengths

    if args.router_ema is not None and not 0.0 <= args.router_ema < 1.0:
        raise UserError(f"--router_ema {args.router_ema}: give a β from 0 (no smoothing) up to, not including, 1.")
    return MoeRequest(args.moe, args.hint, parse_strengths(args.expert_strength), args.router_ema)


def translate_argv(argv: list[str]) -> list[str]:
    """The LoRA-MoE fork's inference flags (--lora_moe_weights, --instrument_hint, --alpha_expert) mapped to ours."""
    from backend.moe.seed_flags import translate_generate

    return translate_generate(argv)


def run(args: argparse.Namespace) -> int:
    with JobContext.from_env() as ctx:
        if args.decode_latents:
            return _decode_only(args, ctx)
        try:
            results = generate_all(args, ctx)
        except Stopped as stop:
            print(stop)
            ctx.emit("end", status="stopped")
            return 0
        ctx.emit("end", status="succeeded", outputs=results)
    return 0
