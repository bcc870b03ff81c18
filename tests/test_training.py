"""Training through the Trainer: accumulation is exact, events flow, stops and failures keep the run."""

import json
import re
import threading
from pathlib import Path

import pytest
import torch
from conftest import sum_examples
from transformers import AutoModelForCausalLM, TrainerCallback

from plw_lab.core import events as ev
from plw_lab.core.collate import Collator, EncodedDataset
from plw_lab.core.config import LabConfig, layer_indices
from plw_lab.core.data import DataError
from plw_lab.core.masks import encode_all
from plw_lab.core.models import attach_lora, load_adapter
from plw_lab.core.prefix import FrozenPrefix
from plw_lab.core.runs import load_run
from plw_lab.core.training import PLWTrainer, train, training_arguments


def _cfg(tmp_path, **overrides):
    base = {
        "model.name": "tiny-random",
        "train.output_dir": str(tmp_path / "runs"),
        "train.batch_size": 4,
        "train.max_steps": 4,
        "train.eval_interval": 2,
        "train.learning_rate": 1e-3,
        "lora.layers": "all",
        "eval.generations": 2,
        "eval.max_new_tokens": 4,
        "eval.probe_texts": 2,
    }
    base.update(overrides)
    return LabConfig().override(base)


class _GradCapture(TrainerCallback):
    def __init__(self, model):
        self.model, self.grads = model, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}


def _first_step_grads(
    tmp_path, tokenizer, tiny_dir, encoded, plw, batch, accum, mode="sum_weights", layers="all", cache=False
):
    cfg = _cfg(
        tmp_path,
        **{
            "train.prompt_loss_weight": plw,
            "train.batch_size": batch,
            "train.grad_accum": accum,
            "train.max_steps": 1,
            "train.max_grad_norm": 0.0,
            "train.loss_normalization": mode,
            "lora.layers": layers,
        },
    )
    torch.manual_seed(0)
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), cfg.lora)
    capture = _GradCapture(model)
    trainer = PLWTrainer(
        model=model,
        args=training_arguments(cfg, tmp_path / f"t{batch}x{accum}", torch.device("cpu"), torch.float32),
        train_dataset=EncodedDataset(encoded),
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[capture],
        lab_config=cfg,
    )
    if cache:
        trainer.prefix = FrozenPrefix.for_model(model, layer_indices(layers, 2))
    trainer.train()
    return capture.grads


@pytest.mark.parametrize("plw", [0.0, 0.1, 1.0])
def test_accumulating_four_batches_of_two_equals_one_batch_of_eight(tmp_path, tokenizer, tiny_dir, plw):
    encoded, _ = encode_all(tokenizer, sum_examples(8), 128)
    assert len({len(e) for e in encoded}) > 1, "lengths must differ so padding and per-batch means would show"
    big = _first_step_grads(tmp_path, tokenizer, tiny_dir, encoded, plw, 8, 1)
    small = _first_step_grads(tmp_path, tokenizer, tiny_dir, encoded, plw, 2, 4)
    assert big.keys() == small.keys() and any(g.abs().sum() > 0 for g in big.values())
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-4 * big[name].abs().max().item())


def test_the_frozen_layer_cache_gives_the_same_first_step(tmp_path, tokenizer, tiny_dir):
    encoded, _ = encode_all(tokenizer, sum_examples(8), 128)
    plain = _first_step_grads(tmp_path, tokenizer, tiny_dir, encoded, 0.1, 8, 1, layers="top:1")
    cached = _first_step_grads(tmp_path, tokenizer, tiny_dir, encoded, 0.1, 2, 4, layers="top:1", cache=True)
    assert plain.keys() == cached.keys()
    for name in cached:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-4 * plain[name].abs().max().item())


