"""One generation session: load the model once, put the LoRAs on it, then denoise and decode any number of prompts.

    session = GenerateSession(ModelChoice(workspace=ws, model="demo-t2v"), LoraRequest(["a.safetensors"]))
    latents = session.denoise(GenerateSettings(prompt="a red ball", width=32, height=32, frames=5, steps=2))
    frames = session.decode(latents)          # numpy [F, H, W, 3] in [0, 1]

LoRAs are merged into the in-memory weights by default; `hooked=True` keeps them as live adapters whose
`network.multiplier` can be changed between runs (`session.networks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch

from backend.errors import UserError
from backend.adapters.dora_base import file_base_warning
from backend.generate.loras import PickedLora, by_transformer, check_overlaps, hook_into, merge_into, pick_loras
from backend.generate.memory import (DTYPES, WAN_SIZE, MemoryOptions, adapter_device, apply_memory_options,
                                     check_memory_options, folder_bytes, plan_memory)
from backend.generate.offload import offload_all
from backend.generate.options import named
from backend.generate.pipeline import (LoadedModel, ModelChoice, WeightsChoice, check_size, companion_folders,
                                       load_model, ti2v_pipeline, transformer_config)
from backend.models.fp8_scaled import store_scaled_fp8
from backend.generate.settings import GenerateSettings, make_scheduler, validate

StepCallback = Callable[[int, int], bool]  # (steps done, total) -> True to stop


@dataclass(frozen=True)
class LoraRequest:
    files: list[str] = field(default_factory=list)
    loraids: list[int] = field(default_factory=list)
    multipliers: list[float] | None = None
    allow_overlap: bool = False
    hooked: bool = False


class Stopped(Exception):
    """The user asked to stop during denoising."""


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where `module` computes: its CPU-offload hook's GPU when it has one (its weights may wait on the CPU until
    the call), else where its weights are."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    return torch.device(device) if device is not None else next(module.parameters()).device


def decode_video(vae, latents: torch.Tensor) -> torch.Tensor:
    """Wan latents -> the VAE's video tensor [B, 3, F, H, W] in [-1, 1] (the Wan pipelines' un-normalisation).

    The latents go where the VAE will compute, not where its weights are now: under CPU offload the weights wait on
    the CPU and move to the GPU inside `vae.decode`, so latents sent to the weights' device would reach a CUDA
    convolution as CPU tensors (`aten::slow_conv3d_forward ... 'CUDA' backend`)."""
    latents = latents.to(execution_device(vae), vae.dtype)
    z_dim = vae.config.z_dim
    if latents.dim() != 5 or latents.shape[1] != z_dim:
        raise UserError(f"The latents have shape {tuple(latents.shape)}, but this VAE decodes "
                        f"[batch, {z_dim}, frames, height, width]; decode them with the VAE they were made for.")
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(latents)
    with torch.no_grad():
        return vae.decode(latents / inv_std + mean, return_dict=False)[0]


def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """Wan latents -> frames [F, H, W, 3] in [0, 1] (the same un-normalisation and decode as the Wan pipelines)."""
    from diffusers.video_processor import VideoProcessor

    video = decode_video(vae, latents)
    frames = VideoProcessor(vae_scale_factor=8).postprocess_video(video.float().cpu(), output_type="np")
    return np.asarray(frames)[0]


class GenerateSession:
    def __init__(self, choice: ModelChoice, loras: LoraRequest | None = None, memory: MemoryOptions | None = None,
                 image_to_video: bool = False, warn: Callable[[str], None] = print, moe=None,
                 plan_size: tuple[int, int, int] = WAN_SIZE, log: Callable[[str], None] = print) -> None:
        """`plan_size` (frames, height, width): the largest video this session will make, for memory=auto."""
        self.choice = choice
        self.lora_request = loras or LoraRequest()
        self.memory = memory or MemoryOptions()
        check_memory_options(self.memory)
        config = transformer_config(choice)
        vae_dir, encoder_dir, _ = companion_folders(choice, config.get("out_channels") or config["in_channels"])
        self.memory = plan_memory(self.memory, config, len(choice.roles), plan_size,
                                  folder_bytes(encoder_dir, 2), folder_bytes(vae_dir, 4), log)
        model_kind = choice.model or (choice.model_kind if isinstance(choice.model_kind, str) else None)
        self.loras: list[PickedLora] = pick_loras(self.lora_request.files, self.lora_request.loraids,
                                                  self.lora_request.multipliers, choice.workspace, model_kind)
        placed = by_transformer(self.loras, choice.roles)
        for warning in check_overlaps(placed, self.lora_request.allow_overlap):
            warn(f"warning: overlapping LoRAs allowed: {warning}")
        gpu = torch.cuda.is_available()
        merged = bool(self.loras) and not self.lora_request.hooked
        # scaled fp8 loads straight into its storage unless LoRAs are merged first (into full-precision weights)
        weights = WeightsChoice(dtype=DTYPES[self.memory.dtype],
                                storage="fp8_scaled" if self.memory.fp8_scaled and not merged else None,
                                work_device="cuda" if gpu else None,
                                text_encoder_dtype=torch.bfloat16 if gpu else torch.float32)
        self.model: LoadedModel = load_model(choice, make_scheduler("unipc", 3.0), image=image_to_video,
                                             weights=weights)
        self.networks = []
        self._other_pipeline = None
        for role, loras in placed.items():
            transformer = self.model.transformers[role]
            for lora in loras:
                mismatch = file_base_warning(transformer, lora.file.flags, lora.label)
                if mismatch:
                    warn(f"warning: {mismatch}")
            if self.lora_request.hooked:
                self.networks += hook_into(transformer, loras)
            else:
                merge_into(transformer, loras)
        self.moe = _attach_moe(self.model.transformers, moe, warn, tuple(choice.dit)) if moe is not None else None
        if self.memory.fp8_scaled and merged:
            for transformer in self.model.transformers.values():
                store_scaled_fp8(transformer, weights.work_device)
        apply_memory_options(self.model.pipeline, self.model.transformers, self.memory, self.model.label)
        for network in self.networks:
            network.to(adapter_device())

    @property
    def pipeline(self):
        return self.model.pipeline

    def denoise(self, settings: GenerateSettings, on_step: StepCallback | None = None) -> torch.Tensor:
        """The final latents [1, C, F', H/s, W/s] of one prompt (s: the VAE's spatial factor, 8 or 16 for TI2V);
        raises Stopped when on_step returns True."""
        validate(settings)
        check_size(settings, self.model.task)
        pipe = self._pipeline_for(settings)
        if settings.guidance_scale_2 is not None and self.model.boundary_ratio is None:
            raise UserError(f"{named('guidance_scale_2')} sets the low-noise expert's guidance, and this model has "
                            f"a single transformer; leave it empty.")
        pipe.scheduler = make_scheduler(settings.sampler, settings.flow_shift)
        if self.moe is not None:
            self.moe.reset()
        stopped = []

        def callback(pipeline, index, timestep, tensors):
            if on_step is not None and on_step(index + 1, settings.steps):
                stopped.append(index + 1)
                pipeline._interrupt = True
            return {}

        kwargs = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt, height=settings.height,
                      width=settings.width, num_frames=settings.frames, num_inference_steps=settings.steps,
                      guidance_scale=settings.guidance_scale, generator=torch.Generator().manual_seed(settings.seed),
                      output_type="latent", callback_on_step_end=callback)
        if self.model.boundary_ratio is not None:
            kwargs["guidance_scale_2"] = settings.guidance_scale_2
        if settings.image is not None:
            from PIL import Image

            with Image.open(settings.image) as image:
                kwargs["image"] = image.convert("RGB")
        offload_all(pipe)  # a previous prompt's VAE / expert leave the GPU before encoding
        with torch.no_grad():
            latents = pipe(**kwargs).frames
        if stopped:
            raise Stopped(f"stopped after step {stopped[0]} of {settings.steps}")
        return latents

    def _pipeline_for(self, settings: GenerateSettings):
        """The session's pipeline, or for TI2V-5B (one transformer for both tasks) the other one on the same
        components when a prompt does (not) bring a start image."""
        from diffusers import WanImageToVideoPipeline

        is_image = isinstance(self.pipeline, WanImageToVideoPipeline)
        if self.model.task != "ti2v" or is_image == (settings.image is not None):
            if is_image and settings.image is None:
                raise UserError(f"This is an image-to-video model; add a {named('image')}.")
            return self.pipeline
        if self._other_pipeline is None:
            self._other_pipeline = ti2v_pipeline(self.pipeline, image=not is_image)
        return self._other_pipeline

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        frames = decode_latents(self.pipeline.vae, latents)
        offload_all(self.pipeline)
        return frames

    def record(self, settings: GenerateSettings) -> dict:
        """Everything needed to reproduce one result: the sidecar JSON (also stored in the mp4 / png / latents)."""
        import diffusers

        return {
            "settings": settings.to_dict(), "seed": settings.seed,
            "model": {**self.choice.describe(), "label": self.model.label, "task": self.model.task,
                      "boundary_ratio": self.model.boundary_ratio},
            "loras": [lora.describe() for lora in self.loras],
            "lora_mode": "hooked" if self.lora_request.hooked else "merged",
            "allow_overlap": self.lora_request.allow_overlap,
            "memory": self.memory.to_dict(),
            **({"moe": self.moe.record()} if self.moe is not None else {}),
            "diffusers_version": diffusers.__version__,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _attach_moe(transformers: dict, request, warn: Callable[[str], None], dit: tuple = ()):
    """A LoRA-MoE file on the transformers (backend/moe/inference.py), its warnings passed on (also when the DiT
    files given are not the stage-1 merge the experts were trained on)."""
    from backend.moe.inference import attach_moe

    from backend.moe.inference import check_stage1

    attached = attach_moe(transformers, request)
    dits = dict(zip(("high", "low") if len(dit) == 2 else ("single",), dit)) if len(dit) in (1, 2) else {}
    for warning in attached.warnings + check_stage1(attached.moe, {k: str(v) for k, v in dits.items()}):
        warn(f"warning: {warning}")
    return attached
