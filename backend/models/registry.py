"""The Wan model kinds LORAID Studio knows: shipped diffusers configs, block counts, experts, LoRA targets.

`detect_model_kind` tells which kind a checkpoint is from its tensor shapes alone (read from the file header),
so a mismatched file is refused with one sentence before any weight is loaded.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from backend.errors import UserError
from backend.models.names import BLOCK_LINEARS, I2V_EXTRA_LINEARS, block_index, diffusers_to_wan

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
# The Wan2.2 VAE's diffusers config (architecture and latent statistics as published with TI2V-5B).
WAN22_VAE_CONFIG_DIR = CONFIGS_DIR / "vae-wan2.2"

EXPERTS = ("high", "low")
# Expert name -> the file/folder stem used for it (`high_noise.safetensors`, `configs/<kind>/high_noise/`).
EXPERT_STEMS = {"high": "high_noise", "low": "low_noise"}
# How a file name says which expert it is for: ours `NAME-high_noise`, ai-toolkit's `NAME_high_noise`.
EXPERT_NAME_SEPARATORS = ("-", "_")


def expert_in_name(stem: str) -> tuple[str, str | None]:
    """`alice-high_noise` / `alice_high_noise` -> ("alice", "high"); a stem naming no expert -> (stem, None)."""
    for expert, expert_stem in EXPERT_STEMS.items():
        for separator in EXPERT_NAME_SEPARATORS:
            suffix = separator + expert_stem
            if stem.endswith(suffix) and len(stem) > len(suffix):
                return stem[: -len(suffix)], expert
    return stem, None


def expert_partner(path: Path) -> Path | None:
    """The other expert's file of an A14B LoRA pair named like `path` (`x_high_noise` <-> `x_low_noise`), if it exists."""
    path = Path(path)
    stem, expert = expert_in_name(path.stem)
    if expert is None:
        return None
    separator = path.stem[len(stem)]
    other = next(name for name in EXPERTS if name != expert)
    partner = path.with_name(f"{stem}{separator}{EXPERT_STEMS[other]}{path.suffix}")
    return partner if partner.is_file() else None

# Prefixes other tools put before the original Wan names (ComfyUI full checkpoints, LoRA-style dumps).
CHECKPOINT_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


@dataclass(frozen=True)
class Signature:
    """The architecture facts that tell Wan models apart, as read from tensor shapes."""

    dim: int
    num_blocks: int
    ffn_dim: int
    in_channels: int
    out_channels: int
    text_dim: int
    image_attention: bool  # cross_attn.k_img / v_img present (Wan2.1 I2V)

    def describe(self) -> str:
        image = ", with image cross-attention (k_img/v_img)" if self.image_attention else ""
        return (f"dim {self.dim}, {self.num_blocks} blocks, ffn {self.ffn_dim}, "
                f"{self.in_channels} input / {self.out_channels} output channels, text_dim {self.text_dim}{image}")


WAN22_LATENT_CHANNELS = 48  # the Wan2.2 VAE's z_dim


@dataclass(frozen=True)
class ModelKind:
    name: str
    label: str
    task: str  # "t2v", "i2v" or "ti2v"
    experts: tuple[str, ...]  # EXPERTS for Wan2.2 A14B-style pairs, () for a single transformer
    timestep_boundary: float | None  # high-noise expert above it, low-noise below (fraction of 1000 steps)

    @property
    def has_experts(self) -> bool:
        return bool(self.experts)

    def config_dir(self, expert: str | None = None) -> Path:
        """The folder holding this kind's diffusers `config.json` (per expert for A14B-style pairs)."""
        if not self.has_experts:
            if expert is not None:
                raise UserError(f"{self.label} has a single transformer; leave the expert unset (got `{expert}`).")
            return CONFIGS_DIR / self.name
        expert = expert or EXPERTS[0]
        if expert not in EXPERT_STEMS:
            raise UserError(f"Unknown expert `{expert}` for {self.label}; choose one of: {', '.join(EXPERTS)}.")
        return CONFIGS_DIR / self.name / EXPERT_STEMS[expert]

    def config(self, expert: str | None = None) -> dict:
        return _read_config(self.config_dir(expert) / "config.json")

    @property
    def num_blocks(self) -> int:
        return int(self.config()["num_layers"])

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Original Wan names of the default LoRA target Linears inside each block (musubi-compatible)."""
        extra = I2V_EXTRA_LINEARS if self.config().get("added_kv_proj_dim") else ()
        return BLOCK_LINEARS + extra

    @property
    def signature(self) -> Signature:
        return signature_from_config(self.config())

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latents this kind denoises: 48 (Wan2.2 VAE) for TI2V, 16 otherwise."""
        config = self.config()
        return int(config.get("out_channels") or config["in_channels"])

    @property
    def uses_wan22_vae(self) -> bool:
        """TI2V-5B and its demo: the Wan2.2 VAE (48 latent channels, 16x spatial compression)."""
        return self.task == "ti2v"


def pixels_per_token(task: str) -> int:
    """Pixels along the width or height per transformer token, so the multiple every size must be: the VAE's spatial
    factor (16 for TI2V-5B's Wan2.2 VAE, 8 for the Wan2.1 VAE) times the transformer's 2x2 patch."""
    return 32 if task == "ti2v" else 16


def task_of_config(config: dict) -> str:
    """t2v / i2v / ti2v of a transformer config: image channels concatenated to the input mean i2v, the Wan2.2 VAE's
    48 latent channels mean ti2v."""
    in_channels = int(config["in_channels"])
    out_channels = int(config.get("out_channels") or in_channels)
    if in_channels > out_channels:
        return "i2v"
    return "ti2v" if out_channels == WAN22_LATENT_CHANNELS else "t2v"


