"""Every place the lab reaches into transformers (and peft) internals, in one module.

The lab's shortcuts (hidden states without logits, the frozen-layer cache, the shared head,
packed rows) use parts of transformers that are not a stable public contract: a model's decoder
and its `layers`/`norm`, the key/value cache, the attention implementation. Each such touchpoint
lives here with the reason it is needed, against the versions pyproject.toml allows; a new
transformers release is checked by tests/test_architectures.py, which proves every architecture
in `PROVEN_DECODERS` (cached = uncached loss and gradients, shared head = plain forward,
packed = unpacked logits). Other architectures run on the plain path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings

import torch
from torch import nn

#: Decoders proven exact on the lab's fast paths by tests/test_architectures.py: their layers see
#: only the hidden state, the attention mask and rotary positions, `inputs_embeds` enters the
#: first layer unchanged (Gemma scales inside its embedding module), and the final norm is
#: `decoder.norm`. Gemma 2 is absent: its logits are soft-capped after the head.
PROVEN_DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "olmo2", "smollm3")

#: Config fields that change logits after the output layer; `hidden @ W.T + b` is then not the logits.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier")


def unwrap(model):
    """The plain transformers model under DDP/accelerate and PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def text_config(model):
    """The decoder's config (multimodal configs nest it; text-only ones are it)."""
    config = unwrap(model).config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def model_type(model) -> str:
    return getattr(text_config(model), "model_type", "") or ""


def is_proven(model) -> bool:
    return model_type(model) in PROVEN_DECODERS


def decoder(model):
    """The module that runs the layers and the final norm (`LlamaModel` under `LlamaForCausalLM`)."""
    return unwrap(model).get_decoder()


def _peft_wrapped(module) -> bool:
    # peft replaces an adapted nn.Linear/nn.Embedding by a wrapper that keeps the original as `base_layer`.
    return hasattr(module, "base_layer")


def output_layer(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = unwrap(model).get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def logit_softcap(model) -> float | None:
    """The soft cap a model puts on its logits after the output layer (Gemma 2: cap * tanh(z / cap)),
    so the lab's scoring from hidden states gives the model's own numbers; None for plain logits."""
    config = text_config(model)
    other = [k for k in LOGIT_TRANSFORMS if k != "final_logit_softcapping" and getattr(config, k, None)]
    if other:
        raise NotImplementedError(
            f"{model_type(model)} transforms its logits after the output layer ({', '.join(other)}); "
            "the lab cannot score it from hidden states"
        )
    return getattr(config, "final_logit_softcapping", None) or None


def hidden_loss_blocker(model) -> str:
    """Why logits cannot be rebuilt as `hidden @ W.T + b` outside the model ('' when they can)."""
    base = unwrap(model)
    found = [k for k in LOGIT_TRANSFORMS if getattr(text_config(model), k, None)]
    if found:
        return f"the model transforms its logits after the output layer ({', '.join(found)})"
    if _peft_wrapped(base.get_output_embeddings()):
        return "the output layer carries a LoRA adapter"
    return ""


def adapted_embeddings(model) -> list[str]:
    """Names of the input/output embedding modules a LoRA adapter wraps (the lab refuses these)."""
    base = unwrap(model)
    modules = {id(m): name for name, m in base.named_modules()}
    out = []
    for module in (base.get_input_embeddings(), base.get_output_embeddings()):
        if module is not None and _peft_wrapped(module):
            out.append(modules.get(id(module), type(module).__name__))
    return out


def embedding_module_names(model) -> set[str]:
    """The last name component of the input and output embedding modules (e.g. embed_tokens, lm_head)."""
    base = unwrap(model)
    wanted = {id(base.get_input_embeddings()), id(base.get_output_embeddings())}
    return {name.rsplit(".", 1)[-1] for name, m in base.named_modules() if id(m) in wanted and name}


# -- the key/value cache -------------------------------------------------------------------------


def cache_kwargs(cache) -> dict:
    """The forward keyword for a cache: transformers 5.24 renamed `past_key_values` to `cache`
    (the old name warns and goes in 5.40)."""
    return {} if cache is None else {"cache": cache}


def new_cache(model):
    """An empty cache laid out for the model's layer types (sliding layers get sliding caches)."""
    from transformers import DynamicCache

    return DynamicCache(config=text_config(model))


def cache_keys_values(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values), each (B, heads, T, head_dim)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def prefilled_cache(model, keys_values: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """A fresh cache holding `keys_values` for `batch` rows. Built through `update`, the public way
    to fill a cache, instead of DynamicCache's positional argument meant for DDP gathering."""
    cache = new_cache(model)
    for index, (keys, values) in enumerate(keys_values):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), index)
    return cache


def sliding_window(model) -> int | None:
    """The smallest attention window of any layer, or None when every layer sees the whole sequence."""
    config = text_config(model)
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if window is None or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def attention_windows(model) -> dict[str, int | None]:
    """Sliding windows a packed 4D mask must carry, by layer type ('' for one mask for every layer).

    A custom 4D mask reaches every layer as it is: transformers applies a sliding window only
    when it builds the mask itself. Models with several layer types take a dict of masks keyed
    by `config.layer_types` values (the form `generate` precomputes); single-type ones one mask."""
    config = text_config(model)
    window = sliding_window(model)
    types = getattr(config, "layer_types", None)
    if window is None:
        return {"": None}
    if types is None:
        return {"": window}  # Mistral-style: every layer slides
    return {t: window if t == "sliding_attention" else None for t in set(types)}