def test_count_normalisation_differs_from_sum_at_fractional_plw(tmp_path, tokenizer, tiny_dir):
    encoded, _ = encode_all(tokenizer, sum_examples(4), 128)
    by_sum = _first_step_grads(tmp_path, tokenizer, tiny_dir, encoded, 0.1, 4, 1, "sum_weights")
    by_count = _first_step_grads(tmp_path, tokenizer, tiny_dir, encoded, 0.1, 4, 1, "count_nonzero")
    name = next(n for n in by_sum if "lora_B" in n)  # lora_A starts with a zero gradient (B = 0)
    ratio = (by_sum[name].norm() / by_count[name].norm()).item()
    assert ratio > 1.5  # sum of weights is the smaller divisor when most tokens weigh 0.1


def test_a_run_that_draws_no_training_example_twice_keeps_only_the_validation_states(tmp_path, tiny_dir):
    def cache_path(steps):
        seen = []
        cfg = _cfg(tmp_path, **{"lora.layers": "top:1", "train.max_steps": steps, "eval.generations": 0})
        result = train(cfg, subscribers=[seen.append], examples=sum_examples(24), compare=False)
        assert result.status == "finished", result.summary
        return next(e for e in seen if isinstance(e, ev.Started)).paths["frozen_layer_cache"]

    assert "only the validation set's are kept" in cache_path(4), "16 of about 19 training examples drawn"
    assert "only the validation" not in cache_path(8), "a second epoch reads the training states again"


def test_a_run_emits_typed_events_logs_them_and_saves_a_loadable_adapter(tmp_path, tiny_dir):
    seen = []
    result = train(_cfg(tmp_path), subscribers=[seen.append], examples=sum_examples(24))
    assert result.status == "finished", result.summary
    kinds = [e.kind for e in seen]
    assert (
        kinds[:2] == ["phase", "started"] and kinds[-1] == "finished"
    )  # "loading" comes before the data counts are known
    steps = [e for e in seen if isinstance(e, ev.Step)]
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert all(s.tokens_per_second > 0 and s.learning_rate >= 0 for s in steps)
    evals = [e for e in seen if isinstance(e, ev.Eval)]
    assert [e.step for e in evals] == [0, 2, 4]
    for key in ("prompt_loss", "completion_loss", "full_loss", "token_accuracy"):
        assert all(e.metrics[key] == e.metrics[key] for e in evals), key
    logged = [json.loads(line)["type"] for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    assert logged == kinds
    run = load_run(result.run_dir)
    assert run.status == "finished" and run.config.train.max_steps == 4
    assert set(run.summary["best"]) >= {"completion_loss", "full_loss", "prompt_loss"}
    comparison = run.comparison()
    assert set(comparison) == {"on", "off", "examples"} and len(comparison["on"]["generations"]) == 2
    assert comparison["on"]["probe_perplexity"] > 1
    model = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_dir), run.adapter_dir())
    assert any("lora" in n for n, _ in model.named_parameters())


def test_stop_is_honoured_within_one_step_and_keeps_a_loadable_adapter(tmp_path, tiny_dir):
    stop = threading.Event()

    def stop_after_two(event):
        if isinstance(event, ev.Step) and event.step == 2:
            stop.set()

    seen = []
    result = train(
        _cfg(tmp_path, **{"train.max_steps": 50}),
        subscribers=[stop_after_two, seen.append],
        stop=stop,
        examples=sum_examples(24),
    )
    assert result.status == "stopped"
    assert max(e.step for e in seen if isinstance(e, ev.Step)) == 2
    assert isinstance(seen[-1], ev.Stopped)
    run = load_run(result.run_dir)
    assert run.summary["status"] == "stopped" and (result.run_dir / "config.yaml").exists()
    load_adapter(AutoModelForCausalLM.from_pretrained(tiny_dir), result.run_dir / "last_adapter")


