"""Validation metrics, adapter on/off comparison, greedy generations and the forgetting probe.

One teacher-forced forward pass per example gives everything: prompt, completion and
full-sequence loss (each a sum over the whole set divided by its token count, never a mean of
batch means), completion token accuracy, and the answer of multiple-choice data read from the
log-probabilities of the candidate answers at the position where they part ways. Greedy
decoding restricted to the candidates would pick the same answer, at the cost of a generation loop.

The completion loss splits into the answer tokens' loss and the rest (format: the end-of-turn
token). What the model does unrestricted is measured apart: the probability it puts on the
candidates at all (candidate mass) and a few greedily generated tokens parsed for an answer
(generated accuracy). Every accuracy carries its Wilson interval, and two sets of answers to the
same examples are compared with an exact McNemar test (`plw_lab.core.scores` holds the statistics).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re

import torch
import torch.distributed as dist

from plw_lab.core import scores
from plw_lab.core.collate import collate
from plw_lab.core.compat import logit_softcap, output_layer
from plw_lab.core.config import LabConfig
from plw_lab.core.diversity import answer_entropy, text_diversity
from plw_lab.core.forward import SharedHead, final_hidden
from plw_lab.core.loss import TokenScores, base_distributions, head_logits, token_ce, token_ce_kl
from plw_lab.core.masks import Encoded, prompt_text


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


def _gather(items: list) -> list:
    """Every process's `items`, concatenated (each process's own list when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]
    return items


def _answer_prefix(e: Encoded) -> Encoded:
    """`e` cut just before its answer token: all that scoring the answer reads."""
    end = e.answer_position if e.answer_position is not None else len(e)
    return dataclasses.replace(
        e,
        input_ids=e.input_ids[:end],
        prompt_mask=e.prompt_mask[:end],
        completion_mask=e.completion_mask[:end],
        answer_mask=e.answer_mask[:end],
    )


def _answer_tensor(batch: list[Encoded], shape: torch.Size, device) -> torch.Tensor:
    """The batch's answer masks, padded like `collate` pads the others and shifted to the targets."""
    out = torch.zeros(shape[0], shape[1] + 1, dtype=torch.bool)
    for row, e in enumerate(batch):
        if e.answer_mask:
            out[row, : len(e.answer_mask)] = torch.tensor(e.answer_mask, dtype=torch.bool)
    return out[:, 1:].to(device)


class _PerSource:
    """Losses per data source (`Example.meta["source"]`, set when data is mixed); answers come from the scored
    examples."""

    def __init__(self, encoded: list[Encoded], device) -> None:
        tags = [(e.example.meta or {}).get("source") for e in encoded]
        self.names = sorted({t for t in tags if t})
        self.index = {name: i for i, name in enumerate(self.names)}
        self.counts = {name: tags.count(name) for name in self.names}
        # prompt ce, prompt n, completion ce, completion n
        self.sums = torch.zeros(len(self.names), 4, dtype=torch.float64, device=device)

    def add_losses(
        self, batch: list[Encoded], ce: torch.Tensor, prompt: torch.Tensor, completion: torch.Tensor
    ) -> None:
        if not self.names:
            return
        per_row = torch.stack([(ce * prompt).sum(1), prompt.sum(1), (ce * completion).sum(1), completion.sum(1)], 1)
        for r, e in enumerate(batch):
            i = self.index.get((e.example.meta or {}).get("source"))
            if i is not None:
                self.sums[i] += per_row[r].to(self.sums.dtype)

    def metrics(self, losses: bool, examples: list[dict]) -> dict:
        out = {}
        for name, (p_ce, p_n, c_ce, c_n) in zip(self.names, _all_reduce(self.sums).tolist()):
            entry = {"n_examples": self.counts[name]}
            if losses:
                entry |= {
                    "prompt_loss": p_ce / p_n if p_n else float("nan"),
                    "completion_loss": c_ce / c_n if c_n else float("nan"),
                }
            mine = [ex for ex in examples if ex.get("source") == name]
            if mine:
                right = sum(ex["predicted"] == ex["answer"] for ex in mine)
                entry |= {
                    "answer_accuracy": right / len(mine),
                    "answer_accuracy_ci": list(scores.wilson(right, len(mine))),
                }
            out[name] = entry
        return out