# -- running part of the decoder -----------------------------------------------------------------


@contextlib.contextmanager
def decoder_layers(model, keep: slice, skip_norm: bool):
    """Within this block the decoder runs only `layers[keep]` (and, with `skip_norm`, no final norm).

    The decoder loops over `self.layers` and looks each one's attention type up by its position in
    `config.layer_types`, so the list of types is cut to the same slice while the layers are."""
    dec = decoder(model)
    config = dec.config
    layers, norm, types = dec.layers, dec.norm, getattr(config, "layer_types", None)
    dec.layers = nn.ModuleList(list(layers)[keep])
    if skip_norm:
        dec.norm = nn.Identity()
    if types is not None:
        config.layer_types = list(types)[keep]
    try:
        yield dec
    finally:
        dec.layers, dec.norm = layers, norm
        if types is not None:
            config.layer_types = types


@contextlib.contextmanager
def capture_final_hidden(model, store: dict):
    """Put the decoder's output (final, normalised hidden states) in `store['hidden']` while the
    outer model runs: the outer call keeps DDP's gradient hooks and PEFT's adapters in play."""

    def hook(_module, _args, output):
        store["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# -- attention and checkpointing ------------------------------------------------------------------


def attention_implementation(model) -> str:
    # transformers keeps the resolved implementation only in this private config field.
    return getattr(text_config(model), "_attn_implementation", None) or "sdpa"


def flash_implementation() -> str | None:
    """The flash-attention implementation installed here (the `flash-attn` package, else a `kernels`
    hub kernel), or None. Both take packed rows without a mask: transformers turns restarting
    `position_ids` into `cu_seqlens` for the varlen kernel."""
    from transformers.utils import is_flash_attn_2_available, is_kernels_available

    if is_flash_attn_2_available():
        return "flash_attention_2"
    if is_kernels_available():
        return "kernels-community/flash-attn2"
    return None


def use_fast_attention(model, device: torch.device, packing: bool) -> str:
    """Switch a model that trains on packed rows on CUDA in half precision to flash-attention varlen
    when it is installed (padding-free rows instead of 4D masks); return the implementation in use.
    sdpa stays everywhere else: on a CPU it is the fastest exact choice."""
    base = unwrap(model)
    wanted = (
        flash_implementation()
        if packing and device.type == "cuda" and base.dtype in (torch.float16, torch.bfloat16)
        else None
    )
    if wanted is not None:
        try:
            base.set_attn_implementation(wanted)
        except (ImportError, ValueError, OSError):
            pass  # a kernel that cannot load (offline hub, wrong build): the started event shows sdpa stayed
    return attention_implementation(model)


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing on the model under any wrapper.

    transformers then also makes the embeddings' output require grad, which only the reentrant
    variant needs; undoing it keeps the backward pass from running through frozen lower layers."""
    base = unwrap(model)
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    base.disable_input_require_grads()


def checkpointing_enabled(model) -> bool:
    return bool(getattr(unwrap(model), "is_activation_checkpointing", False))


# -- peft ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _peft_internal_warning():
    # peft 0.21's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing`
    # alias: a warning about peft's own code that no argument of ours changes, printed on every
    # adapter the app or a notebook attaches. Only that message is filtered.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def get_peft_model(model, peft_config):
    from peft import get_peft_model as _get

    with _peft_internal_warning():
        return _get(model, peft_config)


def load_peft_adapter(model, adapter_dir: str, is_trainable: bool = False):
    from peft import PeftModel

    with _peft_internal_warning():
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)


# -- accelerate ------------------------------------------------------------------------------------


def launcher_problem() -> str:
    """Why this process was launched as one of several that never started ('' when all is well).

    `accelerate launch --cpu --num_processes N` sets MASTER_ADDR for N processes but starts one
    (CPU multi-process is left to mpirun), which would train alone while the user expects N."""
    env = os.environ
    launched_for_many = "MASTER_ADDR" in env and env.get("ACCELERATE_USE_CPU", "False").lower() == "true"
    if launched_for_many and not any(k in env for k in ("WORLD_SIZE", "RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        return (
            "`accelerate launch --cpu --num_processes N` starts only one process; for N CPU processes (gloo) run "
            "`CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu --num_processes N -m plw_lab train ...` instead"
        )
    return ""


def write_trainer_checkpoint(trainer, folder) -> None:
    """The Trainer's own checkpoint (adapter, optimiser, scheduler, scaler, RNG and trainer state),
    which `Trainer.train(resume_from_checkpoint=folder)` reads back, written into `folder`.

    The Trainer has no public way to write its checkpoint to a folder of our choosing; its private
    `_save_checkpoint` is the one writer whose files its resume code is sure to read back."""
    # `_save_checkpoint` writes to <output_dir>/checkpoint-<step>; point it at a staging folder.
    staging = folder.parent / f"{folder.name}-staging"
    original = trainer.args.output_dir
    trainer.args.output_dir = str(staging)
    try:
        trainer._save_checkpoint(trainer.model, trial=None)
        (staging / f"checkpoint-{trainer.state.global_step}").rename(folder)
    finally:
        trainer.args.output_dir = original
        shutil.rmtree(staging, ignore_errors=True)
