"""Packing variable-length sequences into fixed-length rows, with no attention across them.

Several sequences share a row; `doc_ids` tells the model which tokens belong together (its attention
is then block-diagonal, and causal for a decoder: `llmkit.model.document_mask`) and `positions` restart at 0
for each sequence, so a packed row computes exactly what the sequences would alone (tested), without
the compute that padding wastes. Rows are filled first-fit-decreasing (Krell et al. 2021 pack BERT's
data this way; the waste is a few percent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Item:
    """One sequence to pack: its input tokens and the target of each (-100: no loss there)."""

    inputs: list[int]
    targets: list[int]


def lm_item(ids: list[int], mask: list[bool]) -> Item:
    """Next-token prediction on a token sequence: predict token t+1 from tokens <= t where mask[t+1]."""
    return Item(ids[:-1], [t if m else -100 for t, m in zip(ids[1:], mask[1:])])


def pack_rows(lengths: list[int], row_len: int) -> list[list[int]]:
    """Group item indices into rows of at most row_len tokens (first-fit decreasing; deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        if n > row_len:
            raise ValueError(f"a sequence of {n} tokens does not fit a row of {row_len}")
        for r, room in enumerate(free):
            if room >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_len - n)
    return rows


def collate(items: list[Item], rows: list[list[int]], row_len: int | None = None, pad_id: int = 0) -> dict:
    """Tensors of packed rows: input_ids, targets, positions, doc_ids (per row; -1 = padding),
    seq_index (the item each token belongs to; -1 = padding) and last_index (flat index of each
    item's last token in the (rows x row_len) batch). row_len None: the longest row's length."""
    row_len = row_len or max(sum(len(items[i].inputs) for i in row) for row in rows)
    shape = (len(rows), row_len)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, -100, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    doc_ids = torch.full(shape, -1, dtype=torch.long)
    seq_index = torch.full(shape, -1, dtype=torch.long)
    last_index = torch.zeros(len(items), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for d, i in enumerate(row):
            n = len(items[i].inputs)
            input_ids[r, at:at + n] = torch.tensor(items[i].inputs)
            targets[r, at:at + n] = torch.tensor(items[i].targets)
            positions[r, at:at + n] = torch.arange(n)
            doc_ids[r, at:at + n] = d
            seq_index[r, at:at + n] = i
            last_index[i] = r * row_len + at + n - 1
            at += n
        if at < row_len:
            positions[r, at:] = torch.arange(row_len - at)  # padding: its own "document", never scored
    return {"input_ids": input_ids, "targets": targets, "positions": positions, "doc_ids": doc_ids,
            "seq_index": seq_index, "last_index": last_index}


def pack(items: list[Item], row_len: int, pad_id: int = 0, fixed_len: bool = False) -> dict:
    """Pack items into as few rows as fit (row length row_len if fixed_len, else the longest row's)."""
    rows = pack_rows([len(it.inputs) for it in items], row_len)
    return collate(items, rows, row_len if fixed_len else None, pad_id)


def per_sequence_sum(values: torch.Tensor, seq_index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum per-token values (rows x len) into one value per sequence (n,), padding ignored."""
    valid = seq_index >= 0
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.index_add(0, seq_index[valid], values[valid])


def model_inputs(batch: dict) -> dict:
    """The keyword arguments of the model's forward for a packed batch."""
    return {"positions": batch["positions"], "doc_ids": batch["doc_ids"]}


def completion_item(prompt: list[int], completion: list[int]) -> Item:
    """Next-token targets on the completion only (sequence log-probabilities for DPO and RL)."""
    return lm_item(prompt + completion, [False] * len(prompt) + [True] * len(completion))


def sequence_item(ids: list[int]) -> Item:
    """The whole sequence as input, no targets (a reward model scores its last token)."""
    return Item(list(ids), [-100] * len(ids))


def sequence_logprobs(model, batch: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each sequence's targets, number of targets), each (n,), from one
    forward over a packed batch; the output head runs on the target positions only."""
    per_token = model(batch["input_ids"], batch["targets"], reduction="none", **model_inputs(batch))
    counts = per_sequence_sum((batch["targets"] != -100).float(), batch["seq_index"], n)
    return -per_sequence_sum(per_token, batch["seq_index"], n), counts