def evaluate(
    model,
    encoded: list[Encoded],
    pad_id: int,
    batch_size: int = 8,
    chunk_size: int = 1024,
    details: bool = False,
    prefix=None,
    losses: bool = True,
    base_states: dict | None = None,
    follow: bool = False,
) -> dict:
    """Validation metrics over `encoded`; with `details`, also each example's answer scores.

    Completion loss splits into `answer_loss` (the answer tokens: the letter of multiple-choice
    and classification data) and `format_loss` (the rest of the completion, e.g. `<|im_end|>`);
    free-form data has no answer tokens and neither split. Every example with candidates is
    scored, whatever its number of options; counts are keyed by the candidate as written.
    `prefix` (a `plw_lab.core.prefix.FrozenPrefix`) reuses the frozen lower layers' states across evaluations.
    `losses=False` scores the answers only: each example runs only up to its answer token and the
    output layer runs at that one position instead of every position.
    Batches are formed from examples of similar length (less padding) and the tokens that all
    examples start with run once (`plw_lab.core.forward.SharedHead`).
    The positions inside that shared head have the same state and next token in every example:
    their losses are computed once and counted for every example.
    With `base_states` (a dict kept across evaluations) a model with an adapter also reports
    `kl_to_base`, exactly: the base model's final states and log-normalisers are computed at the
    first evaluation and kept there, and the KL is read from the same logits as the losses
    (`plw_lab.core.loss.token_ce_kl`).
    With `follow`, metrics["followed"] maps each answered example's index to the arg-max tokens from its
    answer on: what greedy decoding emits for as long as it follows the reference (`generate_answers`).
    """
    device = device_of(model)
    kl_sums = torch.zeros(2, dtype=torch.float64, device=device)
    with_kl = base_states is not None and losses and hasattr(model, "disable_adapter")
    # prompt ce/n, completion ce/n/hits, answer ce/n
    sums = torch.zeros(7, dtype=torch.float64, device=device)
    scored, followed = [], {}
    items = encoded if losses else [_answer_prefix(e) for e in encoded]
    per_source = _PerSource(encoded, device)
    order = {id(e.example): i for i, e in enumerate(items)}  # results come back in the caller's order
    mine = _shard(items)
    with eval_mode(model):
        # From the whole set, so every process agrees on the head and runs the same forward passes.
        head = SharedHead.build(model, [e.input_ids for e in items])
        # Leading positions whose state and next token every example shares (those inside the head).
        shared = head.length - 1 if head is not None and losses else 0
        scorer = _Scorer(model, chunk_size, base_states if with_kl else None)
        if shared:
            head_ids = torch.tensor(items[0].input_ids[: shared + 1], device=device)
            head_scores = scorer.score(
                ("head",),
                head.states[-1][0, :shared],
                head_ids[1:],
                lambda: final_hidden(model, head_ids[None])[0, :-1],
            )
        for batch in _batches(sorted(mine, key=len), batch_size):
            tensors = {key: v.to(device) for key, v in collate(batch, pad_id).items()}
            hidden = final_hidden(model, tensors["input_ids"], tensors["attention_mask"], prefix=prefix, head=head)
            if losses:
                # Only positions with a real next token reach the output layer: padding has no loss.
                valid = tensors["attention_mask"][:, 1:].bool()
                own = valid.clone()
                own[:, :shared] = False
                states, targets = hidden[:, :-1][own], tensors["input_ids"][:, 1:][own]
                # Each answer's candidates, read from the logits its answer loss comes from.
                flat = own.flatten().cumsum(0).view(own.shape) - 1
                picks = {
                    int(flat[row, e.answer_position - 1]): e.choice_ids
                    for row, e in enumerate(batch)
                    if e.answer_position is not None and own[row, e.answer_position - 1]
                }
                batch_scores = scorer.score(
                    tuple(id(e.example) for e in batch),  # batches are the same at every evaluation
                    states,
                    targets,
                    functools.partial(_own_states, model, tensors, own, prefix),
                    picks,
                )
                ce = torch.zeros(valid.shape, dtype=torch.float32, device=device)
                best = torch.full(valid.shape, -1, dtype=torch.long, device=device)
                ce[own], best[own] = batch_scores.ce, batch_scores.best
                if shared:
                    ce[:, :shared], best[:, :shared] = head_scores.ce, head_scores.best
                hit = (best == tensors["input_ids"][:, 1:]) & valid
                if with_kl:
                    head_sum = head_scores.kl.sum().double() * len(batch) if shared else 0.0
                    kl_sums += torch.stack([batch_scores.kl.sum().double() + head_sum, valid.sum().double()])
                prompt = tensors["prompt_mask"][:, 1:].bool()
                completion = tensors["completion_mask"][:, 1:].bool()
                answer = _answer_tensor(batch, completion.shape, device) & completion
                # Summed in float64, so a mean is the mean of the per-token numbers (and of the answers' log-probs).
                sums[0] += ce[prompt].double().sum()
                sums[1] += prompt.sum()
                sums[2] += ce[completion].double().sum()
                sums[3] += completion.sum()
                sums[4] += hit[completion].sum()
                sums[5] += ce[answer].double().sum()
                sums[6] += answer.sum()
                per_source.add_losses(batch, ce, prompt, completion)
            for row, e in enumerate(batch):
                if e.answer_position is None:
                    continue
                choices = e.example.choices
                if losses and own[row, e.answer_position - 1]:
                    logprobs = batch_scores.picked[int(flat[row, e.answer_position - 1])]
                else:  # scoring answers only, or an answer inside the head every example shares
                    logprobs = scorer.candidate_logprobs(hidden[row, e.answer_position - 1], e.choice_ids)
                result = {
                    "index": e.example.source_index,
                    "answer": e.example.answer,
                    "predicted": choices[int(logprobs.argmax())],
                    "logprobs": dict(zip(choices, logprobs.tolist())),
                    "candidate_mass": float(logprobs.exp().sum()),
                }
                if follow and losses and any(e.answer_mask):
                    followed[e.example.source_index] = best[row, e.answer_mask.index(1) - 1 : len(e) - 1].tolist()
                if "label" in e.example.meta:
                    result["label"] = e.example.meta["label"]
                if "source" in e.example.meta:
                    result["source"] = e.example.meta["source"]
                scored.append((order[id(e.example)], result))
    p_ce, p_n, c_ce, c_n, c_hit, a_ce, a_n = _all_reduce(sums).tolist()
    examples = [item for _, item in sorted(_gather(scored), key=lambda pair: pair[0])]
    metrics = {"n_examples": len(encoded)}
    if losses:
        metrics |= {
            "prompt_loss": p_ce / p_n if p_n else float("nan"),
            "completion_loss": c_ce / c_n if c_n else float("nan"),
            "full_loss": (p_ce + c_ce) / (p_n + c_n) if p_n + c_n else float("nan"),
            "token_accuracy": c_hit / c_n if c_n else float("nan"),
        }
        if a_n:
            metrics["answer_loss"] = a_ce / a_n
            metrics["format_loss"] = (c_ce - a_ce) / (c_n - a_n) if c_n > a_n else float("nan")
    if with_kl:
        kl, n = _all_reduce(kl_sums).tolist()
        metrics["kl_to_base"] = kl / n if n else float("nan")
    if examples:
        metrics |= answer_metrics(examples)
    if per_source.names:
        metrics["per_source"] = per_source.metrics(losses, examples)
    if details:
        metrics["examples"] = examples
    if follow:
        metrics["followed"] = dict(_gather(list(followed.items())))
    return metrics


