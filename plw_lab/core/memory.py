"""How much memory a run needs, from the model's config alone (no weight is loaded).

    weights       every parameter at model.dtype; with model.quantization the layers' linear
                  weights at 4 or 8 bits (plus their scales) and the rest in float32, as peft's
                  k-bit preparation leaves them
    LoRA + AdamW  the adapter in float32 (peft's default, so it is its own master copy), its
                  gradient, and AdamW's two moments: 16 bytes a LoRA parameter
    activations   what backward needs, batch x length tokens through every layer from the lowest
                  adapted one up (nothing is stored below it); with gradient checkpointing only
                  each such layer's input plus one layer's working set
    loss chunk    train.chunk_size positions x the vocabulary: the logits, their float32 copy and
                  their gradient (`plw_lab.core.loss` never holds more)

Attention is assumed fused (sdpa or flash-attention: no length x length scores are kept). The
CUDA context and the allocator's slack (about half a GiB) come on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from plw_lab.core.config import LabConfig, layer_indices

GIB = 2**30
#: NF4 stores two weights a byte; double quantisation adds an 8-bit scale per 64 weights and a
#: float32 scale per 256 of those.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAPTER_BYTES = 4 + 4 + 8  # float32 weight, its gradient, AdamW's m and v
# Phi-3 fuses q/k/v and gate/up; the other families keep them apart.
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer that size its parameters and activations."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config) -> Architecture:
        """From a transformers config object or a `config.json` dict (multimodal ones: their text part)."""
        c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        c = {**c, **(c.get("text_config") or {})}
        heads = c["num_attention_heads"]
        attention_bias = bool(c.get("attention_bias", False))
        return cls(
            model_type=c.get("model_type", ""),
            hidden=c["hidden_size"],
            intermediate=c["intermediate_size"],
            layers=c["num_hidden_layers"],
            heads=heads,
            kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            vocab=c["vocab_size"],
            tied=bool(c.get("tie_word_embeddings", True)),
            qkv_bias=attention_bias or c.get("model_type") == "qwen2",  # Qwen2 always has q/k/v biases
            o_bias=attention_bias,
            mlp_bias=bool(c.get("mlp_bias", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Each linear layer of one transformer layer as (in_features, out_features)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_linear_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    def layer_other_parameters(self) -> int:
        """Biases and norms of one layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        n = (
            (q + 2 * kv) * self.qkv_bias
            + self.hidden * self.o_bias
            + (2 * self.intermediate + self.hidden) * self.mlp_bias
        )
        norms = (
            4 if self.model_type.startswith(("gemma2", "gemma3")) else 2
        )  # Gemma 2/3 norm before and after each block
        n += norms * self.hidden
        if self.model_type.startswith(("qwen3", "gemma3")):
            n += 2 * self.head_dim  # per-head norms of queries and keys
        return n

    def embedding_parameters(self) -> int:
        """Embeddings, the final norm and an untied output layer: what quantisation leaves unquantised."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def parameters(self) -> int:
        return (
            self.layers * (self.layer_linear_parameters() + self.layer_other_parameters()) + self.embedding_parameters()
        )

    def lora_parameters(self, r: int, targets: list[str], n_layers: int) -> int:
        shapes = self.linear_shapes()
        names = set(shapes) if targets == ["all-linear"] else {part for t in targets for part in FUSED.get(t, (t,))}
        per_layer = sum(r * (a + b) for name, (a, b) in shapes.items() if name in names)
        return per_layer * n_layers


def _local_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json")
    return json.loads(path.read_text())


def architecture(name: str) -> Architecture:
    """The architecture behind a `model.name`: a preset's numbers, else the model's own `config.json`
    (a local folder, or the hub's copy when cached or reachable). Raises `ModelError` when unknown."""
    from plw_lab.core.models import ModelError, _hub_options, resolve_model_path
    from plw_lab.core.presets import find_preset

    preset = find_preset(name)
    if preset is not None:
        return Architecture.from_config(preset.config)
    # Refuses what no run could load: a folder that is not a model, a file, an 'hf:' model not cached offline.
    path = resolve_model_path(name, hub_files=["config.json"])
    try:
        if Path(path).is_dir():
            return Architecture.from_config(_local_config(Path(path)))
        from huggingface_hub import hf_hub_download

        # Offline and not cached fails at once rather than after the hub client's retries.
        options = _hub_options(name, name)
        return Architecture.from_config(json.loads(Path(hf_hub_download(name, "config.json", **options)).read_text()))
    except ModelError:  # e.g. not cached and offline: its own message says what to do
        raise
    except Exception as exc:  # gated, or not a model: no estimate, but say why
        raise ModelError(
            f"no memory estimate for {name!r}: its config.json is not readable here ({type(exc).__name__})"
        ) from exc


@dataclass
class MemoryEstimate:
    """Bytes each part of a training run needs on its device."""

    parameters: int
    lora_parameters: int
    weights: float
    adapter: float
    activations: float
    activations_checkpointed: float
    loss_chunk: float
    device: str
    dtype: str
    quantization: str
    checkpointing: bool
    tokens: int
    stored_layers: int

    @property
    def total(self) -> float:
        activations = self.activations_checkpointed if self.checkpointing else self.activations
        return self.weights + self.adapter + activations + self.loss_chunk

    def parts(self) -> dict[str, float]:
        return {
            "weights": self.weights,
            "LoRA and AdamW": self.adapter,
            "activations": self.activations_checkpointed if self.checkpointing else self.activations,
            "loss chunk": self.loss_chunk,
        }

    def describe(self) -> str:
        """One line: the total, its parts and the assumptions."""
        precision = {"4bit": "4-bit NF4", "8bit": "8-bit"}.get(self.quantization, self.dtype)
        other = "without" if self.checkpointing else "with"
        other_value = self.activations if self.checkpointing else self.activations_checkpointed
        return (
            f"Memory estimate ({self.device}, {precision}): about {gib(self.total)} = weights {gib(self.weights)} "
            f"({count(self.parameters)} parameters) + LoRA and AdamW {gib(self.adapter)} "
            f"({self.lora_parameters / 1e6:.2f}M trainable) + activations {gib(self.parts()['activations'])} "
            f"({self.tokens:,} tokens a micro-batch through {self.stored_layers} layers; {gib(other_value)} {other} "
            f"gradient checkpointing) + loss chunk {gib(self.loss_chunk)}"
            + (", plus the CUDA context (about 0.5 GiB)." if self.device == "cuda" else ".")
        )

    def what_to_lower(self) -> str:
        """Settings that shrink the largest parts, largest first."""
        tips = {
            "weights": "model.quantization: 4bit (QLoRA) or a smaller model",
            "LoRA and AdamW": "lora.r, lora.target_modules or lora.layers",
            "activations": "train.batch_size (raise train.grad_accum to keep the optimiser batch), data.max_length, "
            "lora.layers (fewer adapted layers store less)"
            + ("" if self.checkpointing else ", or gradient checkpointing"),
            "loss chunk": "train.chunk_size",
        }
        parts = sorted(self.parts().items(), key=lambda item: -item[1])
        return "; ".join(
            f"{name} ({gib(value)}): lower {tips[name]}" for name, value in parts if value > 0.05 * self.total
        )


def count(n: int) -> str:
    """A parameter count as people say it: 135M, 1.5B."""
    return f"{n / 1e6:,.0f}M" if n < 999.5e6 else f"{n / 1e9:.1f}B"


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.1f} GiB"


