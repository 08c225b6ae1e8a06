"""The memory plan: which savers a run needs to fit its GPU, from numbers alone.

`memory = auto` (the default) turns on, in this order and only while the estimate does not fit, gradient
checkpointing, scaled fp8 base weights, activation offload and then the fewest `blocks_to_swap` that fit; each
choice is one log line with its reason. `memory = manual` keeps the user's own settings. On a CPU there is nothing
to plan. The same estimate serves generation (`plan_generation`): transformer storage, CPU offload of the idle text
encoder / VAE / A14B expert, and block swap.

Every function here is pure arithmetic over a `ModelShape` and a budget in bytes, so the choices are unit-tested
for any card size without a GPU. What is counted, per GPU:

- weights: every transformer block's parameters (`ModelShape.block_linear_params` are the Linears fp8 can store at
  one byte, the rest stays bf16 / fp32) and the parameters outside the blocks; A14B with `expert=both` keeps both
  experts resident; swapped blocks live in pinned CPU memory with SWAP_BUFFERS blocks in flight on the GPU;
- adapters: LoRA factors on the 10 block Linears (r·(in+out) each) with their gradient and optimizer state;
- activations, per token of the largest bucket: with checkpointing, each block's saved input (dim bf16 values)
  plus one block recomputed at a time (BLOCK_PEAK_VALUES); without it, every block keeps its intermediates;
  SDPA attention is memory-linear in the tokens (no tokens² score matrix);
- fixed costs: RUNTIME_RESERVE (cuBLAS / cuDNN workspaces, latents, text, loss), the dequantised weight of the
  largest Linear (fp8 storage), and FRAGMENTATION of whatever the allocator holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

GIB = 2 ** 30
BF16, FP32, FP8 = 2, 4, 1

# The CUDA context (driver state, kernels) takes this much of the card outside PyTorch's allocator; a user's
# memory_limit_gb is the whole card, so the allocator gets the limit minus this.
CUDA_CONTEXT = int(0.55 * GIB)
# cuBLAS / cuDNN workspaces, the batch's latents / text / noise / prediction and the loss: a fixed allowance.
RUNTIME_RESERVE = int(0.75 * GIB)
# The caching allocator's blocks never pack perfectly: keep this fraction of the budget free.
FRAGMENTATION = 0.07
# Values alive per token while one block is recomputed in backward (bf16): the normed / modulated inputs, q, k, v
# and their rotated copies, the attention output and its projection, the cross-attention's q and output, the
# residual sums (about 28·dim) and the FFN hidden layer before and after GELU with their gradients (about 4·ffn).
BLOCK_PEAK_DIM_VALUES, BLOCK_PEAK_FFN_VALUES = 28, 4
# Without checkpointing autograd keeps, per token per block, about: the inputs and outputs of the three norms, the
# q/k RMS-norm inputs and their rotated copies, q, k, v and the attention output of both attentions, the Linear
# inputs and gated outputs (~23·dim in bf16 units), and the GELU's input and output (2·ffn). Calibrated on the
# trainer itself: 1.3B, 32,760 tokens, bf16, no checkpointing peaked at 101.0 GiB allocated (H200,
# docs/benchmarks.md), which this estimate meets within 1 %; erring low costs an OOM, erring high only speed.
SAVED_DIM_VALUES, SAVED_FFN_VALUES = 23, 2
# Inference (no autograd): the hidden state, q / k / v, the attention output and the FFN hidden layer.
INFER_DIM_VALUES, INFER_FFN_VALUES = 8, 2
# Block swap keeps this many blocks' weights on the GPU for the copies in flight (double buffering).
SWAP_BUFFERS = 2
# Activation offload keeps this many blocks' saved inputs on the GPU while they are copied out / back.
OFFLOAD_IN_FLIGHT = 2
# Adapter parameter bytes: fp32 value + fp32 gradient + optimizer state (AdamW: two fp32 moments, 8-bit: two bytes).
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "adafactor": 4, "prodigy": 16}
# Wan VAE decode of one latent frame into 4 video frames: ~6 live fp32 tensors of 96 channels at full resolution,
# plus the decoded video itself (3 channels, fp32).
VAE_DECODE_VALUES_PER_PIXEL = 6 * 96 * 4
# The usual text encoder: UMT5-XXL's encoder (about 5.7 billion parameters) in bf16.
UMT5_XXL_BYTES = int(5.68e9 * BF16)
LORA_LINEARS = 10  # q, k, v, o of both attentions + the two FFN Linears


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Wan transformer that set its memory: from a kind's config with `shape_from_config`."""

    name: str
    dim: int
    ffn_dim: int
    num_blocks: int
    block_linear_params: int  # per block, the Linear weights (what fp8 stores)
    block_other_params: int  # per block, biases, norms, modulation (stay in bf16 / fp32)
    outer_params: int  # outside the blocks: embeddings, head
    in_channels: int = 16


