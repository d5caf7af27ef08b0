"""One forward pass per distinct prompt: the group's responses run on top of its KV cache.

GRPO samples ``rollout.n`` responses per prompt, and the trainer's forward over prompt + response
repeats the prompt's computation n times. With long prompts (MediX-R1 allows 4,352 prompt tokens
against 4,096 response tokens, our CPU recipe ~240 against ~90) most of the training FLOPs are
those repeats. Here a micro-batch's distinct prompts run once (right-padded, with their KV cache
kept in the autograd graph), each row's response runs on its prompt's cache, and the gradient of
every response flows back into the shared prompt pass. The result is
the padded forward's hidden states up to float summation order (tests/test_shared_prompt.py
checks values and gradients against it).

Not used (the caller falls back to the padded forward) for vision-language models and inputs other
than token ids (their multimodal rotary positions come from the whole sequence), with gradient
checkpointing (a recomputed layer would append to the shared cache twice), or when
no two rows of the micro-batch share a prompt.
"""
from __future__ import annotations

import torch

from medix_r1.train.batch import index_tensor


def worth_sharing(batch: dict) -> bool:
    """True when some rows of ``batch`` (a micro-batch) share a prompt (decided on the host)."""
    group = batch.get("host", {}).get("prompt_group")
    return group is not None and len(set(group)) < len(group)


def response_pass_needed(batch: dict) -> bool:
    """Whether some response has a second token (the first one is predicted by the prompt pass)."""
    return max(batch["host"]["response_len"], default=0) > 1


def shared_prompt_hidden(base_model, batch: dict, response_pass: bool | None = None) -> torch.Tensor:
    """Last hidden states [B, R, H] at the positions predicting each response token (as the padded
    forward's ``hidden.gather(1, pred_pos)``), computing each distinct prompt once.

    ``response_pass`` forces the second forward on or off (under FSDP every rank must run the same
    forwards: the trainer agrees on it across ranks); None = when some response needs it. The
    shapes come from the batch's host facts, so nothing here waits for the device."""
    from transformers.cache_utils import DynamicCache

    host, dev = batch["host"], batch["ids"].device
    ids, mask = batch["ids"], batch["mask"]
    B, R = ids.shape
    uniq = sorted(set(host["prompt_group"]))                  # the distinct prompts of this micro-batch
    first = [host["prompt_group"].index(u) for u in uniq]     # the first row holding each
    u_len = index_tensor([host["prompt_len"][f] for f in first], dev)
    row_to_u = index_tensor([uniq.index(g) for g in host["prompt_group"]], dev)
    plen = index_tensor(host["prompt_len"], dev)
    P = max(host["prompt_len"][f] for f in first)
    p_ids = batch["input_ids"][index_tensor(first, dev), :P]  # the padded batch holds each prompt at 0..len-1
    p_mask = (torch.arange(P, device=dev) < u_len[:, None]).long()
    p_ids = p_ids * p_mask                                    # response tokens after a shorter prompt -> 0 (masked)
    out = base_model(input_ids=p_ids, attention_mask=p_mask, use_cache=True)
    # the last prompt position predicts response token 0: [U, H]
    last = out.last_hidden_state[torch.arange(len(first), device=dev), u_len - 1]
    hidden0 = last[row_to_u].unsqueeze(1)                                # [B, 1, H]
    if response_pass is None:
        response_pass = response_pass_needed(batch)
    r_len = max(2, max(host["response_len"])) if response_pass else 1
    if r_len > R:  # forced pass over one-token responses: run one masked position, keep R columns
        mask = torch.nn.functional.pad(mask, (0, r_len - R))
        ids = torch.nn.functional.pad(ids, (0, r_len - R))
    if not response_pass:
        rest = hidden0.new_zeros(B, R - 1, hidden0.shape[-1])
        return torch.cat([hidden0, rest], 1)
    # Response tokens 0..r_len-2 as inputs predict tokens 1..r_len-1; each row sees its own prompt's cache.
    cache = DynamicCache(ddp_cache_data=[(k[row_to_u], v[row_to_u]) for k, v, *_ in out.past_key_values])
    r_in = ids[:, :r_len - 1]
    att = torch.cat([p_mask[row_to_u], mask[:, :r_len - 1].long()], 1)
    pos = plen[:, None] + torch.arange(r_len - 1, device=dev)
    hr = base_model(input_ids=r_in, attention_mask=att, position_ids=pos, past_key_values=cache,
                    use_cache=False).last_hidden_state                      # [B, r_len - 1, H]
    pad = hr.new_zeros(B, max(0, R - r_len), hr.shape[-1])
    return torch.cat([hidden0, hr, pad], 1)[:, :R]