def _own_states(model, tensors: dict, own: torch.Tensor, prefix) -> torch.Tensor:
    """The final states of a batch at its `own` positions (each followed by a next token)."""
    return final_hidden(model, tensors["input_ids"], tensors["attention_mask"], prefix=prefix)[:, :-1][own]


class _Scorer:
    """`token_ce_kl` for an evaluation, with the KL to the base model when `base_states` is given.

    The base model's distributions at each scored set of positions are computed once per run and kept
    in `base_states` under the set's key. While the adapter adds nothing (as at the first evaluation)
    the scored model is the base: its own logits give the base's log-normalisers and the KL is zero,
    all from one output-layer product.
    """

    def __init__(self, model, chunk_size: int, base_states: dict | None):
        self.model, self.chunk_size, self.base_states = model, chunk_size, base_states
        self.weight, self.bias = output_layer(model)
        self.cap = logit_softcap(model)
        self.adapter_is_identity = base_states is not None and _adapter_is_identity(model)

    def candidate_logprobs(self, state: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """log p of each token in `ids` after `state` (H,), through `token_ce_kl` as the losses are (float32
        `log_softmax` is ~1e-5 away from them on a 49k vocabulary); for a state outside the loss pass."""
        no_target = state.new_zeros(1, dtype=torch.long)
        scores = token_ce_kl(state[None], self.weight, no_target, head_bias=self.bias, softcap=self.cap, picks={0: ids})
        return scores.picked[0]

    def score(self, key, states, targets, base_hidden, picks=None) -> TokenScores:
        """Scores of `states` (n, H) against `targets` (n,), and the log-probabilities `picks` asks for;
        `base_hidden()` gives the base model's states there (it runs with the adapter off, and only when
        `key` has none kept yet)."""
        product = functools.partial(
            token_ce_kl,
            states,
            self.weight,
            targets,
            chunk_size=self.chunk_size,
            head_bias=self.bias,
            softcap=self.cap,
            picks=picks,
        )
        kept = self.base_states
        if kept is None:
            return product()
        if key not in kept and self.adapter_is_identity:
            result = product()
            kept[key] = result.as_base(states)
            return result._replace(kl=torch.zeros_like(result.ce))
        if key not in kept:
            with adapter(self.model, False):
                kept[key] = base_distributions(base_hidden(), self.weight, self.chunk_size, self.bias, self.cap)
        return product(base=kept[key])


def _adapter_is_identity(model) -> bool:
    """Whether the adapter adds exactly nothing: plain LoRA whose B matrices are all zero, as before
    the first step, when the adapted model's states are the base model's to the last bit."""
    lora = [(name, p) for name, p in model.named_parameters() if "lora_" in name]
    plain = all(".lora_A." in name or ".lora_B." in name for name, _ in lora)
    return bool(lora) and plain and not any(p.any() for name, p in lora if ".lora_B." in name)


def answer_metrics(examples: list[dict]) -> dict:
    """Accuracy with its Wilson interval, answer counts, baselines and candidate mass from scored examples.

    Classification data (examples with a "label") also gets balanced accuracy and macro-F1, and
    binary classification ROC AUC from the difference of the two candidates' log-probabilities.
    """
    n = len(examples)
    labels: list[str] = []
    for ex in examples:  # every candidate seen, in order: mixed option counts share their letters
        labels += [c for c in ex["logprobs"] if c not in labels]
    right = sum(ex["predicted"] == ex["answer"] for ex in examples)
    truth = [ex["answer"] for ex in examples]
    predicted = [ex["predicted"] for ex in examples]
    answers = {c: truth.count(c) for c in labels}
    metrics = {
        "answer_accuracy": right / n,
        "answer_accuracy_ci": list(scores.wilson(right, n)),
        "predicted": {c: predicted.count(c) for c in labels},
        "answers": answers,
        "majority_baseline": max(answers.values()) / n,
        "chance": sum(1 / len(ex["logprobs"]) for ex in examples) / n,
        "candidate_mass": sum(ex["candidate_mass"] for ex in examples) / n,
    }
    metrics["answer_entropy"] = answer_entropy(metrics["predicted"])
    if all("label" in ex for ex in examples):
        metrics["balanced_accuracy"] = scores.balanced_accuracy(truth, predicted)
        metrics["macro_f1"] = scores.macro_f1(truth, predicted)
        if all(len(ex["logprobs"]) == 2 for ex in examples):
            first, second = labels[:2]
            margin = [ex["logprobs"][second] - ex["logprobs"][first] for ex in examples]
            metrics["auc"] = scores.roc_auc(margin, [t == second for t in truth])
    return metrics


def parse_answer(text: str, choices, option_texts=()) -> str | None:
    """The candidate a generated text answers with, or None when it names none.

    The text must start with a candidate (after blanks, "**", "(" or an "Answer:"/"The answer is"
    lead-in) followed by nothing or a non-alphanumeric character, so "Apple" is not "A". Failing
    that, a text that starts with one option's own words (`option_texts`, "BBB+" for "(A) BBB+")
    answers that option: it ignored the asked format, not the question.
    """
    stripped = text.strip()
    cleaned = re.sub(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\s*[:\-]?\s*", "", stripped, flags=re.I)
    texts = (stripped, cleaned, cleaned.lstrip("*([ '\""))
    named = dict(zip(choices, choices))
    by_words = {words: choice for choice, words in zip(choices, option_texts) if words}
    for lookup in (named, by_words):
        for candidate_text in texts:
            for key in sorted(lookup, key=len, reverse=True):
                rest = candidate_text[len(key) :]
                if candidate_text.startswith(key) and not (rest[:1].isalnum()):
                    return lookup[key]
    return None


def generate_answers(
    model,
    tokenizer,
    encoded: list[Encoded],
    max_new_tokens: int = 4,
    batch_size: int = 8,
    followed: dict[int, list[int]] | None = None,
) -> dict:
    """Greedy answers of the examples with candidates, parsed: accuracy, its interval and the unparseable count.

    Each example generates from exactly the tokens scoring reads before its answer (the prompt as
    encoded, truncation included). An answer that names no candidate counts as wrong and is counted.
    Every process generates the whole set, so all run the same forward passes.
    `followed` (from `evaluate(..., follow=True)` of the same model) spares the generation loop every
    example whose greedy tokens follow its reference answer to the end of the turn: a trained model's
    usual case, read from the evaluation's own forward pass (`followed_text`).
    """
    items = [e for e in encoded if e.answer_position is not None and any(e.answer_mask)]
    if not items:
        return {}
    eos = tokenizer.eos_token_id
    known = {}
    for i, e in enumerate(items):
        text = followed_text(e, (followed or {}).get(e.example.source_index), max_new_tokens, eos)
        if text is not None:
            known[i] = tokenizer.decode(text, skip_special_tokens=True)
    rest = [i for i in range(len(items)) if i not in known]
    generated = _generate_ids(
        model,
        tokenizer,
        [items[i].input_ids[: items[i].answer_mask.index(1)] for i in rest],
        max_new_tokens,
        batch_size,
    )
    texts = {**known, **dict(zip(rest, generated))}
    per_example = []
    for i, e in enumerate(items):
        text = texts[i]
        per_example.append(
            {
                "index": e.example.source_index,
                "answer": e.example.answer,
                "generated": text,
                "parsed": parse_answer(text, e.example.choices, e.example.option_texts),
            }
        )
    right = sum(ex["parsed"] == ex["answer"] for ex in per_example)
    n = len(per_example)
    return {
        "answer_accuracy_generated": right / n,
        "answer_accuracy_generated_ci": list(scores.wilson(right, n)),
        "unparseable": sum(ex["parsed"] is None for ex in per_example),
        "generated": per_example,
    }


def followed_text(e: Encoded, argmax: list[int] | None, max_new_tokens: int, eos: int | None) -> list[int] | None:
    """The tokens greedy decoding emits from `e`'s answer on, when the arg-max tokens of a teacher-forced pass
    (`argmax[j]`: the most likely token after the prompt and the reference's first j tokens) settle them:
    each one equals the reference's next token until an end-of-turn token or `max_new_tokens`. None when
    the model leaves the reference first, and only a generation loop can say what it writes then."""
    if argmax is None:
        return None
    reference = e.input_ids[e.answer_mask.index(1) :]
    for j, (mine, theirs) in enumerate(zip(argmax, reference)):
        if j == max_new_tokens:
            return reference[:j]
        if mine != theirs:
            return None
        if theirs == eos:
            return reference[: j + 1]
    # Followed to the reference's end: settled only if that end is also where generation stops.
    return reference if len(reference) == max_new_tokens and len(argmax) >= len(reference) else None


def with_generated(metrics: dict, generated: dict) -> dict:
    """`metrics` (with per-example "examples") plus generated answers, merged into each example."""
    generated = dict(generated)
    by_index = {ex["index"]: ex for ex in generated.pop("generated", [])}
    out = {**metrics, **generated}
    if "examples" in metrics:
        out["examples"] = [
            {**ex, **{k: v for k, v in by_index.get(ex["index"], {}).items() if k in ("generated", "parsed")}}
            for ex in metrics["examples"]
        ]
    return out


def paired_answers(first: list[dict], second: list[dict], key: str = "predicted") -> dict:
    """Exact McNemar test of two sets of answers to the same validation examples (per-example details).

    `key` is "predicted" (scored answers) or "parsed" (generated ones). `first_only`/`second_only`
    count the examples only one side gets right; `verdict` says whether the difference is beyond noise.
    """
    a = {ex["index"]: ex[key] == ex["answer"] for ex in first if key in ex}
    b = {ex["index"]: ex[key] == ex["answer"] for ex in second if key in ex}
    if set(a) != set(b):
        raise ValueError(
            f"paired comparison needs the same validation examples: {len(a)} vs {len(b)}, {len(set(a) ^ set(b))} differ"
        )
    keys = sorted(a)
    test = scores.mcnemar([a[k] for k in keys], [b[k] for k in keys])
    return {
        "n": test["n"],
        "first_only": test["a_only"],
        "second_only": test["b_only"],
        "p_value": test["p_value"],
        "verdict": test["verdict"],
    }


def format_vs_task(on: dict, off: dict) -> dict | None:
    """How much of the adapter's gain in generated accuracy is the answer format and how much the task.

    Scored accuracy compares the candidates with one another, so it does not care how much
    probability the model gives the candidates at all: its change is the task. Generated accuracy
    also needs the model to answer in the expected format; what it gains beyond the scored gain is
    format, visible in the candidate mass and the share of parseable answers.
    """
    needed = ("answer_accuracy", "answer_accuracy_generated", "candidate_mass", "unparseable", "n_examples")
    if any(on.get(k) is None or off.get(k) is None for k in needed):
        return None
    task = on["answer_accuracy"] - off["answer_accuracy"]
    generated = on["answer_accuracy_generated"] - off["answer_accuracy_generated"]
    n_off, n_on = max(sum((off.get("answers") or {}).values()), 1), max(sum((on.get("answers") or {}).values()), 1)
    parse_off, parse_on = 1 - off["unparseable"] / n_off, 1 - on["unparseable"] / n_on
    text = (
        f"Generated accuracy {off['answer_accuracy_generated']:.0%} -> {on['answer_accuracy_generated']:.0%} "
        f"({generated:+.0%}): "
        f"{task:+.0%} is task (scored accuracy {off['answer_accuracy']:.0%} -> {on['answer_accuracy']:.0%}) and "
        f"{generated - task:+.0%} is format (candidate mass {off['candidate_mass']:.0%} -> {on['candidate_mass']:.0%}, "
        f"parseable answers {parse_off:.0%} -> {parse_on:.0%})."
    )
    return {
        "generated_gain": generated,
        "task_gain": task,
        "format_gain": generated - task,
        "candidate_mass": [off["candidate_mass"], on["candidate_mass"]],
        "parse_rate": [parse_off, parse_on],
        "text": text,
    }


def evaluate_answers(
    model, encoded: list[Encoded], pad_id: int, batch_size: int = 8, chunk_size: int = 1024, prefix=None
) -> dict:
    """`evaluate` with each example's answer and candidate log-probabilities (the whole set, on every process)."""
    return evaluate(model, encoded, pad_id, batch_size, chunk_size, details=True, prefix=prefix)


def token_losses(model, enc: Encoded, chunk_size: int = 1024) -> list[float | None]:
    """Cross-entropy of every token given the ones before it (None for the first), for the token view."""
    device = device_of(model)
    ids = torch.tensor([enc.input_ids], device=device)
    weight, bias = output_layer(model)
    cap = logit_softcap(model)
    with eval_mode(model):
        hidden = final_hidden(model, ids, torch.ones_like(ids))
        ce, _ = token_ce(hidden[:, :-1], weight, ids[:, 1:], chunk_size, bias, cap)
    return [None] + ce[0].tolist()


def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, chunk_size: int = 1024) -> float:
    """exp(mean token cross-entropy) over plain texts: the forgetting probe."""
    device = device_of(model)
    weight, bias = output_layer(model)
    cap = logit_softcap(model)
    total, count = 0.0, 0
    with eval_mode(model):
        for batch in _batches(texts, batch_size):
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=True)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            hidden = final_hidden(model, ids, mask)
            ce, _ = token_ce(hidden[:, :-1], weight, ids[:, 1:], chunk_size, bias, cap)
            valid = mask[:, 1:].bool()
            total += float(ce[valid].sum())
            count += int(valid.sum())
    return math.exp(total / count) if count else float("nan")


