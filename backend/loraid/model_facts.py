"""The model a LORAID allocation is computed for: a model kind name or a checkpoint on disk, read for its facts.

`--model` accepts a MODEL_KINDS name (architecture only, from the shipped config), a transformer checkpoint (file or
folder; its block count and dims come from the tensor shapes in its header), or an A14B-style pair folder holding
`high_noise.safetensors` and `low_noise.safetensors` (the demo workspace's `models/demo-a14b`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.errors import UserError
from backend.loraid.capacity import ModelDims
from backend.models.checkpoint import read_checkpoint_shapes
from backend.models.registry import EXPERT_STEMS, MODEL_KINDS, get_model_kind, kinds_matching, signature_from_shapes


@dataclass(frozen=True)
class ModelFacts:
    name: str | None  # MODEL_KINDS name when known
    label: str
    dims: ModelDims
    experts: tuple[str, ...] = ()  # ("high", "low") for A14B-style pairs
    checkpoints: dict[str | None, Path] = field(default_factory=dict)  # expert (None: single) -> weights

    @property
    def num_blocks(self) -> int:
        return self.dims.num_blocks

    def check_expert(self, expert: str | None) -> None:
        """Experts only on A14B-style pairs; there an unset expert is an error naming the choices."""
        if self.experts and expert is None:
            raise UserError(f"{self.label} has two experts (high and low noise); choose the expert: high, low or "
                        f"both.")
        if not self.experts and expert is not None:
            raise UserError(f"{self.label} has a single transformer, so it has no `{expert}` expert; leave the expert "
                            f"unset.")


def _dims_from_config(config: dict) -> ModelDims:
    added = config.get("added_kv_proj_dim")
    return ModelDims(num_blocks=int(config["num_layers"]),
                     dim=int(config["num_attention_heads"]) * int(config["attention_head_dim"]),
                     ffn_dim=int(config["ffn_dim"]), added_kv_dim=int(added) if added else None)


def facts_for_kind(name: str) -> ModelFacts:
    kind = get_model_kind(name)
    return ModelFacts(kind.name, kind.label, _dims_from_config(kind.config()), kind.experts)


def _facts_from_checkpoint(path: Path) -> tuple[ModelDims, str | None, str]:
    shapes = read_checkpoint_shapes(path)
    signature = signature_from_shapes(shapes, str(path))
    added = None
    if signature.image_attention:
        for key, shape in shapes.items():
            if key.endswith("blocks.0.cross_attn.k_img.weight") or key.endswith("blocks.0.attn2.add_k_proj.weight"):
                added = int(shape[1])
    dims = ModelDims(signature.num_blocks, signature.dim, signature.ffn_dim, added)
    matches = kinds_matching(shapes, str(path))
    name = matches[0] if matches else None
    label = MODEL_KINDS[name].label if name else f"checkpoint {path.name}"
    return dims, name, label


def _expert_pair(folder: Path) -> dict[str, Path] | None:
    files = {expert: folder / f"{stem}.safetensors" for expert, stem in EXPERT_STEMS.items()}
    return files if all(f.is_file() for f in files.values()) else None


def facts_for(model: str | Path) -> ModelFacts:
    """A kind name, a checkpoint file / folder, or an expert-pair folder -> ModelFacts."""
    text = str(model)
    if text in MODEL_KINDS:
        return facts_for_kind(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"`{text}` is neither a model type ({', '.join(MODEL_KINDS)}) nor an existing checkpoint "
                        f"path; pass one of those.")
    pair = _expert_pair(path) if path.is_dir() else None
    if pair is not None:
        dims = {expert: _facts_from_checkpoint(file) for expert, file in pair.items()}
        (high_dims, name, label), (low_dims, _, _) = dims["high"], dims["low"]
        if high_dims != low_dims:
            raise UserError(f"The experts in {path} have different shapes ({high_dims} vs {low_dims}); "
                            f"they are not one A14B-style pair.")
        if name is not None and MODEL_KINDS[name].experts:
            label = MODEL_KINDS[name].label
        else:
            pair_kinds = [k for k in MODEL_KINDS.values() if k.experts and name is not None
                          and MODEL_KINDS[name].signature == k.signature]
            name, label = (pair_kinds[0].name, pair_kinds[0].label) if pair_kinds else (None, f"expert pair {path.name}")
        return ModelFacts(name, label, high_dims, ("high", "low"), dict(pair))
    dims, name, label = _facts_from_checkpoint(path)
    if name is not None and MODEL_KINDS[name].experts:
        singles = [k for k in MODEL_KINDS if not MODEL_KINDS[k].experts and MODEL_KINDS[k].signature
                   == MODEL_KINDS[name].signature]
        name = singles[0] if singles else name
        label = MODEL_KINDS[name].label if name else label
    return ModelFacts(name, label, dims, (), {None: path})