def shape_from_config(name: str, config: dict) -> ModelShape:
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    f = int(config["ffn_dim"])
    image = bool(config.get("added_kv_proj_dim"))
    linears = 8 * d * d + 2 * d * f + (2 * d * d if image else 0)
    biases = 8 * d + f + d + (2 * d if image else 0)
    norms = 2 * d * 2 + (2 * d if config.get("cross_attn_norm") else 0) + (d if image else 0)  # q/k norms, norm2
    other = biases + norms + 6 * d  # + modulation table
    patch = 4 * int(config["in_channels"]) * d + d
    text = int(config["text_dim"]) * d + d + d * d + d
    time = int(config["freq_dim"]) * d + d + d * d + d + d * 6 * d + 6 * d
    out_channels = int(config.get("out_channels") or config["in_channels"])
    head = d * 4 * out_channels + 4 * out_channels + 2 * d
    image_dim = int(config.get("image_dim") or 0)
    image_embedder = (2 * image_dim + image_dim * image_dim + image_dim + image_dim * d + d + 2 * d) if image_dim else 0
    return ModelShape(name, d, f, int(config["num_layers"]), linears, other,
                      patch + text + time + head + image_embedder, int(config["in_channels"]))


def tokens_for(frames: int, height: int, width: int, spatial: int = 16, temporal: int = 4) -> int:
    """Transformer tokens of one clip: (frames − 1)/4 + 1 latent frames × H/16 × W/16 (VAE 4×8×8, patch 1×2×2)."""
    return ((frames - 1) // temporal + 1) * (height // spatial) * (width // spatial)


@dataclass(frozen=True)
class TrainChoice:
    gradient_checkpointing: bool = False
    uncheckpointed_blocks: int = 0  # with checkpointing: the last blocks that keep their activations
    fp8_scaled: bool = False
    fp8_base: bool = False
    offload_activations: bool = False
    blocks_to_swap: int = 0


@dataclass(frozen=True)
class TrainRun:
    """What the run asks of the GPU, besides the savers."""

    shape: ModelShape
    tokens: int  # of the largest bucket, times its batch size
    resident_experts: int = 1  # 2 for Wan2.2 A14B with expert=both
    rank: int = 32
    optimizer: str = "adamw"
    network_copies: int = 1  # one adapter network per trained expert
    value_bytes: int = BF16  # of the base weights and activations: 2 with bf16 / fp16 mixed precision, 4 without


@dataclass
class Plan:
    choice: object
    fits: bool
    estimate: int
    budget: int
    reasons: list[str] = field(default_factory=list)
    parts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return ", ".join(f"{name} {gib(value)}" for name, value in self.parts.items())


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def budget_bytes(free_bytes: int | None, limit_gb: float | None) -> int:
    """What the allocator may hold: the card's free memory, or the user's limit (a whole card) minus its context."""
    limit = None if limit_gb is None else int(limit_gb * GIB) - CUDA_CONTEXT
    if free_bytes is None:
        return max(limit or 0, 0)
    return max(min(free_bytes, limit) if limit is not None else free_bytes, 0)


def allocator_fraction(limit_gb: float, total_bytes: int) -> float:
    """The `torch.cuda.set_per_process_memory_fraction` that makes memory_limit_gb real (context excluded)."""
    return max(0.01, min(1.0, (limit_gb * GIB - CUDA_CONTEXT) / total_bytes))


def block_bytes(shape: ModelShape, fp8: bool, value_bytes: int = BF16) -> int:
    return shape.block_linear_params * (FP8 if fp8 else value_bytes) + shape.block_other_params * FP32


def adapter_params(shape: ModelShape, rank: int) -> int:
    """LoRA factors on the 10 block Linears: r·(in + out) each (8 dim×dim projections and the two FFN ones)."""
    per_block = rank * (8 * 2 * shape.dim + 2 * (shape.dim + shape.ffn_dim))
    return per_block * shape.num_blocks


def train_parts(run: TrainRun, choice: TrainChoice) -> dict[str, int]:
    shape, tokens = run.shape, run.tokens
    fp8 = choice.fp8_scaled or choice.fp8_base
    resident_blocks = shape.num_blocks - choice.blocks_to_swap
    swap_buffers = SWAP_BUFFERS if choice.blocks_to_swap else 0
    value = run.value_bytes
    weights = run.resident_experts * ((resident_blocks + swap_buffers) * block_bytes(shape, fp8, value)
                                      + shape.outer_params * value)
    adapters = run.network_copies * adapter_params(shape, run.rank) * (
        FP32 + FP32 + OPTIMIZER_STATE_BYTES.get(run.optimizer, 8))
    every_activation = tokens * (SAVED_DIM_VALUES * shape.dim + SAVED_FFN_VALUES * shape.ffn_dim) * value  # per block
    if choice.gradient_checkpointing:
        kept = choice.uncheckpointed_blocks
        inputs = OFFLOAD_IN_FLIGHT if choice.offload_activations else shape.num_blocks - kept
        saved = inputs * tokens * shape.dim * value + kept * every_activation
        peak = tokens * (BLOCK_PEAK_DIM_VALUES * shape.dim + BLOCK_PEAK_FFN_VALUES * shape.ffn_dim) * value
    else:
        saved = shape.num_blocks * every_activation
        peak = tokens * (BLOCK_PEAK_DIM_VALUES * shape.dim + BLOCK_PEAK_FFN_VALUES * shape.ffn_dim) * value // 2
    dequantised = shape.dim * shape.ffn_dim * (BF16 + FP32) if fp8 else 0
    parts = {"weights": weights, "adapters+optimizer": adapters, "saved activations": saved, "block peak": peak,
             "fixed": RUNTIME_RESERVE + dequantised}
    total = sum(parts.values())
    parts["fragmentation"] = int(total * FRAGMENTATION / (1 - FRAGMENTATION))
    return parts


def _estimate(parts: dict[str, int]) -> int:
    return sum(parts.values())


def fewest_swapped(fits, most: int) -> int | None:
    """The smallest n in 1..most with fits(n) true (fits grows with n), by bisection; None when even `most` fails."""
    if not fits(most):
        return None
    low, high = 1, most
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


def most_kept(fits, most: int) -> int:
    """The largest k in 0..most with fits(k) true (fits shrinks as k grows), by bisection; fits(0) is assumed."""
    low, high = 0, most
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def plan_training(run: TrainRun, budget: int) -> Plan:
    """The cheapest savers (in speed) that make `run` fit `budget` bytes; `fits` False when nothing does."""
    choice, reasons = TrainChoice(), []
    shape = run.shape

    def over(c: TrainChoice) -> int:
        return _estimate(train_parts(run, c)) - budget

    if over(choice) > 0:
        choice = replace(choice, gradient_checkpointing=True)
        reasons.append(f"gradient checkpointing on: without it the {shape.num_blocks} blocks keep "
                       f"{gib(train_parts(run, TrainChoice())['saved activations'])} of activations for "
                       f"{run.tokens:,} tokens")
    else:
        reasons.append("gradient checkpointing off: every activation fits")
    if choice.gradient_checkpointing and over(choice) <= 0:
        kept = most_kept(lambda k: over(replace(choice, uncheckpointed_blocks=k)) <= 0, shape.num_blocks - 1)
        if kept:
            choice = replace(choice, uncheckpointed_blocks=kept)
            reasons.append(f"the last {kept} of {shape.num_blocks} blocks keep their activations (no recomputation "
                           f"in backward): they fit beside the rest")
    if over(choice) > 0:
        before = train_parts(run, choice)["weights"]
        choice = replace(choice, fp8_scaled=True)
        reasons.append(f"scaled fp8 base weights: the bf16 weights take {gib(before)}, fp8 halves the block Linears "
                       f"({gib(train_parts(run, choice)['weights'])})")
    if over(choice) > 0 and choice.gradient_checkpointing:
        saved = train_parts(run, choice)["saved activations"]
        choice = replace(choice, offload_activations=True)
        reasons.append(f"activation offload on: the checkpointed block inputs ({gib(saved)}) go to CPU memory")
    if over(choice) > 0:
        most = shape.num_blocks - 1
        n = fewest_swapped(lambda k: over(replace(choice, blocks_to_swap=k)) <= 0, most)
        if n is None:
            choice = replace(choice, blocks_to_swap=most)
        else:
            choice = replace(choice, blocks_to_swap=n)
            reasons.append(f"blocks_to_swap {n} of {shape.num_blocks}: "
                           f"{gib(n * block_bytes(shape, choice.fp8_scaled) * run.resident_experts)} of block weights "
                           f"stay in pinned CPU memory and are copied in ahead of use")
    parts = train_parts(run, choice)
    return Plan(choice, _estimate(parts) <= budget, _estimate(parts), budget, reasons, parts)


def describe_choice(choice) -> str:
    on = [name if value is True else f"{name}={value}" for name, value in choice.__dict__.items()
          if value not in (False, 0, None, "bf16")]
    return ", ".join(on) or "nothing to change"


# ---- generation ---------------------------------------------------------------------------------------------------

# A text encoder streamed layer by layer holds about its largest layer on the GPU: UMT5-XXL's token embedding
# (256,384 x 4,096) is this share of its weights.
STREAMED_TEXT_ENCODER_SHARE = 0.19


@dataclass(frozen=True)
class GenerateChoice:
    storage: str = "bf16"  # transformer weights: bf16 | fp8_scaled
    cpu_offload: bool = False  # text encoder / VAE / idle expert on the CPU while not in use
    blocks_to_swap: int = 0
    stream_text_encoder: bool = False  # the text encoder's layers copied in one at a time (it exceeds the card)


@dataclass(frozen=True)
class GenerateRun:
    shape: ModelShape
    tokens: int
    height: int
    width: int
    experts: int = 1  # 2 for an A14B pair
    text_encoder_bytes: int = UMT5_XXL_BYTES
    vae_bytes: int = int(0.5 * GIB)


def generate_parts(run: GenerateRun, choice: GenerateChoice) -> dict[str, int]:
    shape = run.shape
    fp8 = choice.storage != "bf16"
    resident_blocks = shape.num_blocks - choice.blocks_to_swap + (SWAP_BUFFERS if choice.blocks_to_swap else 0)
    one_expert = resident_blocks * block_bytes(shape, fp8) + shape.outer_params * BF16
    experts_on_gpu = 1 if choice.cpu_offload else run.experts
    activations = run.tokens * (INFER_DIM_VALUES * shape.dim + INFER_FFN_VALUES * shape.ffn_dim) * BF16
    decode = run.height * run.width * VAE_DECODE_VALUES_PER_PIXEL
    encoder = int(run.text_encoder_bytes * STREAMED_TEXT_ENCODER_SHARE) if choice.stream_text_encoder \
        else run.text_encoder_bytes
    if choice.cpu_offload:  # one model at a time: the largest of encoding, denoising and decoding
        working = max(encoder, one_expert + activations, run.vae_bytes + decode)
    else:
        working = run.text_encoder_bytes + run.vae_bytes + experts_on_gpu * one_expert + max(activations, decode)
    dequantised = shape.dim * shape.ffn_dim * (BF16 + FP32) if fp8 else 0
    parts = {"models and activations": working, "fixed": RUNTIME_RESERVE + dequantised}
    parts["fragmentation"] = int(sum(parts.values()) * FRAGMENTATION / (1 - FRAGMENTATION))
    return parts


def plan_generation(run: GenerateRun, budget: int) -> Plan:
    choice, reasons = GenerateChoice(), []
    shape = run.shape

    def over(c: GenerateChoice) -> int:
        return _estimate(generate_parts(run, c)) - budget

    if over(choice) > 0:
        choice = replace(choice, cpu_offload=True)
        reasons.append(f"CPU offload on: the text encoder ({gib(run.text_encoder_bytes)}), the VAE"
                       f"{' and the idle expert' if run.experts > 1 else ''} wait on the CPU while another part runs")
    if over(choice) > 0 and _estimate(generate_parts(run, replace(choice, stream_text_encoder=True))) < \
            _estimate(generate_parts(run, choice)):
        choice = replace(choice, stream_text_encoder=True)
        reasons.append(f"text encoder streamed layer by layer: its {gib(run.text_encoder_bytes)} are more than the "
                       f"card holds beside the rest")
    if over(choice) > 0:
        choice = replace(choice, storage="fp8_scaled")
        reasons.append(f"scaled fp8 transformer weights: bf16 needs {gib(shape.num_blocks * block_bytes(shape, False))} "
                       f"for the blocks alone")
    if over(choice) > 0:
        most = shape.num_blocks - 1
        n = fewest_swapped(lambda k: over(replace(choice, blocks_to_swap=k)) <= 0, most)
        choice = replace(choice, blocks_to_swap=most if n is None else n)
        if n is not None:
            reasons.append(f"blocks_to_swap {n} of {shape.num_blocks}: the rest of the weights do not fit beside the "
                           f"activations of {run.tokens:,} tokens")
    parts = generate_parts(run, choice)
    return Plan(choice, _estimate(parts) <= budget, _estimate(parts), budget, reasons, parts)
