"""Conversations to token ids with explicit prompt and completion masks.

The masks are found on the templated text itself: the chat template renders the whole
conversation once, the character span of every assistant reply is located in that text, and
each token is labelled by the characters its offsets cover. Tokenising the prompt and the
completion separately and concatenating the ids (the usual shortcut) goes wrong wherever the
template adds special tokens or the tokenizer merges text across the boundary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from dataclasses import dataclass, field

from plw_lab.core.config import ConfigError, ModelConfig, unicode_problem
from plw_lab.core.data import DataError, Example

# Used only for tokenizers that ship without a chat template (base models).
PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\n' }}"
    "{% else %}{{ m['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
)


class TemplateError(ValueError):
    """The chat template does not render conversations in a way the masks can be found in."""


class TooLongError(ValueError):
    """The template head and the reply do not fit into max_length; `required` is the length that would."""

    def __init__(self, message: str, required: int = 0):
        super().__init__(message)
        self.required = required


@dataclass
class Encoded:
    input_ids: list[int]
    #: 1 for tokens outside every completion: system, user turns and template tokens.
    prompt_mask: list[int]
    #: 1 for tokens of assistant replies (and their end-of-turn token when `train_eos`).
    completion_mask: list[int]
    #: Character span of each token in `text`, for views.
    offsets: list[tuple[int, int]]
    text: str
    example: Example
    #: Index in `input_ids` of the token where the candidate answers first differ.
    answer_position: int | None = None
    #: Token id of each candidate answer at `answer_position`.
    choice_ids: list[int] = field(default_factory=list)
    #: Tokens cut from the left of the prompt to fit max_length.
    truncated: int = 0
    #: Prompt and completion tokens before any cut (the example as written).
    raw_prompt: int = 0
    raw_completion: int = 0
    #: The shortest max_length that keeps this example's template head and replies: every token
    #: outside the text a cut may take (the user content).
    min_length: int = 0
    #: `((start, end), earliest)`: token range a cut takes from the left, and where it may start instead.
    cuttable: tuple = ()
    #: Each token's weight from the data (the record's `weight` times its message's); empty: all 1.
    data_weight: list[float] = field(default_factory=list)
    #: 1 for the tokens of the answer itself (the candidate as written in the last reply, e.g. "A"), found
    #: from the same character offsets as the other masks; the rest of the completion (the end-of-turn
    #: token) is format. All zeros for free-form data, which has no candidate answers.
    answer_mask: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_prompt(self) -> int:
        return sum(self.prompt_mask)

    @property
    def n_completion(self) -> int:
        return sum(self.completion_mask)

    def data_weights(self) -> list[float]:
        """`data_weight`, spelled out (1 for every token when the data gives no weights)."""
        return self.data_weight or [1.0] * len(self.input_ids)

    @property
    def n_answer(self) -> int:
        return sum(self.answer_mask)


def ensure_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_TEMPLATE


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    from jinja2 import TemplateError as JinjaError

    ensure_template(tokenizer)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except JinjaError as exc:  # the template's own raise_exception(...), or an undefined name it uses
        raise TemplateError(f"the chat template failed: {exc}") from None


#: A conversation every usable template renders with both texts intact (`check_chat_template`).
PROBE_CONVERSATION = (
    {"role": "user", "content": "Which colour is the sky on a clear day?"},
    {"role": "assistant", "content": "Blue."},
)


def check_chat_template(tokenizer, cfg: ModelConfig) -> None:
    """Refuse a chat template the masks cannot be found in, before any data is encoded: one that
    raises, or one that leaves out or rewrites the user's turn or the reply."""
    setting = (
        "model.chat_template" if cfg.chat_template else f"the chat template of {cfg.name} (model.chat_template '')"
    )
    fix = "set model.chat_template to 'plain' or to a template that writes out every message's content"
    messages = [dict(m) for m in PROBE_CONVERSATION]
    try:
        text, _, _ = completion_spans(tokenizer, messages, train_eos=True)
    except TemplateError as exc:
        raise ConfigError(f"{setting}: {exc}; {fix}") from None
    except Exception as exc:  # a template of the user's own may fail in any way Jinja code can
        raise ConfigError(f"{setting} cannot render a conversation ({type(exc).__name__}: {exc}); {fix}") from None
    if messages[0]["content"] not in text:
        raise ConfigError(f"{setting} leaves out the user's turn, so the model would never see a prompt; {fix}")


