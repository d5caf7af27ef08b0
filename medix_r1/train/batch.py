"""The step's training batch: right-padded prompt + response rows and the per-token positions."""
from __future__ import annotations

import torch

from medix_r1.train.shared_prompt import prompt_groups


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
             "prompt_len": torch.tensor([len(p) for p in prompts], dtype=torch.long),
             "prompt_group": prompt_groups(prompts)}  # for the shared-prompt forward
    if images and any(x is not None for x in images):
        batch["images"] = list(images)
    return batch


def placeholder_batch(pad_id: int) -> dict:
    """One row, one pad token: what a torchrun rank left without rows (DAPO) runs its zero-weight
    forward/backward passes on (the other ranks' FSDP collectives need them)."""
    return make_batch([[pad_id]], [[pad_id]], pad_id)


def slice_batch(batch: dict, rows) -> dict:
    """The rows ``rows`` (a slice or index tensor) of a batch, with exactly those rows' images."""
    if "images" in batch:
        from medix_r1.vision.prompts import select_rows
        return select_rows(batch, rows)
    return {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
