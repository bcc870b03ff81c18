"""Conversations to token ids with explicit prompt and completion masks.

The masks are found on the templated text itself: the chat template renders the whole
conversation once, the character span of every assistant reply is located in that text, and
each token is labelled by the characters its offsets cover. Tokenising the prompt and the
completion separately and concatenating the ids (the usual shortcut) goes wrong wherever the
template adds special tokens or the tokenizer merges text across the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .data import Example

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
    """The completion alone does not fit into max_length."""


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
    ensure_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_text(tokenizer, example: Example) -> str:
    """The conversation up to the last assistant reply, ready for generation."""
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return render(tokenizer, example.messages[:last], add_generation_prompt=True)


def completion_spans(tokenizer, messages: list[dict], train_eos: bool) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
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


def _tokenize(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("the lab needs a fast tokenizer (with offset mapping) to find masks")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def encode(tokenizer, example: Example, max_length: int, train_eos: bool = True) -> Encoded:
    text, spans, contents = completion_spans(tokenizer, example.messages, train_eos)
    ids, offsets = _tokenize(tokenizer, text)
    completion = [int(any(s < ce and e > cs for cs, ce in spans)) for s, e in offsets]
    enc = Encoded(ids, [1 - c for c in completion], completion, offsets, text, example)
    enc.data_weight = _data_weights(example, text, spans, offsets)
    enc.answer_mask = [0] * len(ids)
    if example.choices:
        _locate_answer(tokenizer, enc, contents[-1])
        start, end = contents[-1]
        enc.answer_mask = [int(c and s < end and e > start) for c, (s, e) in zip(completion, offsets)]
    if len(ids) > max_length:
        _truncate_prompt(enc, len(ids) - max_length, spans[-1][0])
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


def _locate_answer(tokenizer, enc: Encoded, content: tuple[int, int]) -> None:
    """Find where the candidate answers part ways, by tokenising the text with each candidate in place."""
    start, end = content
    variants = [_tokenize(tokenizer, enc.text[:start] + c + enc.text[end:])[0] for c in enc.example.choices]
    position = 0
    while all(position < len(v) for v in variants) and len({v[position] for v in variants}) == 1:
        position += 1
    ids = [v[position] if position < len(v) else None for v in variants]
    if None in ids or len(set(ids)) != len(ids):
        raise TemplateError(
            f"the candidate answers {enc.example.choices} do not differ at a single token; "
            "choose an answer format whose candidates start with distinct tokens"
        )
    enc.answer_position, enc.choice_ids = position, ids


def _truncate_prompt(enc: Encoded, excess: int, last_reply_start: int) -> None:
    """Cut `excess` tokens from the left of the text before the last reply, keeping the template's head.

    The head (system prompt, first role marker) stays so the model still sees a well-formed
    conversation; the cut falls on the oldest prompt content.
    """
    first_reply_token = next(i for i, (s, e) in enumerate(enc.offsets) if e > last_reply_start)
    last_user = max((i for i, m in enumerate(enc.example.messages[:-1]) if m["role"] != "assistant"), default=None)
    head = 0
    if last_user is not None:
        content = enc.example.messages[last_user]["content"]
        content_start = enc.text.rfind(content, 0, last_reply_start)
        if content_start >= 0:
            head = next(i for i, (s, e) in enumerate(enc.offsets) if e > content_start)
    if first_reply_token - head < excess:
        head = 0  # the user turn alone is too short to absorb the cut: cut from the very start
    if first_reply_token - head < excess:
        raise TooLongError(
            f"example {enc.example.source_index}: the last reply needs {len(enc) - first_reply_token} tokens, "
            f"more than max_length allows; raise data.max_length"
        )
    cut = slice(head, head + excess)
    for name in ("input_ids", "prompt_mask", "completion_mask", "offsets", "answer_mask", "data_weight"):
        values = getattr(enc, name)
        del values[cut]
    if enc.answer_position is not None:
        enc.answer_position -= excess
    enc.truncated = excess


def encode_all(tokenizer, examples: list[Example], max_length: int, train_eos: bool = True) -> tuple[list[Encoded], list[str]]:
    """Encode every example; examples that cannot fit are left out and described in the second list."""
    encoded, skipped = [], []
    for example in examples:
        try:
            enc = encode(tokenizer, example, max_length, train_eos)
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
