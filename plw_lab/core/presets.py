"""Curated models for the model picker: hub id, architecture numbers and whether the hub gates them.

Each preset carries the fields of its `config.json` that size the model (hidden size, layers,
heads, vocabulary, ...), so the picker can show parameter counts and the memory a run needs
(`plw_lab.core.memory`) without the internet and without loading a weight. Any other hub id or local
folder works as `model.name` too; its numbers are read from its own config.
"""

from __future__ import annotations

from dataclasses import dataclass

from plw_lab.core.models import EMBEDDED_ID, EMBEDDED_NAME


@dataclass(frozen=True)
class Preset:
    hub_id: str
    #: The `config.json` fields that size the model, as transformers names them.
    config: dict
    #: Gated repositories need an accepted licence and a token (`HF_TOKEN`).
    gated: bool = False

    @property
    def short_name(self) -> str:
        return self.hub_id.split("/")[-1]


_SMOLLM2 = dict(model_type="llama", vocab_size=49152, tie_word_embeddings=True, head_dim=64)
_QWEN25 = dict(model_type="qwen2", vocab_size=151936, tie_word_embeddings=True)

PRESETS: tuple[Preset, ...] = (
    Preset(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        dict(
            _SMOLLM2,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
        ),
    ),
    Preset(
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        dict(
            _SMOLLM2,
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
        ),
    ),
    Preset(
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        dict(
            _SMOLLM2,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
        ),
    ),
    Preset(
        "Qwen/Qwen2.5-0.5B-Instruct",
        dict(
            _QWEN25,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
        ),
    ),
    Preset(
        "Qwen/Qwen2.5-1.5B-Instruct",
        dict(
            _QWEN25,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
        ),
    ),
    Preset(
        "Qwen/Qwen3-0.6B",
        dict(
            model_type="qwen3",
            vocab_size=151936,
            tie_word_embeddings=True,
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
        ),
    ),
    Preset(
        "meta-llama/Llama-3.2-1B-Instruct",
        dict(
            model_type="llama",
            vocab_size=128256,
            tie_word_embeddings=True,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
        ),
        gated=True,
    ),
    Preset(
        "google/gemma-3-1b-it",
        dict(
            model_type="gemma3_text",
            vocab_size=262144,
            tie_word_embeddings=True,
            hidden_size=1152,
            intermediate_size=6912,
            num_hidden_layers=26,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
        ),
        gated=True,
    ),
)

#: The embedded model (`model.name: embedded`) is this preset's weights, dequantised from a Q4_1 GGUF.
EMBEDDED_PRESET = next(p for p in PRESETS if p.hub_id == EMBEDDED_ID)


def find_preset(name: str) -> Preset | None:
    """The preset a `model.name` refers to: its hub id (with or without 'hf:'), its short name, or 'embedded'."""
    if name == EMBEDDED_NAME:
        return EMBEDDED_PRESET
    name = name.removeprefix("hf:")
    for preset in PRESETS:
        if name in (preset.hub_id, preset.short_name):
            return preset
    return None
