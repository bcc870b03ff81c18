"""Models that soft-cap their logits after the output layer (Gemma 2) are scored as they score
themselves: the lab's validation numbers read hidden states, so the cap must be applied there."""

import torch
from conftest import tiny_decoder

from plw_lab.core.compat import logit_softcap
from plw_lab.core.data import Example
from plw_lab.core.evaluation import evaluate
from plw_lab.core.masks import encode_all


def test_gemma2_validation_loss_equals_the_models_own_soft_capped_loss(tokenizer):
    model = tiny_decoder(tokenizer, "Gemma2Config", layers=2, impl="eager", final_logit_softcapping=0.5).eval()
    with torch.no_grad():  # large logits, so the cap (0.5) really bends them
        model.lm_head.weight.mul_(50)
    assert logit_softcap(model) == 0.5
    example = Example(
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sea."}]
    )
    enc = encode_all(tokenizer, [example], 128)[0][0]
    metrics = evaluate(model, [enc], tokenizer.pad_token_id)
    ids = torch.tensor([enc.input_ids])
    labels = torch.where(torch.tensor([enc.completion_mask]).bool(), ids, -100)
    with torch.no_grad():
        own = model(input_ids=ids, labels=labels).loss.item()
    assert abs(metrics["completion_loss"] - own) < 1e-4
    with torch.no_grad():
        uncapped = (
            torch.nn.functional.cross_entropy(
                (model.model(input_ids=ids).last_hidden_state @ model.lm_head.weight.T)[0, :-1],
                ids[0, 1:],
                reduction="none",
            )[torch.tensor(enc.completion_mask[1:]).bool()]
            .mean()
            .item()
        )
    assert abs(uncapped - own) > 0.1  # without the cap the lab would report another number
