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

if "PYTEST_XDIST_WORKER" in os.environ:
    # Each xdist worker gets its share of the cores, and so does every `lab`, notebook kernel or server it
    # starts: the tiny models gain nothing from more threads, and workers each spinning a thread pool the
    # size of the machine on shared cores mostly wait for each other.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

#: The longest test files, longest first (seconds on two workers). `make test` runs
#: `pytest -n 2 --dist loadfile --no-loadscope-reorder`: a worker takes a whole file, in the order
#: collected here, so these start first and the many short files fill in behind them; in xdist's own
#: order (most tests first) the Ray file, with three tests, came last and ran alone at the end.
LONGEST_FIRST = (
    "test_sweep_ray.py",  # ~150 s: a Ray instance, each of its trials in a fresh worker process
    "e2e/test_app_browser.py",  # ~120 s: the app, a browser and two trainings
    "test_notebooks.py",  # ~110 s: three notebooks in Jupyter kernels
    "e2e/test_app_newcomer.py",  # ~90 s
    "test_bench.py",  # ~60 s: benchmarks/bench.py --smoke
    "e2e/test_jupyterlab.py",
    "test_signals.py",
    "test_distributed.py",
    "test_masks_batched.py",
    "test_wheel.py",
)


def pytest_collection_modifyitems(config, items):
    """The files of LONGEST_FIRST first, in that order; every file's tests stay together and in order."""
    here = os.path.dirname(__file__)

    def rank(item) -> int:
        name = os.path.relpath(str(item.path), here).replace(os.sep, "/")
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


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


#: App settings for two-step runs on the tiny model: what the app's handler tests start.
TINY_APP_SETTINGS = {
    "model.name": "tiny-random",
    "train.batch_size": 4,
    "train.max_steps": 2,
    "train.eval_interval": 100,
    "lora.layers": "all",
    "eval.generations": 0,
    "eval.probe_texts": 0,
    "data.val_size": 4,
}


def lora_llama(tokenizer):
    """A 4-layer random Llama with LoRA on q/v of its top two layers (the frozen-layer cache's case)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from plw_lab.core.config import LoraConfig
    from plw_lab.core.models import attach_lora

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return attach_lora(LlamaForCausalLM(config), LoraConfig(layers="top:2", target_modules=["q_proj", "v_proj"]))


def tiny_decoder(tokenizer, config_class: str = "LlamaConfig", layers: int = 4, impl: str = "sdpa", **extra):
    """A 64-wide random decoder of any architecture transformers has, on the real tokenizer's vocabulary."""
    import transformers

    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=torch.float32)


@pytest.fixture
def data_file(tmp_path):
    """Twenty prompt/completion sums as a JSONL file, the shape most users' own data has."""
    import json

    path = tmp_path / "sums.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"prompt": e.messages[0]["content"], "completion": e.messages[1]["content"]})
            for e in sum_examples(20)
        )
    )
    return path


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


def fake_sweep(folder, plws=(0.0, 1.0), seeds=(0, 1), n: int = 20):
    """A finished PLW x seed sweep written by hand (config.yaml, events.jsonl and summary.json per run, as a
    `lab sweep` leaves them without adapters): two evaluations per run, the second better by PLW and seed.
    Returns the run folders in grid order."""
    import json
    from pathlib import Path

    from plw_lab.core.config import LabConfig
    from plw_lab.core.events import Eval
    from plw_lab.core.runs import write_json
    from plw_lab.core.stopping import stopping_report

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.csv").write_text("plw,seed,status,run\n")
    (folder / "sweep_config.yaml").write_text("")
    runs = []
    for plw in plws:
        for seed in seeds:
            name = f"plw{plw:g}-seed{seed}"
            run = folder / name
            run.mkdir()
            cfg = {"train.prompt_loss_weight": plw, "train.seed": seed, "train.run_name": name}
            LabConfig().override({**cfg, "train.output_dir": str(folder)}).save(run / "config.yaml")
            right = [n // 2, n // 2 + 2 + 4 * int(plw) + seed]
            evals = [
                Eval(
                    step=step,
                    epoch=0.0,
                    metrics={
                        "full_loss": 3.0 + (0.5 - plw) * step / 10,  # at PLW 0 it rises: it keeps step 0
                        "answer_loss": 1.0 - step / 40,
                        "prompt_loss": 2.0 + (1 - plw) * step / 20,
                        "completion_loss": 1.0 - step / 40,
                        "answer_accuracy": r / n,
                        "answer_accuracy_ci": [0.0, 1.0],
                        "n_examples": n,
                    },
                    correct="1" * r + "0" * (n - r),
                )
                for step, r in zip((0, 20), right)
            ]
            (run / "events.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in evals))
            write_json(run / "summary.json", {"status": "finished", "steps": 20, "stopping": stopping_report(evals)})
            runs.append(run)
    return runs


def fake_lesson(folder):
    """A shipped-lesson folder written by hand: two small sweeps of `fake_sweep` and their measured.json."""
    import json
    from pathlib import Path

    folder = Path(folder)
    fake_sweep(folder / "sweep-plw-lesson", plws=(0.0, 1.0), seeds=(0, 1))
    measured = {
        "date": "2025-01-02",
        "commit": "abc1234",
        "machine": "2-core test CPU",
        "commands": ["lab sweep --config plw-lesson --plws 0,1 --seeds 0,1", "lab verdict runs/sweep-plw-lesson"],
        "runs": 4,
        "seconds_per_run": [1, 1, 1, 1],
        "wall_seconds": 4,
        "note": "hand-written for the tests",
    }
    (folder / "measured.json").write_text(json.dumps(measured))
    return folder
