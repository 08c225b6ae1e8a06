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

from backend.errors import UserError, refuse_first
from backend.output_guard import check_folder
from backend.generate.engine import GenerateSession, LoraRequest, Stopped, decode_latents
from backend.generate.memory import MemoryOptions
from backend.generate.options import (Companions, LoraOptions, ModelSource, MoeOptions, add_job_arguments,
                                      check_moe_options, lora_problems, named, part_of)
from backend.generate.outputs import output_stem, read_latents, write_result
from backend.generate.pipeline import ModelChoice
from backend.generate.prompts import settings_from_file
from backend.generate.settings import GenerateSettings, validate
from backend.jobs.protocol import JobContext
from backend.loraid.cli_args import resolve_loraids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every part of the Generate job (backend/generate/options.py), one group per part."""
    add_job_arguments(parser)


def _base_settings(args: argparse.Namespace) -> GenerateSettings:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
    return part_of(args, GenerateSettings, prompt=args.prompt or "", seed=seed)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out_dir:
        folder = Path(args.out_dir).expanduser()
        check_folder(folder, None, outside_confirmed=True)
        return folder
    if args.workspace:
        from backend.workspace import Workspace

        return Workspace(args.workspace).outputs
    raise UserError(f"No output folder; give {named('out_dir')} or {named('workspace')} (outputs go to the "
                    f"workspace's outputs folder).")


def _choice(args: argparse.Namespace) -> ModelChoice:
    source, parts = part_of(args, ModelSource), part_of(args, Companions)
    return ModelChoice(workspace=Path(args.workspace).expanduser() if args.workspace else None, model=source.model,
                       dit=tuple(source.dit), model_kind=source.model_kind, boundary_ratio=source.boundary_ratio,
                       **parts.model_dump())


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
            raise UserError(f"Give either {named('prompt')} or {named('from_file')}, not both.")
        batch = settings_from_file(args.from_file, base)
    else:
        batch = [validate(base)]
    loras = part_of(args, LoraOptions)
    refuse_first(lora_problems(loras))
    lora_request = LoraRequest(files=list(loras.lora), loraids=resolve_loraids(loras.loraid),
                               multipliers=list(loras.multiplier) or None,
                               allow_overlap=loras.allow_overlap, hooked=loras.hooked)
    memory = part_of(args, MemoryOptions)
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
    options = part_of(args, MoeOptions)
    check_moe_options(options)
    if not options.moe:
        return None
    from backend.moe.inference import MoeRequest, parse_strengths

    return MoeRequest(options.moe, options.hint, parse_strengths(options.expert_strength), options.router_ema)


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
