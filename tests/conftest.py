"""Shared fixtures: the real SmolLM2 tokenizer (converted offline from the embedded GGUF) and a
tiny random-weight Llama built from a config, so no test touches the network."""

import os
import random

# The hub client reads these once, at import: set them before anything imports it, so tests that
# prove the offline errors fail fast instead of waiting for network time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from plw_lab.core.data import Example


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from plw_lab.core.models import embedded_tokenizer_dir

    return AutoTokenizer.from_pretrained(embedded_tokenizer_dir())


@pytest.fixture(scope="session")
def tiny_dir():
    from plw_lab.core.models import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture
def tiny_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_dir)


def sum_examples(n: int, seed: int = 0) -> list[Example]:
    """Short arithmetic prompt/completion pairs: distinct lengths, quick to train on."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        out.append(
            Example(
                [{"role": "user", "content": f"Add {a} and {b}."}, {"role": "assistant", "content": str(a + b)}],
                source_index=i,
            )
        )
    return out


def mc_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    colours = ["red", "blue", "green", "black"]
    out = []
    for _ in range(n):
        answer = rng.randrange(3)
        options = rng.sample(colours, 3)
        out.append(
            {
                "context": f"The car is {options[answer]}.",
                "question": "What colour is the car?",
                "options": options,
                "answer": "ABC"[answer],
            }
        )
    return out
