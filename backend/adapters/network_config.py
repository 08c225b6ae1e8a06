"""NetworkConfig: everything that decides an adapter network's shape (network_dim, network_alpha, network_args).

The derived properties hold the defaults in one place: algorithm lora; scale alpha/r (alpha/√r with use_rslora);
convolutions adapted under algo=locon or a positive conv_dim, with conv_dim defaulting to network_dim and conv_alpha
to network_alpha; per-projection ranks (rank_q, rank_k, ...) over rank_kvo over network_dim; dropouts 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from backend.adapters.network_args import NetworkArgs, parse_network_args
from backend.errors import UserError

# Last component of an attention projection's Wan name -> its rank key (k_img / v_img follow k / v).
_PROJECTION_RANK_KEYS = {"q": "rank_q", "k": "rank_k", "k_img": "rank_k", "v": "rank_v", "v_img": "rank_v",
                         "o": "rank_o"}


@dataclass(frozen=True)
class NetworkConfig:
    rank: int = field(default=16, metadata={"help": "network_dim: the adapter rank r."})
    alpha: float = field(default=8.0, metadata={"help": "network_alpha: scale = alpha / r (alpha / sqrt(r) with "
                                                        "use_rslora); 0 means scale 1."})
    args: NetworkArgs = field(default_factory=NetworkArgs, metadata={"help": "The parsed network_args."})
    multiplier: float = field(default=1.0, metadata={"help": "Strength of the adapter in the forward pass."})

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"network_dim must be a whole number of at least 1, got {self.rank!r}.")
        if self.alpha is None or self.alpha < 0:
            raise UserError(f"network_alpha must be 0 or more, got {self.alpha!r}.")

    @classmethod
    def from_network_args(cls, rank: int, alpha: float, network_args: NetworkArgs | Sequence[str] | str | None = None,
                          multiplier: float = 1.0) -> "NetworkConfig":
        args = network_args if isinstance(network_args, NetworkArgs) else parse_network_args(network_args)
        return cls(rank=rank, alpha=alpha, args=args, multiplier=multiplier)

    # --- derived settings --------------------------------------------------------------------------------------
    @property
    def algo(self) -> str:
        return self.args.algo or "lora"

    @property
    def family(self) -> str:
        """The tensor layout: lora (LoRA, DoRA, LoCon), loha or lokr."""
        return self.algo if self.algo in ("loha", "lokr") else "lora"

    @property
    def use_dora(self) -> bool:
        return bool(self.args.use_dora) or self.algo == "dora"

    @property
    def use_rslora(self) -> bool:
        return bool(self.args.use_rslora)

    @property
    def adapts_conv(self) -> bool:
        return self.algo == "locon" or bool(self.args.conv_dim)

    @property
    def conv_rank(self) -> int:
        return self.args.conv_dim or self.rank

    @property
    def conv_alpha(self) -> float:
        return self.alpha if self.args.conv_alpha is None else self.args.conv_alpha

    @property
    def dropout(self) -> float:
        return self.args.dropout or 0.0

    @property
    def rank_dropout(self) -> float:
        return self.args.rank_dropout or 0.0

    @property
    def module_dropout(self) -> float:
        return self.args.module_dropout or 0.0

    @property
    def factor(self) -> int:
        return -1 if self.args.factor is None else self.args.factor

    def rank_for(self, wan_name: str, is_conv: bool) -> int:
        if is_conv:
            return self.conv_rank
        parts = wan_name.split(".")
        if "ffn" in parts[:-1] and self.args.rank_ffn is not None:
            return self.args.rank_ffn
        key = _PROJECTION_RANK_KEYS.get(parts[-1]) if len(parts) > 1 and parts[-2].endswith("attn") else None
        if key is not None:
            specific = getattr(self.args, key)
            if specific is not None:
                return specific
            if key != "rank_q" and self.args.rank_kvo is not None:
                return self.args.rank_kvo
        return self.rank

    def alpha_for(self, is_conv: bool) -> float:
        return self.conv_alpha if is_conv else self.alpha
