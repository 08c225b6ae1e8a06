"""Assemble a diffusers Wan pipeline for a generation: the demo models of a workspace or a user's own files, offline.

T2V / T2I use `WanPipeline`; a start image needs an I2V model and uses `WanImageToVideoPipeline`. Wan2.2 TI2V-5B
does both with one transformer: both pipelines run it with `expand_timesteps=True` (a timestep per token; from a start
image the first latent frame is the clean image latent at timestep 0) and with its Wan2.2 VAE. A Wan2.2 A14B
pair becomes `transformer` (high-noise expert) + `transformer_2` (low-noise) with the kind's `boundary_ratio`, so
diffusers switches experts at the boundary timestep and applies `guidance_scale_2` to the low-noise one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.errors import UserError
from backend.generate.options import DEMO_MODELS, named
from backend.models.registry import (EXPERTS, MODEL_KINDS, WAN22_LATENT_CHANNELS, get_model_kind, pixels_per_token,
                                     task_of_config)
from backend.workspace import Workspace


@dataclass(frozen=True)
class ModelChoice:
    """Which transformer(s) and companions to load. Either `model` (a demo model) or `dit` (1 or 2 files)."""
    workspace: Path | None = None
    model: str | None = None
    dit: tuple[str, ...] = ()
    model_kind: str | None = None
    vae: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None
    image_encoder: str | None = None
    boundary_ratio: float | None = None

    @property
    def roles(self) -> list[str]:
        """The transformers this choice loads: ["main"], or ["high", "low"] for an expert pair."""
        kind = self.model or self.model_kind
        pair = (isinstance(kind, str) and kind in MODEL_KINDS and get_model_kind(kind).has_experts) or len(self.dit) == 2
        return list(EXPERTS) if pair else ["main"]

    def describe(self) -> dict:
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in self.__dict__.items()}


@dataclass
class LoadedModel:
    pipeline: object
    transformers: dict[str, object]  # "main", or "high" / "low" for an A14B pair -> WanTransformer3DModel
    task: str  # t2v | i2v | ti2v
    label: str
    boundary_ratio: float | None = None
    extras: dict = field(default_factory=dict)


def _folder(path: str | Path | None, name: str) -> Path:
    """The folder of the companion setting `name` (vae, text_encoder, ...), which must exist."""
    if path is None:
        raise UserError(f"No {named(name)} was given; give a diffusers / transformers folder.")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{named(name)} {folder} does not exist; give an existing folder, or leave it empty to use "
                        f"the workspace's.")
    return folder


def companion_folders(choice: ModelChoice, latent_channels: int | None = None) -> tuple[Path, Path, Path]:
    """(VAE, text encoder, tokenizer) folders: the ones given, else the workspace's (its Wan2.2 VAE for a TI2V
    model, named by its kind or known by its 48 latent channels)."""
    from backend.models.demo import demo_vae_folder

    ws = Workspace(choice.workspace) if choice.workspace is not None else None
    kind = choice.model or choice.model_kind
    kind = kind if kind in MODEL_KINDS else ("demo-ti2v" if latent_channels == WAN22_LATENT_CHANNELS else None)
    demo_vae = demo_vae_folder(ws, kind) if ws is not None else None

    def pick(given, default, name):
        return _folder(given if given is not None else default, name)

    return (pick(choice.vae, demo_vae, "vae"), pick(choice.text_encoder, ws and ws.text_encoder, "text_encoder"),
            pick(choice.tokenizer, ws and ws.tokenizer, "tokenizer"))


@dataclass(frozen=True)
class WeightsChoice:
    """How the transformer(s) are held: `dtype` (bf16 by default; the fp32 of old doubles the memory for nothing a
    sampler can see) and `storage` ("fp8_scaled": block Linears in fp8 + per-row scales, loaded straight from a
    ComfyUI scaled-fp8 file; quantised on `work_device` otherwise). Text encoder and VAE keep their usual dtypes."""
    dtype: torch.dtype = torch.bfloat16
    storage: str | None = None
    work_device: str | None = None
    text_encoder_dtype: torch.dtype = torch.float32


def _transformers(choice: ModelChoice, weights: WeightsChoice = WeightsChoice()) -> tuple[dict, str, str, float | None]:
    """(transformers by role, task, label, boundary ratio)."""
    from functools import partial

    from backend.models.demo import demo_transformer_file, expert_file
    from backend.models.loading import load_transformer as load_any

    load_transformer = partial(_load_as, load_any, weights)

    if choice.model is not None:
        if choice.dit:
            raise UserError(f"Give either {named('model')} or {named('dit')} (your own files), not both.")
        if choice.model not in DEMO_MODELS:
            raise UserError(f"Unknown demo model `{choice.model}`; choose one of: {', '.join(DEMO_MODELS)}, "
                            f"or give your own files as {named('dit')}.")
        ws = Workspace(choice.workspace or ".")
        if not ws.exists():
            raise UserError(f"{ws.root} is not a demo workspace; create it with `python -m backend demo "
                            f"--workspace {ws.root}` or give the {named('workspace')}.")
        kind = get_model_kind(choice.model)
        if not kind.has_experts:
            path = demo_transformer_file(ws, kind.name)
            if not path.exists():
                raise UserError(f"The workspace has no {kind.name} model ({path} is missing); rebuild the demo parts "
                                f"with `python -m backend demo --workspace {ws.root} --force`.")
            return {"main": load_transformer(path)}, kind.task, kind.label, None
        pair = {expert: load_transformer(expert_file(ws, expert)) for expert in EXPERTS}
        return pair, kind.task, kind.label, choice.boundary_ratio or kind.timestep_boundary
    if not choice.dit:
        raise UserError(f"No model was chosen; choose a {named('model')} ({' / '.join(DEMO_MODELS)}) or give "
                        f"your {named('dit')}.")
    for path in choice.dit:
        if not Path(path).expanduser().exists():
            raise UserError(f"The transformer file {path} does not exist; check the {named('dit')}.")
    kind = get_model_kind(choice.model_kind) if choice.model_kind in MODEL_KINDS else None
    source = choice.model_kind  # a kind name or a config folder (None: detect)
    if kind is not None and kind.has_experts:
        if len(choice.dit) != 2:
            raise UserError(f"{kind.label} has two experts; give two {named('dit')}: high-noise, then low-noise.")
        pair = {expert: load_transformer(path, source, expert=expert) for expert, path in zip(EXPERTS, choice.dit)}
        return pair, kind.task, kind.label, choice.boundary_ratio or kind.timestep_boundary
    if len(choice.dit) == 2:
        if choice.boundary_ratio is None:
            raise UserError(f"Two {named('dit')} make an expert pair; choose an A14B {named('model_kind')} or give "
                            f"the {named('boundary_ratio')} to say where the experts switch.")
        pair = {expert: load_transformer(path, source) for expert, path in zip(EXPERTS, choice.dit)}
        return pair, _task_of(pair["high"]), "expert pair", choice.boundary_ratio
    if len(choice.dit) > 2:
        raise UserError(f"{named('dit')} takes one file, or two for an expert pair; got {len(choice.dit)}.")
    model = load_transformer(choice.dit[0], source)
    label = kind.label if kind else Path(choice.dit[0]).name
    return {"main": model}, kind.task if kind else _task_of(model), label, None


def _load_as(load, weights: WeightsChoice, path, source=None, expert=None):
    return load(path, source, dtype=weights.dtype, expert=expert, storage=weights.storage,
                work_device=weights.work_device)


def transformer_config(choice: ModelChoice) -> dict:
    """The diffusers config of the transformer(s) `choice` loads (an expert pair shares one shape), read from
    headers and config files only: what the memory plan needs before any weight is loaded."""
    import json

    from backend.models.loading import resolve_config_dir

    if choice.model is not None:
        kind = get_model_kind(choice.model)
        return kind.config(EXPERTS[0] if kind.has_experts else None)
    if not choice.dit:
        raise UserError(f"No model was chosen; choose a {named('model')} ({' / '.join(DEMO_MODELS)}) or give "
                        f"your {named('dit')}.")
    kind = get_model_kind(choice.model_kind) if choice.model_kind in MODEL_KINDS else None
    expert = EXPERTS[0] if kind is not None and kind.has_experts else None
    folder, _ = resolve_config_dir(choice.dit[0], choice.model_kind, expert)
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def _task_of(model) -> str:
    return task_of_config(dict(model.config))


def accepts_image(task: str) -> bool:
    return task in ("i2v", "ti2v")


def check_size(settings, task: str) -> None:
    """TI2V-5B's Wan2.2 VAE compresses 16x and its transformer takes 2x2 patches: sizes are multiples of 32."""
    multiple = pixels_per_token(task)
    for name, value in (("width", settings.width), ("height", settings.height)):
        if value % multiple:
            nearest = max(multiple, round(value / multiple) * multiple)
            raise UserError(f"{named(name)} = {value} is not a multiple of {multiple}, which this model needs (its VAE "
                            f"compresses {multiple // 2}x and it takes 2x2 patches); use {nearest}.")