def test_nan_loss_fails_clearly_and_keeps_config_events_and_last_adapter(tmp_path, monkeypatch):
    import plw_lab.core.training as training_module

    held = {}

    def attach_and_keep(model, lora_cfg):
        held["model"] = attach_lora(model, lora_cfg)
        return held["model"]

    def diverge_after_step_two(event):
        # NaN adapter weights make the next loss NaN, as after a divergent update.
        if isinstance(event, ev.Step) and event.step == 2:
            with torch.no_grad():
                for name, p in held["model"].named_parameters():
                    if "lora_B" in name:
                        p.fill_(float("nan"))

    monkeypatch.setattr(training_module, "attach_lora", attach_and_keep)
    seen = []
    result = train(
        _cfg(tmp_path, **{"train.max_steps": 6, "train.eval_interval": 100}),
        subscribers=[diverge_after_step_two, seen.append],
        examples=sum_examples(24),
    )
    assert result.status == "failed"
    assert "NonFiniteLossError" in result.summary["error"] and "learning_rate" in result.summary["error"]
    assert isinstance(seen[-1], ev.Failed) and seen[-1].step == 2
    assert (result.run_dir / "config.yaml").exists() and (result.run_dir / "events.jsonl").exists()
    assert (result.run_dir / "last_adapter" / "adapter_config.json").exists()
    assert load_run(result.run_dir).status == "failed"


def test_early_stopping_restores_the_best_adapter(tmp_path):
    # A huge learning rate makes completion loss worse after the first evaluations.
    cfg = _cfg(
        tmp_path,
        **{
            "train.max_steps": 30,
            "train.eval_interval": 1,
            "train.patience": 2,
            "train.learning_rate": 0.5,
            "train.warmup_ratio": 0.0,
        },
    )
    seen = []
    result = train(cfg, subscribers=[seen.append], examples=sum_examples(24), compare=False)
    evals = [e for e in seen if isinstance(e, ev.Eval)]
    best = min(evals, key=lambda e: e.metrics["completion_loss"])
    assert result.status == "stopped" and "early stopping" in result.summary["stop_reason"]
    assert result.summary["adapter_step"] == best.step
    assert evals[-1].step - best.step >= 2


def test_a_set_with_nothing_trainable_is_refused_clearly(tmp_path):
    from plw_lab.core.data import Example

    too_long = [
        Example([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 400}], source_index=i)
        for i in range(5)
    ]
    cfg = _cfg(tmp_path, **{"data.max_length": 32})
    # Not one example keeps its template head and reply at 32 tokens: the error names the length that works,
    # before a run folder exists.
    with pytest.raises(
        DataError, match="data.max_length 32 is too small for the template head plus the answer"
    ) as error:
        train(cfg, examples=too_long)
    assert re.search(r"the smallest value that keeps every example is \d+", str(error.value))
    assert not Path(cfg.train.output_dir).exists()


def test_a_run_keeps_a_copy_of_its_data_file(tmp_path):
    from plw_lab.core.data import load_examples

    upload = tmp_path / "upload" / "mine.jsonl"  # like a browser upload: a temporary file that will vanish
    upload.parent.mkdir()
    upload.write_text(
        "".join(json.dumps({"prompt": f"{i} plus {i}?", "completion": str(2 * i)}) + "\n" for i in range(12))
    )
    result = train(_cfg(tmp_path, **{"data.source": str(upload), "train.max_steps": 1}), compare=False)
    assert result.status == "finished", result.summary
    upload.unlink()
    run = load_run(result.run_dir)
    assert run.config.data.source == str((result.run_dir / "data" / "mine.jsonl").resolve())
    assert [e.messages for e in load_examples(run.config.data)][3][-1]["content"] == "6"


def test_a_bfloat16_run_evaluates_after_training_like_float32(tmp_path):
    """bfloat16 is what 'auto' picks on GPUs: the Trainer's mixed-precision wrapper hands back float32
    states while the output layer stays bfloat16, and every evaluation after the first step must still run."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _cfg(tmp_path / dtype, **{"model.dtype": dtype, "eval.kl_to_base": True})
        result = train(cfg, examples=sum_examples(24))
        assert result.status == "finished", result.summary
        results[dtype] = [e for e in load_run(result.run_dir).evals if e.step > 0]
    for full, half in zip(results["float32"], results["bfloat16"]):
        assert half.metrics["kl_to_base"] > 0
        for key in ("prompt_loss", "completion_loss", "kl_to_base"):
            assert half.metrics[key] == pytest.approx(full.metrics[key], rel=0.05, abs=0.01), key
