"""QLoRA (`model.quantization`): refused with a clear message where it cannot run (no CUDA, no
bitsandbytes) before any run folder is written; on a CUDA machine with bitsandbytes, the tiny model
loads in NF4 and trains its float32 LoRA weights."""

import importlib.util

import pytest
import torch

from plw_lab.cli import main
from plw_lab.core.config import ConfigError, LabConfig, ModelConfig
from plw_lab.core.models import ModelError, check_quantization

HAS_QLORA = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def test_only_none_8bit_and_4bit_are_accepted():
    assert LabConfig().model.quantization == "none"
    with pytest.raises(ConfigError, match="model.quantization must be one of none, 8bit, 4bit; got 'nf4'"):
        LabConfig().override({"model.quantization": "nf4"})


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantisation_on_the_cpu_is_refused_before_any_folder(tmp_path, capsys, bits):
    runs = tmp_path / "runs"
    code = main(
        [
            "train",
            "--model",
            "tiny-random",
            "--output-dir",
            str(runs),
            "--set",
            "model.device=cpu",
            "--set",
            f"model.quantization={bits}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        f"model.quantization: {bits} (QLoRA through bitsandbytes) needs a CUDA GPU, and this run would use cpu" in err
    )
    assert not runs.exists()


def test_quantisation_without_bitsandbytes_says_how_to_install_it(monkeypatch):
    from plw_lab.core import models

    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(
        ModelError, match=r"needs bitsandbytes, which is not installed; run `pip install 'plw-lab\[gpu\]'`"
    ):
        check_quantization(ModelConfig(quantization="4bit"), torch.device("cuda"))
    check_quantization(ModelConfig(), torch.device("cpu"))  # no quantisation: nothing to check


@pytest.mark.skipif(not HAS_QLORA, reason="QLoRA needs a CUDA GPU and bitsandbytes")
def test_the_tiny_model_trains_in_4bit_on_cuda(tmp_path):
    from plw_lab.core.training import train

    cfg = LabConfig().override(
        {
            "model.name": "tiny-random",
            "model.quantization": "4bit",
            "data.limit": 24,
            "train.max_steps": 2,
            "train.output_dir": str(tmp_path),
            "eval.generations": 0,
            "eval.probe_texts": 0,
            "lora.layers": "all",
        }
    )
    result = train(cfg)
    assert result.status == "finished", result.summary
    model = result.model
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert result.summary["final_eval"]["completion_loss"] == result.summary["final_eval"]["completion_loss"]  # not NaN