def prompt_text(tokenizer, example: Example) -> str:
    """The conversation up to the last assistant reply, ready for generation."""
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return render(tokenizer, example.messages[:last], add_generation_prompt=True)


def completion_spans(
    tokenizer, messages: list[dict], train_eos: bool
) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """The rendered text, the character span of each assistant reply, and each reply's content span."""
    text = render(tokenizer, messages)
    spans, contents = [], []
    eos = tokenizer.eos_token or ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("trained") is False:
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise TemplateError(
                "the chat template renders a conversation differently from its prefixes (it may rewrite or drop "
                "earlier turns), so reply spans cannot be located; use a model with a prefix-stable template"
            )
        start = through.find(m["content"], len(before))
        if start < 0:
            raise TemplateError(f"the template changed the text of assistant turn {i}; cannot locate it")
        end = start + len(m["content"])
        contents.append((start, end))
        suffix = through[end:]
        if train_eos:
            end += suffix.index(eos) + len(eos) if eos and eos in suffix else len(suffix.rstrip())
        spans.append((start, end))
    return text, spans, contents


def _check_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("the lab needs a fast tokenizer (with offset mapping) to find masks")


def _tokenize_many(tokenizer, texts: list[str], offsets: bool = True) -> tuple[list[list[int]], list]:
    """Token ids (and offsets) of many texts from one call: the fast tokenizer's batch path gives each
    text exactly the tokens a call of its own would, without the per-call overhead."""
    _check_fast(tokenizer)
    if not texts:
        return [], []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)
    spans = [[tuple(o) for o in row] for row in enc["offset_mapping"]] if offsets else []
    return [list(ids) for ids in enc["input_ids"]], spans


def encode(tokenizer, example: Example, max_length: int, train_eos: bool = True) -> Encoded:
    return fit(encode_full(tokenizer, [example], train_eos)[0], max_length)


def encode_full(tokenizer, examples: list[Example], train_eos: bool = True) -> list[Encoded]:
    """Every example encoded at full length (no cut), the tokenizer called once for all the texts and
    once for all the candidate variants; encodings met before with the same tokenizer and template
    come from `_cache`. A template error is raised for the first example, in order, that has one."""
    _check_fast(tokenizer)
    store = _cache.store(tokenizer, train_eos)
    keys = [_example_key(example) for example in examples]
    todo = [i for i, key in enumerate(keys) if key not in store]
    rendered: dict[int, tuple | ValueError] = {}
    for i in todo:
        try:
            rendered[i] = completion_spans(tokenizer, _valid_text(examples[i]).messages, train_eos)
        except (TemplateError, DataError) as exc:  # raised when its turn comes, so an earlier example's error wins
            rendered[i] = exc
    good = [i for i in todo if not isinstance(rendered[i], ValueError)]
    ids, offsets = _tokenize_many(tokenizer, [rendered[i][0] for i in good])
    tokens = {i: (ids[n], offsets[n]) for n, i in enumerate(good)}
    # Each candidate in the answer's place: where these part ways is the answer position. The text
    # with the right answer in place is the text itself, whose tokens are known already.
    variant_texts = {
        (i, c): _with_answer(rendered[i], choice) for i in good for c, choice in enumerate(examples[i].choices)
    }
    fresh = [key for key, text in variant_texts.items() if text != rendered[key[0]][0]]
    fresh_ids, _ = _tokenize_many(tokenizer, [variant_texts[key] for key in fresh], offsets=False)
    known = dict(zip(fresh, fresh_ids))
    variants = {i: [known.get((i, c), tokens[i][0]) for c in range(len(examples[i].choices))] for i in good}
    out = []
    for i, (example, key) in enumerate(zip(examples, keys)):
        if i in rendered:
            if isinstance(rendered[i], TemplateError):
                raise TemplateError(f"example {example.source_index}: {rendered[i]}")
            if isinstance(rendered[i], DataError):
                raise rendered[i]
            text, spans, contents = rendered[i]
            store[key] = _build(example, text, spans, contents, *tokens[i], variants.get(i, []))
        out.append(_copy_for(store[key], example))
    _cache.trim()
    return out


