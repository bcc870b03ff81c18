"""Validation metrics, adapter on/off comparison, greedy generations and the forgetting probe.

One teacher-forced forward pass per example gives everything: prompt, completion and
full-sequence loss (each a sum over the whole set divided by its token count, never a mean of
batch means), completion token accuracy, and the answer of multiple-choice data read from the
log-probabilities of the candidate answers at the position where they part ways. Greedy
decoding would pick the same answer, at the cost of a generation loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.distributed as dist

from .collate import collate
from .forward import SharedHead, final_hidden, output_layer
from .loss import token_ce
from .masks import Encoded, prompt_text


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def adapter(model, enabled: bool):
    """Run with the LoRA adapter on (as trained) or off (the base model)."""
    if enabled or not hasattr(model, "disable_adapter"):
        yield model
    else:
        with model.disable_adapter():
            yield model


@contextlib.contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _shard(items: list) -> list:
    if dist.is_available() and dist.is_initialized():
        return items[dist.get_rank() :: dist.get_world_size()]
    return items


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def _answer_prefix(e: Encoded) -> Encoded:
    """`e` cut just before its answer token: all that scoring the answer reads."""
    end = e.answer_position if e.answer_position is not None else len(e)
    return dataclasses.replace(e, input_ids=e.input_ids[:end], prompt_mask=e.prompt_mask[:end], completion_mask=e.completion_mask[:end])


class _PerSource:
    """Loss and answer sums per data source (`Example.meta["source"]`, set when data is mixed)."""

    COLUMNS = ("prompt_ce", "prompt_n", "completion_ce", "completion_n", "right", "scored")

    def __init__(self, encoded: list[Encoded], device) -> None:
        tags = [(e.example.meta or {}).get("source") for e in encoded]
        self.names = sorted({t for t in tags if t})
        self.index = {name: i for i, name in enumerate(self.names)}
        self.counts = {name: tags.count(name) for name in self.names}
        self.sums = torch.zeros(len(self.names), len(self.COLUMNS), dtype=torch.float64, device=device)

    def row(self, e: Encoded) -> torch.Tensor | None:
        i = self.index.get((e.example.meta or {}).get("source"))
        return None if i is None else self.sums[i]

    def add_losses(self, batch: list[Encoded], ce: torch.Tensor, prompt: torch.Tensor, completion: torch.Tensor) -> None:
        if not self.names:
            return
        per_row = torch.stack([(ce * prompt).sum(1), prompt.sum(1), (ce * completion).sum(1), completion.sum(1)], 1)
        for r, e in enumerate(batch):
            target = self.row(e)
            if target is not None:
                target[:4] += per_row[r].to(target.dtype)

    def add_answer(self, e: Encoded, right: bool) -> None:
        target = self.row(e)
        if target is not None:
            target[4] += right
            target[5] += 1

    def metrics(self, losses: bool) -> dict:
        out = {}
        for name, (p_ce, p_n, c_ce, c_n, right, scored) in zip(self.names, _all_reduce(self.sums).tolist()):
            entry = {"n_examples": self.counts[name]}
            if losses:
                entry |= {"prompt_loss": p_ce / p_n if p_n else float("nan"),
                          "completion_loss": c_ce / c_n if c_n else float("nan")}
            if scored:
                entry["answer_accuracy"] = right / scored
            out[name] = entry
        return out


def evaluate(model, encoded: list[Encoded], pad_id: int, batch_size: int = 8, chunk_size: int = 1024, details: bool = False, prefix=None, losses: bool = True) -> dict:
    """Validation metrics over `encoded`; with `details`, also each example's answer scores.

    `prefix` (a `lab.prefix.FrozenPrefix`) reuses the frozen lower layers' states across evaluations.
    `losses=False` scores the answers only: each example runs only up to its answer token and the
    output layer runs at that one position instead of every position.
    Batches are formed from examples of similar length (less padding) and the tokens that all
    examples start with run once (`lab.forward.SharedHead`).
    """
    device = device_of(model)
    weight, bias = output_layer(model)
    choices = next((e.example.choices for e in encoded if e.example.choices), ())
    # prompt ce/n, completion ce/n/hits, answers right, then per-choice counts of predictions and of true answers
    k = len(choices)
    sums = torch.zeros(6 + 2 * k, dtype=torch.float64, device=device)
    per_example = []
    items = encoded if losses else [_answer_prefix(e) for e in encoded]
    per_source = _PerSource(encoded, device)
    mine = _shard(items)
    rank = {id(e.example): i for i, e in enumerate(mine)}  # details come back in the caller's order
    with eval_mode(model):
        # From the whole set, so every process agrees on the head and runs the same forward passes.
        head = SharedHead.build(model, [e.input_ids for e in items])
        for batch in _batches(sorted(mine, key=len), batch_size):
            tensors = {key: v.to(device) for key, v in collate(batch, pad_id).items()}
            hidden = final_hidden(model, tensors["input_ids"], tensors["attention_mask"], prefix=prefix, head=head)
            if losses:
                ce, hit = token_ce(hidden[:, :-1], weight, tensors["input_ids"][:, 1:], chunk_size, bias)
                prompt = tensors["prompt_mask"][:, 1:].bool()
                completion = tensors["completion_mask"][:, 1:].bool()
                sums[0] += ce[prompt].sum()
                sums[1] += prompt.sum()
                sums[2] += ce[completion].sum()
                sums[3] += completion.sum()
                sums[4] += hit[completion].sum()
                per_source.add_losses(batch, ce, prompt, completion)
            for row, e in enumerate(batch):
                if e.answer_position is None:
                    continue
                logits = torch.nn.functional.linear(hidden[row, e.answer_position - 1], weight, bias).float()
                logprobs = torch.log_softmax(logits, -1)[e.choice_ids]
                predicted = int(logprobs.argmax())
                # Each source scores its own answers; the set-wide counts need one set of candidates.
                per_source.add_answer(e, predicted == e.example.answer_index)
                if tuple(e.example.choices) != tuple(choices):
                    continue
                sums[5] += predicted == e.example.answer_index
                sums[6 + predicted] += 1
                sums[6 + k + e.example.answer_index] += 1
                if details:
                    per_example.append(
                        (
                            rank[id(e.example)],
                            {
                                "index": e.example.source_index,
                                "answer": e.example.answer,
                                "predicted": choices[predicted],
                                "logprobs": dict(zip(choices, logprobs.tolist())),
                            },
                        )
                    )
    sums = _all_reduce(sums).tolist()
    p_ce, p_n, c_ce, c_n, c_hit, right = sums[:6]
    metrics = {"n_examples": len(encoded)}
    if losses:
        metrics |= {
            "prompt_loss": p_ce / p_n if p_n else float("nan"),
            "completion_loss": c_ce / c_n if c_n else float("nan"),
            "full_loss": (p_ce + c_ce) / (p_n + c_n) if p_n + c_n else float("nan"),
            "token_accuracy": c_hit / c_n if c_n else float("nan"),
        }
    if choices:
        truth = sums[6 + k :]
        scored = sum(truth)
        metrics.update(
            {
                "answer_accuracy": right / scored if scored else float("nan"),
                "predicted": dict(zip(choices, map(int, sums[6 : 6 + k]))),
                "answers": dict(zip(choices, map(int, truth))),
                "majority_baseline": max(truth) / scored if scored else float("nan"),
            }
        )
    if per_source.names:
        metrics["per_source"] = per_source.metrics(losses)
    if details:
        metrics["examples"] = [item for _, item in sorted(per_example, key=lambda pair: pair[0])]
    return metrics


def evaluate_answers(model, encoded: list[Encoded], pad_id: int, batch_size: int = 8, chunk_size: int = 1024, prefix=None) -> dict:
    """`evaluate` with each example's answer and candidate log-probabilities (this process's share)."""
    return evaluate(model, encoded, pad_id, batch_size, chunk_size, details=True, prefix=prefix)


def token_losses(model, enc: Encoded, chunk_size: int = 1024) -> list[float | None]:
    """Cross-entropy of every token given the ones before it (None for the first), for the token view."""
    device = device_of(model)
    ids = torch.tensor([enc.input_ids], device=device)
    weight, bias = output_layer(model)
    with eval_mode(model):
        hidden = final_hidden(model, ids, torch.ones_like(ids))
        ce, _ = token_ce(hidden[:, :-1], weight, ids[:, 1:], chunk_size, bias)
    return [None] + ce[0].tolist()


def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, chunk_size: int = 1024) -> float:
    """exp(mean token cross-entropy) over plain texts: the forgetting probe."""
    device = device_of(model)
    weight, bias = output_layer(model)
    total, count = 0.0, 0
    with eval_mode(model):
        for batch in _batches(texts, batch_size):
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=True)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            hidden = final_hidden(model, ids, mask)
            ce, _ = token_ce(hidden[:, :-1], weight, ids[:, 1:], chunk_size, bias)
            valid = mask[:, 1:].bool()
            total += float(ce[valid].sum())
            count += int(valid.sum())
    return math.exp(total / count) if count else float("nan")


def generate(model, tokenizer, encoded: list[Encoded], max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
    """Greedy completions of each example's prompt (the conversation before its last reply)."""
    device = device_of(model)
    prompts = [prompt_text(tokenizer, e.example) for e in encoded]
    return generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, device)