def load_model(choice: ModelChoice, scheduler, image: bool = False, weights: WeightsChoice = WeightsChoice()
               ) -> LoadedModel:
    """The pipeline for `choice`, with `scheduler`; `image` True builds the image-to-video pipeline."""
    from diffusers import AutoencoderKLWan, WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    from backend.models.demo import _quiet_progress_bars

    transformers, task, label, boundary = _transformers(choice, weights)
    first = transformers.get("main", transformers.get("high"))
    latent_channels = first.config.out_channels or first.config.in_channels
    vae_dir, encoder_dir, tokenizer_dir = companion_folders(choice, latent_channels)
    if image and not accepts_image(task):
        raise UserError(f"{label} is a text-to-video model, so it cannot start from an image; pick an image-to-video "
                        f"model or remove the {named('image')}.")
    if not image and task == "i2v":
        raise UserError(f"{label} is an image-to-video model; give a {named('image')}.")
    vae = AutoencoderKLWan.from_pretrained(str(vae_dir), local_files_only=True).eval()
    if vae.config.z_dim != latent_channels:
        wanted = "the Wan2.2 VAE" if latent_channels == WAN22_LATENT_CHANNELS else "the Wan2.1 VAE"
        raise UserError(f"The VAE in {vae_dir} makes {vae.config.z_dim}-channel latents, but {label} denoises "
                        f"{latent_channels}; give {wanted} as the {named('vae')}.")
    with _quiet_progress_bars():
        text_encoder = UMT5EncoderModel.from_pretrained(str(encoder_dir), local_files_only=True,
                                                        torch_dtype=weights.text_encoder_dtype).eval()
    parts = dict(
        tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True), text_encoder=text_encoder,
        vae=vae, scheduler=scheduler, transformer=first, transformer_2=transformers.get("low"),
        boundary_ratio=boundary)
    if task == "ti2v":
        parts["expand_timesteps"] = True  # a timestep per token; from an image, frame 0's tokens get 0
    if image:
        from diffusers import WanImageToVideoPipeline

        parts.update(_image_encoder_parts(choice, first))
        pipeline = WanImageToVideoPipeline(**parts)
    else:
        pipeline = WanPipeline(**parts)
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline, transformers, task, label, boundary)


def ti2v_pipeline(pipeline, image: bool):
    """The same TI2V model in the other diffusers pipeline (image- or text-to-video), sharing every component."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    parts = {name: getattr(pipeline, name) for name in ("tokenizer", "text_encoder", "vae", "scheduler",
                                                         "transformer", "transformer_2")}
    cls = WanImageToVideoPipeline if image else WanPipeline
    other = cls(**parts, boundary_ratio=pipeline.config.boundary_ratio, expand_timesteps=True)
    other.set_progress_bar_config(disable=True)
    return other


def _image_encoder_parts(choice: ModelChoice, transformer) -> dict:
    """Wan2.1 I2V reads CLIP image features (image_dim set); Wan2.2 I2V has none."""
    if not transformer.config.image_dim:
        return {}
    from transformers import CLIPImageProcessor, CLIPVisionModel

    folder = _folder(choice.image_encoder, "image_encoder")
    return {"image_encoder": CLIPVisionModel.from_pretrained(str(folder), local_files_only=True).eval(),
            "image_processor": CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)}
