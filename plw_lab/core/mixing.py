"""The training set as the data settings compose it: mixing sources, replay, answer balancing.

`training_split` is the one path from `data.*` settings to train and validation examples. With no
remedy set it is the plain deterministic split of `data.source`. Otherwise:

* every source of `data.mix` is read and split on its own (validation keeps each source's share,
  tagged in `Example.meta["source"]` so evaluation reports each source apart);
* the training examples are drawn source by source with shares from the ratios, or from
  temperature mixing p_k proportional to N_k^(1/T); a source drawn more often than it has examples
  is repeated, each pass in a fresh order;
* `data.balance` down- or upsamples the answers of multiple-choice and classification data;
* `train.class_weighted_loss` gives each example the weight n / (k n_answer);
* `data.replay` adds general-text continuation examples as that share of the training set, from
  the passages the forgetting probe does not read.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from plw_lab.core.config import DataConfig, LabConfig
from plw_lab.core.data import DataError, Example, load_examples, make_split, split

#: The source tag of general-text replay examples.
REPLAY_SOURCE = "replay:general-text"


def source_shares(sizes: dict[str, int], ratios: dict[str, float], temperature: float = 0.0) -> dict[str, float]:
    """Each source's share of the drawn training examples: the ratios normalised, or with a
    temperature T > 0, p_k = N_k^(1/T) / sum_j N_j^(1/T) from the sources' sizes N_k."""
    if temperature > 0:
        raw = {k: float(n) ** (1.0 / temperature) if n else 0.0 for k, n in sizes.items()}
    else:
        raw = {k: float(ratios.get(k, 1.0)) for k in sizes}
    total = sum(raw.values())
    if total <= 0:
        raise DataError("data.mix: no source has both examples and a positive ratio")
    return {k: v / total for k, v in raw.items()}


def draw_mixture(pools: dict[str, list], shares: dict[str, float], n: int, seed: int = 0) -> list:
    """`n` items; each item's source is drawn with probability `shares[source]`, and each source
    hands out its items in a shuffled order, reshuffled whenever it runs out."""
    rng = random.Random(seed)
    names = [k for k in pools if pools[k] and shares.get(k, 0) > 0]
    if not names:
        return []
    queues: dict[str, list] = {k: [] for k in names}
    out = []
    for source in rng.choices(names, weights=[shares[k] for k in names], k=n):
        if not queues[source]:
            queues[source] = rng.sample(pools[source], len(pools[source]))
        out.append(queues[source].pop())
    return out


def answer_key(example: Example) -> str | None:
    """The right answer of an example as the label-balance chart counts it (None: free-form)."""
    if example.answer_index is None:
        return None
    return str((example.meta or {}).get("label") or example.choices[example.answer_index])


def balance(examples: list[Example], mode: str, seed: int = 0) -> list[Example]:
    """Examples with every answer as common as the rarest ('downsample') or the commonest ('upsample').

    Free-form examples pass through unchanged; repeats are drawn without replacement until a
    class is used up, so upsampled classes repeat as evenly as their sizes allow.
    """
    if mode == "none":
        return list(examples)
    if mode not in ("downsample", "upsample"):
        raise ValueError(f"data.balance must be none, downsample or upsample; got {mode!r}")
    groups: dict[str, list[Example]] = {}
    free = []
    for e in examples:
        key = answer_key(e)
        (free if key is None else groups.setdefault(key, [])).append(e)
    if not groups:
        raise DataError("data.balance needs multiple-choice or classification data (examples with a right answer)")
    target = (min if mode == "downsample" else max)(len(g) for g in groups.values())
    rng = random.Random(seed)
    out = list(free)
    for key in sorted(groups):
        group = groups[key]
        if target <= len(group):
            out.extend(rng.sample(group, target))
        else:
            out.extend(group + draw_mixture({key: group}, {key: 1.0}, target - len(group), rng.randrange(1 << 30)))
    return out


