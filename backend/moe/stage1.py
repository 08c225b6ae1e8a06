"""Stage 1 is ordinary training; this renders its target choice as network_args (what `backend.train` reads).

    stage1_network_args(blocks=[32, ..., 39], ffn_blocks=[37, 38, 39], rank_q=8, rank_kvo=4, rank_ffn=4)
    -> ["exclude_patterns=['.*']", "include_patterns=[...]", "rank_q=8", "rank_kvo=4", "rank_ffn=4"]

The seed's example (Wan2.2 A14B, 40 blocks): attention q/k/v/o of the last 8 blocks, q at rank 8, k/v/o at 4, the
first FFN linear of the last 3 blocks at rank 4. Attention means both self- and cross-attention unless `attention`
says otherwise.
"""
from __future__ import annotations

from typing import Sequence

from backend.errors import UserError

ATTENTION = {"self": "self_attn", "cross": "cross_attn", "both": "(self_attn|cross_attn)"}


def parse_blocks(text: str, num_blocks: int) -> list[int]:
    """`"32-39"`, `"0,1,5-7"`, `"last 8"` -> block indices, checked against the model's block count."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("last"):
        count = int(text.split()[1])
        if not 1 <= count <= num_blocks:
            raise UserError(f"`{text}`: the model has {num_blocks} blocks; pick last 1 to last {num_blocks}.")
        return list(range(num_blocks - count, num_blocks))
    blocks: set[int] = set()
    for part in text.replace(" ", "").split(","):
        try:
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
        except ValueError:
            raise UserError(f"block list `{text}`: write blocks like `32-39`, `0,1,5-7` or `last 8`.") from None
        if not 0 <= first <= last < num_blocks:
            raise UserError(f"block list `{text}`: blocks go from 0 to {num_blocks - 1} on this model.")
        blocks.update(range(first, last + 1))
    return sorted(blocks)


def _alternation(blocks: Sequence[int]) -> str:
    return "(" + "|".join(str(b) for b in blocks) + ")"


def stage1_network_args(blocks: Sequence[int], ffn_blocks: Sequence[int] = (), *, rank_q: int | None = None,
                        rank_kvo: int | None = None, rank_ffn: int | None = None, attention: str = "both",
                        ffn_layers: str = "0") -> list[str]:
    if not blocks and not ffn_blocks:
        raise UserError("choose at least one block for attention or for the FFN.")
    if attention not in ATTENTION:
        raise UserError(f"attention `{attention}`: use self, cross or both.")
    include = []
    if blocks:
        include.append(rf"blocks\.{_alternation(blocks)}\.{ATTENTION[attention]}\.(q|k|v|o)")
    if ffn_blocks:
        layers = {"0": "0", "2": "2", "both": "(0|2)"}[ffn_layers]
        include.append(rf"blocks\.{_alternation(ffn_blocks)}\.ffn\.{layers}")
    args = ["exclude_patterns=['.*']", f"include_patterns={include!r}"]
    for key, value in (("rank_q", rank_q), ("rank_kvo", rank_kvo), ("rank_ffn", rank_ffn)):
        if value is not None:
            args.append(f"{key}={int(value)}")
    return args