def _valid_text(example: Example) -> Example:
    """`example`, or a `DataError` naming the message that holds text no tokenizer can take."""
    for j, message in enumerate(example.messages):
        problem = unicode_problem(message["content"])
        if problem:
            raise DataError(f"example {example.source_index}: message {j} ({message['role']}) holds {problem}")
    return example


class _EncodingCache:
    """Full-length encodings by (tokenizer, template, train_eos) and example content, for one process.

    The app's Data tab and the run it starts, or a run and its later evaluation, encode the same
    examples with the same tokenizer; the second time costs a dictionary look-up. The tokenizer is
    keyed by its serialised vocabulary, merges and normaliser (hashed once per tokenizer object)
    and its chat template and end-of-turn token as they are now, so a template changed in place
    is a different key. At most `limit` encodings are kept, the oldest tokenizer's dropped first.
    """

    def __init__(self, limit: int = 50_000):
        self.limit = limit
        self.stores: dict[tuple, dict] = {}
        self.fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _fingerprint(self, tokenizer) -> str:
        found = self.fingerprints.get(tokenizer)
        if found is None:
            serialised = tokenizer.backend_tokenizer.to_str()
            found = self.fingerprints[tokenizer] = hashlib.sha256(serialised.encode()).hexdigest()
        return found

    def store(self, tokenizer, train_eos: bool) -> dict:
        ensure_template(tokenizer)
        key = (self._fingerprint(tokenizer), tokenizer.chat_template, tokenizer.eos_token, train_eos)
        self.stores[key] = self.stores.pop(key, None) or {}  # the most recent last
        return self.stores[key]

    def trim(self) -> None:
        while len(self.stores) > 1 and sum(map(len, self.stores.values())) > self.limit:
            del self.stores[next(iter(self.stores))]
        newest = next(reversed(self.stores.values()), {})
        while len(newest) > self.limit:
            del newest[next(iter(newest))]

    def clear(self) -> None:
        self.stores.clear()


_cache = _EncodingCache()


def _example_key(example: Example) -> str:
    """What an encoding depends on: the messages, the candidates and the record's weight."""
    return json.dumps([example.messages, list(example.choices), example.weight], sort_keys=True, default=repr)


def _copy_for(enc: Encoded, example: Example) -> Encoded:
    """A copy of a cached encoding for `example`, its lists its own (`fit` cuts them in place)."""
    return dataclasses.replace(
        enc,
        input_ids=list(enc.input_ids),
        prompt_mask=list(enc.prompt_mask),
        completion_mask=list(enc.completion_mask),
        offsets=list(enc.offsets),
        example=example,
        choice_ids=list(enc.choice_ids),
        data_weight=list(enc.data_weight),
        answer_mask=list(enc.answer_mask),
    )


def _with_answer(rendered: tuple, choice: str) -> str:
    text, _spans, contents = rendered
    start, end = contents[-1]
    return text[:start] + choice + text[end:]


def _build(example: Example, text: str, spans, contents, ids, offsets, variants: list[list[int]]) -> Encoded:
    completion = [int(any(s < ce and e > cs for cs, ce in spans)) for s, e in offsets]
    enc = Encoded(ids, [1 - c for c in completion], completion, offsets, text, example)
    enc.raw_completion = sum(completion)
    enc.raw_prompt = len(ids) - enc.raw_completion
    enc.data_weight = _data_weights(example, text, spans, offsets)
    enc.answer_mask = [0] * len(ids)
    if example.choices:
        start, end = contents[-1]
        enc.answer_position, enc.choice_ids = _answer_position(example.choices, variants, ids, offsets, start)
        enc.answer_mask = [int(c and s < end and e > start) for c, (s, e) in zip(completion, offsets)]
    enc.cuttable = _cuttable(enc, spans[-1][0])
    enc.min_length = len(ids) - (enc.cuttable[0][1] - enc.cuttable[1])
    return enc