MODEL_KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("wan2.1-t2v-1.3b", "Wan2.1 T2V 1.3B", "t2v", (), None),
    ModelKind("wan2.1-t2v-14b", "Wan2.1 T2V 14B", "t2v", (), None),
    ModelKind("wan2.1-i2v-14b", "Wan2.1 I2V 14B", "i2v", (), None),
    ModelKind("wan2.2-t2v-a14b", "Wan2.2 T2V-A14B", "t2v", EXPERTS, 0.875),
    ModelKind("wan2.2-i2v-a14b", "Wan2.2 I2V-A14B", "i2v", EXPERTS, 0.900),
    ModelKind("wan2.2-ti2v-5b", "Wan2.2 TI2V-5B", "ti2v", (), None),
    ModelKind("demo-t2v", "tiny demo T2V", "t2v", (), None),
    ModelKind("demo-a14b", "tiny demo A14B-style pair", "t2v", EXPERTS, 0.875),
    ModelKind("demo-ti2v", "tiny demo TI2V (Wan2.2 5B-shaped)", "ti2v", (), None),
)}


@lru_cache(maxsize=None)
def _read_config_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _read_config(path: Path) -> dict:
    return json.loads(_read_config_text(path))


def get_model_kind(name: str) -> ModelKind:
    if name not in MODEL_KINDS:
        import difflib

        close = difflib.get_close_matches(name, MODEL_KINDS, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        raise UserError(f"Unknown model type `{name}`{hint}; choose one of: {', '.join(MODEL_KINDS)}.")
    return MODEL_KINDS[name]


def signature_from_config(config: dict) -> Signature:
    return Signature(
        dim=int(config["num_attention_heads"]) * int(config["attention_head_dim"]),
        num_blocks=int(config["num_layers"]),
        ffn_dim=int(config["ffn_dim"]),
        in_channels=int(config["in_channels"]),
        out_channels=int(config.get("out_channels") or config["in_channels"]),
        text_dim=int(config["text_dim"]),
        image_attention=bool(config.get("added_kv_proj_dim")),
    )


def strip_checkpoint_prefix(name: str) -> str:
    for prefix in CHECKPOINT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def uses_diffusers_names(names) -> bool:
    return any("condition_embedder." in n or ".attn1." in n or n.startswith("proj_out.") for n in names)


def to_wan_names(tensor_shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Shapes keyed by original Wan names, whatever the file used (diffusers names, ComfyUI prefix)."""
    stripped = {strip_checkpoint_prefix(k): tuple(v) for k, v in tensor_shapes.items()}
    if uses_diffusers_names(stripped):
        return {diffusers_to_wan(k): v for k, v in stripped.items()}
    return stripped


def signature_from_shapes(tensor_shapes: dict[str, tuple], source: str = "This checkpoint") -> Signature:
    shapes = to_wan_names(tensor_shapes)
    patch = shapes.get("patch_embedding.weight")
    head = shapes.get("head.head.weight")
    blocks = {block_index(k) for k in shapes} - {None}
    if patch is None or head is None or not blocks or len(patch) != 5:
        sample = ", ".join(sorted(tensor_shapes)[:3]) or "no tensors"
        raise UserError(f"{source} is not a Wan transformer checkpoint (no patch_embedding / head / blocks tensors; "
                        f"it starts with {sample}); pick the transformer (DiT) file.")
    ffn = shapes.get("blocks.0.ffn.0.weight")
    text = shapes.get("text_embedding.0.weight")
    if ffn is None or text is None:
        raise UserError(f"{source} lacks blocks.0.ffn.0 or text_embedding.0 weights, so it is not a complete Wan "
                        f"transformer; pick the full transformer (DiT) file.")
    return Signature(
        dim=int(patch[0]),
        num_blocks=len(blocks),
        ffn_dim=int(ffn[0]),
        in_channels=int(patch[1]),
        out_channels=int(head[0]) // math.prod(patch[2:]),
        text_dim=int(text[1]),
        image_attention="blocks.0.cross_attn.k_img.weight" in shapes,
    )


def kinds_matching(tensor_shapes: dict[str, tuple], source: str = "This checkpoint") -> list[str]:
    """Every kind whose architecture fits these shapes (Wan2.1 T2V 14B and each Wan2.2 T2V-A14B expert share one)."""
    found = signature_from_shapes(tensor_shapes, source)
    return [name for name, kind in MODEL_KINDS.items() if kind.signature == found]


def detect_model_kind(tensor_shapes: dict[str, tuple], source: str = "This checkpoint") -> str:
    """The first kind in MODEL_KINDS order that fits; UserError naming what was found when none does."""
    matches = kinds_matching(tensor_shapes, source)
    if not matches:
        found = signature_from_shapes(tensor_shapes, source)
        raise UserError(f"{source} ({found.describe()}) matches no known Wan model ({', '.join(MODEL_KINDS)}); "
                        f"pass the folder of its diffusers config.json to load it.")
    return matches[0]


def check_model_kind(tensor_shapes: dict[str, tuple], kind_name: str, source: str = "This checkpoint") -> None:
    """Refuse a checkpoint that is not the expected kind, with one sentence naming expected and found."""
    kind = get_model_kind(kind_name)
    found = signature_from_shapes(tensor_shapes, source)
    if found != kind.signature:
        others = [MODEL_KINDS[n].label for n in MODEL_KINDS if MODEL_KINDS[n].signature == found]
        found_text = f"looks like {others[0]} ({found.describe()})" if others else f"has {found.describe()}"
        raise UserError(f"{source} {found_text}, but {kind.label} was expected "
                        f"({kind.signature.describe()}); pick the matching model type or file.")