def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 8, device=None) -> list[str]:
    device = device or device_of(model)
    outputs = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    try:
        with eval_mode(model):
            for batch in _batches(prompts, batch_size):
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return outputs


def compare(model, tokenizer, encoded: list[Encoded], probe_texts: list[str], n_generations: int = 4, max_new_tokens: int = 32, batch_size: int = 8, chunk_size: int = 1024, prefix=None, known: dict | None = None) -> dict:
    """The same validation metrics, generations and forgetting probe with the adapter on and off.

    `known` may hold metrics already measured on the same set ({"on": ..., "off": ...}, with
    per-example details): a training run has them from its evaluations and need not redo them.
    """
    result = {}
    known = known or {}
    for label, enabled in (("on", True), ("off", False)):
        with adapter(model, enabled):
            result[label] = {
                "metrics": known.get(label) or evaluate_answers(model, encoded, tokenizer.pad_token_id, batch_size, chunk_size, prefix),
                "generations": generate(model, tokenizer, encoded[:n_generations], max_new_tokens, batch_size),
                "probe_perplexity": perplexity(model, tokenizer, probe_texts, batch_size, chunk_size) if probe_texts else None,
            }
    result["examples"] = [
        {"prompt": prompt_text(tokenizer, e.example), "reference": e.example.messages[-1]["content"]}
        for e in encoded[:n_generations]
    ]
    return result