def _data_weights(example: Example, text: str, spans: list[tuple[int, int]], offsets) -> list[float]:
    """Per-token data weights: the record's weight times the weight of the message a token belongs to.

    An assistant message covers its reply span (with its end-of-turn token when that is trained);
    other messages cover their content. Template tokens carry the record's weight alone.
    """
    if example.weight == 1.0 and not any("weight" in m for m in example.messages):
        return []
    char_weight = [example.weight] * len(text)
    reply_weights = []  # a token that straddles a reply's edge counts as the reply's, as in the masks
    cursor, replies = 0, iter(spans)
    for m in example.messages:
        weight = example.weight * m.get("weight", 1.0)
        if m["role"] == "assistant":
            start, end = next(replies)
            reply_weights.append((start, end, weight))
        else:
            start = text.find(m["content"], cursor)
            if start < 0:
                continue  # a message the template does not render
            end = start + len(m["content"])
        cursor = max(cursor, end)
        char_weight[start:end] = [weight] * (end - start)
    weights = []
    for s, e in offsets:
        reply = next((w for cs, ce, w in reply_weights if s < ce and e > cs), None)
        weights.append(reply if reply is not None else char_weight[s] if e > s else example.weight)
    return weights


def _answer_position(choices, variants: list[list[int]], ids, offsets, answer_start: int) -> tuple[int, list[int]]:
    """Where the token ids of the text with each candidate in place (`variants`) first differ, and each
    candidate's id there.

    The tokens ending before the answer's first character are the same in every variant as a rule,
    so they are compared as whole slices first and the token-by-token search starts after them; a
    tokenizer that merges across that point falls back to the search from the start.
    """
    head = next((n for n, (_s, e) in enumerate(offsets) if e > answer_start), len(ids))
    position = head if all(v[:head] == ids[:head] for v in variants) else 0
    while all(position < len(v) for v in variants) and len({v[position] for v in variants}) == 1:
        position += 1
    at = [v[position] if position < len(v) else None for v in variants]
    if None in at or len(set(at)) != len(at):
        raise TemplateError(
            f"the candidate answers {choices} do not differ at a single token; "
            "choose an answer format whose candidates start with distinct tokens"
        )
    return position, at


def _cuttable(enc: Encoded, last_reply_start: int) -> tuple[tuple[int, int], int]:
    """Token range `(start, end)` of the last user turn's content, which a cut takes from the left,
    and an earlier start (the first non-system message's content) for when that turn is too short.

    Everything outside stays: the template head (system turn, role markers) before, and the
    markers and the reply after, so the model still sees a well-formed conversation.
    """
    messages = enc.example.messages
    first_reply_token = next(i for i, (s, e) in enumerate(enc.offsets) if e > last_reply_start)
    spans, cursor = [], 0
    for m in messages:
        found = enc.text.find(m["content"], cursor) if m["content"] else -1
        spans.append(None if found < 0 else (found, found + len(m["content"])))
        cursor = found + len(m["content"]) if found >= 0 else cursor
    last = len(messages) - 1 - [m["role"] for m in messages][::-1].index("assistant")
    last_user = max((i for i in range(last) if messages[i]["role"] != "assistant"), default=None)
    if last_user is None or spans[last_user] is None:
        return (first_reply_token, first_reply_token), first_reply_token
    first = next(i for i in range(last_user + 1) if messages[i]["role"] != "system" or i == last_user)
    token_at = lambda char: next(i for i, (s, e) in enumerate(enc.offsets) if e > char)
    start, content_end = token_at(spans[last_user][0]), spans[last_user][1]
    end = next((i for i, (s, e) in enumerate(enc.offsets) if s >= content_end), first_reply_token)
    earliest = token_at(spans[first][0]) if spans[first] is not None else start
    return (start, min(end, first_reply_token)), earliest


def _truncate_prompt(enc: Encoded, excess: int) -> None:
    """Cut `excess` tokens from the left of the last user turn's content (from the oldest message's
    content when that turn is too short), keeping the template head, the role markers and the replies."""
    (start, end), earliest = enc.cuttable
    if end - start < excess:
        start = earliest
    if end - start < excess:
        raise TooLongError(
            f"example {enc.example.source_index}: its template head and reply need {enc.min_length} tokens, "
            f"more than max_length {len(enc) - excess}; raise data.max_length to at least {enc.min_length}",
            enc.min_length,
        )
    cut = slice(start, start + excess)
    for name in ("input_ids", "prompt_mask", "completion_mask", "offsets", "answer_mask", "data_weight"):
        values = getattr(enc, name)
        del values[cut]
    if enc.answer_position is not None:
        enc.answer_position -= excess
    enc.truncated += excess
    enc.cuttable = ((start, end - excess), min(earliest, start))


