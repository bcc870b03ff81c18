"""Data for the benchmarks: the app's default set, RACE from ../shared, generated short instructions
and generated reading-comprehension questions (the offline fallback when neither is there)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from plw_lab.core.config import DataConfig, LabConfig
from plw_lab.core.data import Example, load_examples, race_record, to_examples

ROOT = Path(__file__).resolve().parents[1]
RACE = ROOT.parent / "shared" / "data" / "race_cube_1000.jsonl"


def race_examples(n: int, seed: int = 0) -> list[Example] | None:
    """n RACE rows as multiple-choice examples; None when ../shared is absent."""
    if not RACE.exists():
        return None
    rows = [race_record(json.loads(line)) for line in RACE.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return to_examples(rows[:n], DataConfig(format="multiple_choice"))


_WORDS = (
    "apple river stone cloud garden window silver morning candle forest bridge letter orange music paper winter".split()
)


def short_instructions(n: int, seed: int = 0) -> list[Example]:
    """Short prompt/completion pairs (arithmetic, word games, facts): 30-60 tokens with the template."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            prompt, completion = f"What is {a} plus {b}?", str(a + b)
        elif kind == 1:
            word = rng.choice(_WORDS)
            prompt, completion = f"Spell the word '{word}' backwards.", word[::-1]
        elif kind == 2:
            words = rng.sample(_WORDS, 4)
            prompt, completion = f"Sort these words alphabetically: {', '.join(words)}.", ", ".join(sorted(words))
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            prompt, completion = f"Multiply {a} by {b} and answer with the number only.", str(a * b)
        out.append(
            Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], source_index=i)
        )
    return out


_NAMES = "Ana Ben Chen Dara Eli Farah Gus Hana Ivo Jun Kai Lena Milo Nia Omar Pia".split()
_PLACES = "the library|the market|the harbour|the school|the museum|the park|the station|the bakery".split("|")
_THINGS = "a red kite|a blue bicycle|an old map|a small dog|a violin|a green umbrella|a chess set|a camera".split("|")


def reading_mc(n: int, seed: int = 0) -> list[Example]:
    """Generated short reading-comprehension questions with four options and varied passage lengths."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        people = rng.sample(_NAMES, 4)
        places = rng.sample(_PLACES, 4)
        things = rng.sample(_THINGS, 4)
        facts = [f"{p} went to {pl} with {t}." for p, pl, t in zip(people, places, things)]
        filler = [
            f"The weather near {rng.choice(_PLACES)} was {rng.choice(['calm', 'windy', 'grey', 'bright'])} that day."
            for _ in range(rng.randint(0, 10))
        ]
        passage = facts + filler
        rng.shuffle(passage)
        k = rng.randrange(4)
        records.append(
            {
                "context": " ".join(passage),
                "question": f"Where did {people[k]} go?",
                "options": [pl.capitalize() for pl in places],
                "answer": "ABCD"[k],
            }
        )
    return to_examples(records, DataConfig(format="multiple_choice"))


def default_examples(cfg: LabConfig | None = None) -> tuple[list[Example], str]:
    """The app's default data (LabConfig().data) when it loads, else generated reading questions."""
    cfg = cfg or LabConfig()
    try:
        return load_examples(cfg.data), cfg.data.source
    except Exception as exc:  # no lab.builtin yet, or the set is not filled in: fall back
        return reading_mc(120, seed=1), f"generated reading-mc ({cfg.data.source} unavailable: {type(exc).__name__})"


def to_trl_records(examples: list[Example]) -> list[dict]:
    """Conversational prompt/completion records for TRL's SFTTrainer."""
    return [{"prompt": [dict(m) for m in e.messages[:-1]], "completion": [dict(e.messages[-1])]} for e in examples]