def _device_and_dtype(cfg: LabConfig, device: str | None) -> tuple[str, str]:
    import torch

    from plw_lab.core.models import compute_dtype

    if device is None:
        device = cfg.model.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, str(compute_dtype(cfg.model, torch.device(device))).removeprefix("torch.")


def estimate(cfg: LabConfig, arch: Architecture | None = None, device: str | None = None) -> MemoryEstimate:
    """The memory a run of `cfg` needs on `device` ('cuda', 'cpu'; default: where it would run)."""
    arch = arch or architecture(cfg.model.name)
    device, dtype = _device_and_dtype(cfg, device)
    width = DTYPE_BYTES[dtype]
    quant = cfg.model.quantization
    linear = arch.layers * arch.layer_linear_parameters()
    if quant == "none":
        weights = arch.parameters * width
    else:
        per_weight = NF4_BYTES if quant == "4bit" else 1.0
        # LLM.int8 keeps one float32 scale per output row; NF4's scales are in NF4_BYTES.
        scales = 0 if quant == "4bit" else arch.layers * sum(4 * out for _, out in arch.linear_shapes().values())
        weights = linear * per_weight + scales + (arch.parameters - linear) * 4

    adapted = layer_indices(cfg.lora.layers, arch.layers)
    adapted = list(range(arch.layers)) if adapted is None else adapted
    lora = arch.lora_parameters(cfg.lora.r, list(cfg.lora.target_modules), len(adapted))
    stored_layers = arch.layers - adapted[0]  # backward runs through every layer above the lowest adapted one

    t = cfg.train
    # data.max_length 0 (auto) fits the data but never exceeds data.max_length_cap: an upper bound.
    tokens = t.batch_size * (cfg.data.max_length or cfg.data.max_length_cap)
    h, q, kv, i = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim, arch.intermediate
    targets_per_layer = (
        len(arch.linear_shapes()) if list(cfg.lora.target_modules) == ["all-linear"] else len(cfg.lora.target_modules)
    )
    # Per token and layer: both norms' input and output (4h), the attention's q, k, v and output
    # (q + 2kv + q), the MLP's gate, up, activation and product (4i), each LoRA's rank-r middle.
    per_layer = 4 * h + 2 * q + 2 * kv + 4 * i + cfg.lora.r * targets_per_layer
    final = 2 * h  # the final norm's input and output, which the loss reads
    activations = tokens * (stored_layers * per_layer + final) * width
    checkpointed = tokens * (stored_layers * h + per_layer + final) * width
    chunk = min(t.chunk_size, tokens)
    loss_chunk = chunk * arch.vocab * (width + 4 + 4)  # logits, their float32 copy, their gradient
    return MemoryEstimate(
        parameters=arch.parameters,
        lora_parameters=lora,
        weights=float(weights),
        adapter=float(lora * ADAPTER_BYTES),
        activations=float(activations),
        activations_checkpointed=float(checkpointed),
        loss_chunk=float(loss_chunk),
        device=device,
        dtype=dtype,
        quantization=quant,
        checkpointing=t.gradient_checkpointing,
        tokens=tokens,
        stored_layers=stored_layers,
    )


def describe(cfg: LabConfig, device: str | None = None) -> str:
    """The estimate as one line, or why there is none (a hub model whose config is not reachable)."""
    from plw_lab.core.models import ModelError

    try:
        return estimate(cfg, device=device).describe()
    except ModelError as exc:
        return str(exc)