def balanced_counts(counts: dict[str, int], mode: str) -> dict[str, int]:
    """The answer counts `balance` leaves: every class at the rarest's or the commonest's count."""
    if mode == "none" or not counts:
        return dict(counts)
    target = (min if mode == "downsample" else max)(counts.values())
    return {k: target for k in counts}


def class_weighted(examples: list[Example]) -> list[Example]:
    """Copies of `examples` whose weight is multiplied by n / (k n_answer): every answer carries the
    same total weight. Free-form examples are left as they are."""
    keys = [answer_key(e) for e in examples]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        raise DataError("train.class_weighted_loss needs multiple-choice or classification data")
    n, k = sum(counts.values()), len(counts)
    return [
        e if key is None else dataclasses.replace(e, weight=e.weight * n / (k * counts[key]))
        for e, key in zip(examples, keys)
    ]


def replay_examples(texts: list[str], n: int, split_at: float = 0.5) -> list[Example]:
    """`n` continuation examples from plain passages (first part prompt, the rest completion),
    going round the passages as often as needed."""
    usable = [t for t in texts if len(t.split()) >= 4]
    if n and not usable:
        raise DataError(
            "data.replay: no general-text passages are left once the probe's are set aside; lower eval.probe_texts"
        )
    out = []
    for i in range(n):
        words = usable[i % len(usable)].split()
        cut = max(1, int(len(words) * split_at))
        out.append(
            Example(
                [
                    {"role": "user", "content": "Continue the text:\n" + " ".join(words[:cut])},
                    {"role": "assistant", "content": " ".join(words[cut:])},
                ],
                source_index=i % len(usable),
                meta={"source": REPLAY_SOURCE},
            )
        )
    return out


def _tagged(examples: list[Example], source: str) -> list[Example]:
    return [dataclasses.replace(e, meta={**(e.meta or {}), "source": source}) for e in examples]


def _read_source(cfg: DataConfig, source: str) -> list[Example]:
    # Other sources bring their own format and columns; the templates and limits are shared.
    try:
        return load_examples(dataclasses.replace(cfg, source=source, format="auto", column_map={}))
    except DataError as exc:
        raise DataError(f"data.mix: {exc}") from None


def training_split(
    cfg: LabConfig, examples: list[Example] | None = None, split_record: dict | None = None
) -> tuple[list[Example], list[Example]]:
    """Train and validation examples as the data settings and `train.class_weighted_loss` describe.

    `split_record`, when given, receives the record of data.source's own split (`plw_lab.core.data.make_split`:
    grouped, or data.val_source) that the run writes to split.json.
    """
    d, seed = cfg.data, cfg.train.seed
    main = load_examples(d) if examples is None else examples
    sources = [d.source] + [s for s in d.mix if s != d.source]
    mixing = len(sources) > 1
    train_parts, val = {}, []
    for source in sources:
        items = main if source == d.source else _read_source(d, source)
        if mixing:
            items = _tagged(items, source)
        if source == d.source:  # the split has its own seed, so train.seed never moves the validation set
            train_k, val_k, record = make_split(items, d)
            if split_record is not None:
                split_record.update(record)
        else:
            train_k, val_k = split(items, d.val_size, d.split_seed, d.val_max)
        if any(answer_key(e) is not None for e in train_k):
            train_k = balance(train_k, d.balance, seed)
        train_parts[source], val = train_k, val + val_k
    if d.balance != "none" and not any(answer_key(e) is not None for part in train_parts.values() for e in part):
        raise DataError("data.balance needs multiple-choice or classification data (examples with a right answer)")
    if mixing:
        shares = source_shares({k: len(v) for k, v in train_parts.items()}, {d.source: 1.0, **d.mix}, d.mix_temperature)
        train = draw_mixture(train_parts, shares, sum(len(v) for v in train_parts.values()), seed)
    else:
        train = train_parts[d.source]
    if cfg.train.class_weighted_loss:
        train = class_weighted(train)
    if d.replay > 0:
        from plw_lab.core.builtin import general_text

        n_replay = round(len(train) * d.replay / (1.0 - d.replay))
        train = train + replay_examples(general_text()[cfg.eval.probe_texts :], n_replay)
    return train, val
