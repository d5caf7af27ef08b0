"""The step's training batch: right-padded prompt + response rows and the per-token positions."""
from __future__ import annotations

import torch


def prompt_groups(prompts: list[list[int]]) -> list[int]:
    """For each row, the index of its prompt among the distinct prompts (first-seen order): which rows
    the shared-prompt forward (shared_prompt.py) runs on one prompt pass."""
    seen: dict[tuple, int] = {}
    return [seen.setdefault(tuple(p), len(seen)) for p in prompts]



def make_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int, images=None) -> dict:
    """Right-padded prompt+response sequences plus, per response token, the position whose hidden
    state predicts it (``pred_pos``), the response ids and their mask ([B, R]). ``images`` (one
    entry per row, image inputs or None) is kept as a list; :func:`slice_batch` turns a selection
    of rows into ``pixel_values`` / ``image_grid_thw``."""
    B = len(prompts)
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    R = max(1, max(len(r) for r in responses))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    ids = torch.zeros((B, R), dtype=torch.long)
    mask = torch.zeros((B, R), dtype=torch.float32)
    pred_pos = torch.zeros((B, R), dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        seq = p + r
        input_ids[b, :len(seq)] = torch.tensor(seq)
        attn[b, :len(seq)] = 1
        ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, :len(r)] = 1.0
        pred_pos[b] = torch.clamp(torch.arange(R) + len(p) - 1, max=L - 1)
    batch = {"input_ids": input_ids, "attention_mask": attn, "ids": ids, "mask": mask, "pred_pos": pred_pos,
             # per-row facts the host decides with (shared-prompt forward, loss weights) without reading the device
             "host": {"prompt_len": [len(p) for p in prompts], "prompt_group": prompt_groups(prompts),
                      "response_len": [len(r) for r in responses]}}
    if images and any(x is not None for x in images):
        batch["images"] = list(images)
    return batch


def placeholder_batch(pad_id: int) -> dict:
    """One row, one pad token: what a torchrun rank left without rows (DAPO) runs its zero-weight
    forward/backward passes on (the other ranks' FSDP collectives need them)."""
    return make_batch([[pad_id]], [[pad_id]], pad_id)


def index_tensor(values: list[int], device) -> torch.Tensor:
    """``values`` as an int64 index on ``device``, copied without waiting for the device's queue."""
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)


def slice_batch(batch: dict, rows) -> dict:
    """The rows ``rows`` (a slice, a list of ints or a host index tensor) of a batch, with exactly those
    rows' images and host facts; a list indexes the device tensors without a wait on the device."""
    picked = list(range(len(batch["ids"])))[rows] if isinstance(rows, slice) else \
        list(rows) if isinstance(rows, list) else rows.tolist()
    if "images" in batch:
        from medix_r1.vision.prompts import select_rows
        out = select_rows(batch, rows)
    else:
        index = rows if isinstance(rows, slice) else index_tensor(picked, batch["ids"].device)
        out = {k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if "host" in batch:
        out["host"] = {k: [v[i] for i in picked] for k, v in batch["host"].items()}
    return out