def fit(enc: Encoded, max_length: int) -> Encoded:
    """Cut `enc` in place to `max_length` tokens (0: no limit); `TooLongError` when its head and reply cannot fit."""
    if max_length and len(enc) > max_length:
        _truncate_prompt(enc, len(enc) - max_length)
    return enc


def encode_all(
    tokenizer, examples: list[Example], max_length: int, train_eos: bool = True
) -> tuple[list[Encoded], list[str]]:
    """Encode every example; examples that cannot fit are left out and described in the second list."""
    encoded, skipped = [], []
    for example, enc in zip(examples, encode_full(tokenizer, examples, train_eos)):
        try:
            enc = fit(enc, max_length)
        except TooLongError as exc:
            skipped.append(str(exc))
            continue
        if enc.n_completion == 0:
            skipped.append(f"example {example.source_index}: no completion tokens")
            continue
        if enc.data_weight and not any(w > 0 for w in enc.data_weight):
            skipped.append(f"example {example.source_index}: its data weight is 0")
            continue
        encoded.append(enc)
    return encoded, skipped


def model_context(tokenizer) -> int | None:
    """The longest sequence the tokenizer's model takes, when it states one (many say 1e30: unknown)."""
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 10**7 else None


def auto_max_length(raw_lengths: list[int], cap: int, context: int | None = None) -> int:
    """`data.max_length` 0: the longest example rounded up to a multiple of 8, at most `cap` and the model's context."""
    longest = max(raw_lengths, default=8)
    return min(-(-longest // 8) * 8, cap, context or cap)


@dataclass
class Fitted:
    """Examples encoded to one max_length, with what the length cut (`plw_lab.core.stats.truncation_report`)."""

    encoded: list[Encoded]
    skipped: list[str]
    max_length: int
    truncation: dict
    #: Index in the input list of each encoded example.
    positions: list[int]


#: Examples per batched tokenizer call in `encode_fitted`: what a progress bar counts.
ENCODE_BATCH = 1024


def encode_fitted(
    tokenizer, examples: list[Example], max_length: int, cap: int, train_eos: bool = True, progress=None
) -> Fitted:
    """Encode at full length, choose max_length (0: `auto_max_length`), count what it cuts, then cut.

    A max_length that leaves no example its template head and reply is a `DataError` naming the
    smallest value that works, instead of a run on prompts erased down to nothing. `progress` may
    wrap the list of batches (of `ENCODE_BATCH` examples) as they are encoded (a progress bar).
    """
    from plw_lab.core.stats import truncation_report

    raw, kept, skipped = [], [], []
    batches = [examples[start : start + ENCODE_BATCH] for start in range(0, len(examples), ENCODE_BATCH)]
    try:
        encoded = [
            enc
            for batch in (progress(batches) if progress else batches)
            for enc in encode_full(tokenizer, batch, train_eos)
        ]
    except TemplateError as exc:  # the template cannot render this conversation (a role it refuses...)
        raise DataError(
            f"{exc}; model.chat_template must render every conversation of the data ('plain' does)"
        ) from None
    for position, (example, enc) in enumerate(zip(examples, encoded)):
        if enc.n_completion == 0:
            skipped.append(f"example {example.source_index}: no completion tokens")
            continue
        raw.append(enc)
        kept.append(position)
    length = max_length or auto_max_length([len(e) for e in raw], cap, model_context(tokenizer))
    if raw and all(e.min_length > length for e in raw):
        raise DataError(
            f"data.max_length {length} is too small for the template head plus the answer: the smallest value "
            f"that keeps every example is {max(e.min_length for e in raw)} (the shortest needs "
            f"{min(e.min_length for e in raw)}); raise data.max_length or set it to 0 (auto)"
        )
    report = truncation_report(raw, length)
    encoded, positions = [], []
    for enc, position in zip(raw, kept):
        try:
            encoded.append(fit(enc, length))
            positions.append(position)
        except TooLongError as exc:
            skipped.append(str(exc))
    return Fitted(encoded, skipped, length, report, positions)