def generate(model, tokenizer, encoded: list[Encoded], max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
    """Greedy completions of each example's prompt (the conversation before its last reply)."""
    device = device_of(model)
    prompts = [prompt_text(tokenizer, e.example) for e in encoded]
    return generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, device)


def generate_texts(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 8, device=None
) -> list[str]:
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


def _generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of token-id prompts, left-padded in batches of similar length."""
    device = device_of(model)
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: dict[int, str] = {}
    with eval_mode(model):
        for batch in _batches(order, batch_size):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            for i, text in zip(batch, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                texts[i] = text
    return [texts[i] for i in range(len(prompts))]


def choice_logprobs(model, tokenizer, prompt: str, choices) -> dict[str, float]:
    """Log-probability of each candidate answer's first token right after `prompt` (a rendered prompt).

    For a prompt of the visitor's own, which has no encoded answer position: the candidate's
    token is the one the tokenizer gives right after the prompt text.
    """
    if not choices:
        return {}
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    choice_ids = []
    for choice in choices:
        full = tokenizer(prompt + choice, add_special_tokens=False)["input_ids"]
        if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
            choice_ids.append(full[len(prompt_ids)])
        else:
            choice_ids.append(tokenizer(choice, add_special_tokens=False)["input_ids"][0])
    device = device_of(model)
    ids = torch.tensor([prompt_ids], device=device)
    weight, bias = output_layer(model)
    cap = logit_softcap(model)
    with eval_mode(model):
        hidden = final_hidden(model, ids, torch.ones_like(ids))
        logits = head_logits(hidden[0, -1], weight, bias, cap)
        logprobs = torch.log_softmax(logits, -1)
    return {c: float(logprobs[i]) for c, i in zip(choices, choice_ids)}


def compare(
    model,
    tokenizer,
    encoded: list[Encoded],
    cfg: LabConfig,
    *,
    probe_texts: list[str],
    prefix=None,
    known: dict | None = None,
) -> dict:
    """The same validation metrics, generated answers, generations and forgetting probe with the adapter on and off.

    Every setting comes from the run's `cfg` (eval.generations, eval.max_new_tokens,
    eval.answer_tokens, eval.batch_size, train.chunk_size), so a recomputed comparison is the one the
    run made. `known` may hold metrics already measured on the same set ({"on": ..., "off": ...},
    with per-example details): a training run has them from its evaluations and need not redo them.
    `paired` says whether the on/off difference in accuracy is beyond noise on these examples
    (exact McNemar) and `format_vs_task` how much of the generated-accuracy gain is format.
    """
    e, chunk_size = cfg.eval, cfg.train.chunk_size
    batch_size, n_generations = e.batch_size, e.generations
    result = {}
    known = known or {}
    for label, enabled in (("on", True), ("off", False)):
        with adapter(model, enabled):
            metrics = known.get(label) or evaluate(
                model, encoded, tokenizer.pad_token_id, batch_size, chunk_size, details=True, prefix=prefix, follow=True
            )
            followed = metrics.pop("followed", None)
            if metrics.get("answer_accuracy") is not None and metrics.get("answer_accuracy_generated") is None:
                metrics = with_generated(
                    metrics, generate_answers(model, tokenizer, encoded, e.answer_tokens, batch_size, followed)
                )
            generations = generate(model, tokenizer, encoded[:n_generations], e.max_new_tokens, batch_size)
            result[label] = {
                "metrics": {**metrics, **text_diversity(generations)} if generations else metrics,
                "generations": generations,
                "probe_perplexity": perplexity(model, tokenizer, probe_texts, batch_size, chunk_size)
                if probe_texts
                else None,
            }
    result["examples"] = [
        {"prompt": prompt_text(tokenizer, e.example), "reference": e.example.messages[-1]["content"]}
        for e in encoded[:n_generations]
    ]
    off, on = result["off"]["metrics"], result["on"]["metrics"]
    if off.get("examples") and on.get("examples"):
        result["paired"] = {"answer_accuracy": paired_answers(off["examples"], on["examples"])}
        if all("parsed" in ex for ex in off["examples"] + on["examples"]):
            result["paired"]["answer_accuracy_generated"] = paired_answers(off["examples"], on["examples"], "parsed")
    split = format_vs_task(on, off)
    if split:
        result["format_vs_task"] = split
    return result
