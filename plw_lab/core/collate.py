"""Encoded examples to padded tensors, masks and all."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from plw_lab.core.masks import Encoded


class EncodedDataset(Dataset):
    def __init__(self, encoded: list[Encoded]) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> Encoded:
        return self.encoded[index]


def collate(batch: list[Encoded], pad_id: int = 0, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask`, `prompt_mask` and `completion_mask` (both 0 on padding),
    and `data_weight`, each token's weight from the data (1 where the data gives none)."""
    width = max(len(e) for e in batch)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out = {
        name: torch.zeros(len(batch), width, dtype=torch.long)
        for name in ("attention_mask", "prompt_mask", "completion_mask")
    }
    out["input_ids"] = torch.full((len(batch), width), pad_id, dtype=torch.long)
    out["data_weight"] = torch.ones(len(batch), width, dtype=torch.float32)
    for row, e in enumerate(batch):
        n = len(e)
        out["input_ids"][row, :n] = torch.tensor(e.input_ids)
        out["attention_mask"][row, :n] = 1
        out["prompt_mask"][row, :n] = torch.tensor(e.prompt_mask)
        out["completion_mask"][row, :n] = torch.tensor(e.completion_mask)
        if e.data_weight:
            out["data_weight"][row, :n] = torch.tensor(e.data_weight[:n])
    return out


class Collator:
    """A picklable collate function bound to a pad id (DataLoader workers need to pickle it)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        return collate(batch, self.pad_id)
