"""The semantic reward: cosine similarity of answer and reference sentence embeddings.

MediX-R1 uses MedEmbed-large-v0.1 and scores 1 when cos >= 0.8. Here the model is any
sentence-transformers folder or name (default: the bundled all-MiniLM-L6-v2, which works
offline); answers and references are encoded in one batched call and the cosine/threshold is
computed by ``medix_kernels.cosine_rewards``. ``continuous`` mode returns cos clamped to [0, 1].
A row whose embedding is not finite (NaN/inf from the model) scores 0 and is flagged.
"""
from __future__ import annotations

import threading

import torch


class Embedder:
    """A sentence-transformers model loaded once; :meth:`rewards` is blocking and thread-safe."""

    def __init__(self, model=None, *, batch_size: int = 64, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        if model is None:
            from medix_r1.models import minilm_dir
            model = minilm_dir()
        self.name = str(model)
        self.batch_size = batch_size
        self.model = SentenceTransformer(self.name, device=device)
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> torch.Tensor:
        with self._lock:
            emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                    show_progress_bar=False)
        return emb.detach().float().cpu()

    def rewards(self, answers: list[str], references: list[str], *, mode: str = "threshold",
                threshold: float = 0.8) -> tuple[list[float], list[bool]]:
        """(reward per pair, non-finite flag per pair)."""
        if len(answers) != len(references):
            raise ValueError(f"answers and references must have the same length, got {len(answers)} "
                             f"and {len(references)}")
        if not answers:
            return [], []
        emb = self.encode(list(answers) + list(references))
        return rewards_from_embeddings(emb[: len(answers)], emb[len(answers):], mode=mode, threshold=threshold)


def rewards_from_embeddings(pred: torch.Tensor, ref: torch.Tensor, *, mode: str = "threshold",
                            threshold: float = 0.8) -> tuple[list[float], list[bool]]:
    """Embedding rewards of row pairs via ``medix_kernels.cosine_rewards``; non-finite rows give 0."""
    from medix_kernels import cosine_rewards

    if mode not in ("threshold", "continuous"):
        raise ValueError(f"mode must be 'threshold' or 'continuous', got {mode!r}")
    bad = ~(torch.isfinite(pred).all(dim=1) & torch.isfinite(ref).all(dim=1))
    pred = torch.where(bad[:, None], torch.zeros_like(pred), pred)  # keep NaN out of the kernel
    ref = torch.where(bad[:, None], torch.zeros_like(ref), ref)
    if mode == "threshold":
        values = cosine_rewards(pred, ref, threshold=float(threshold))
    else:
        values = cosine_rewards(pred, ref).clamp(0.0, 1.0)
    values = torch.where(bad, torch.zeros_like(values), values)
    return [float(v) for v in values], [bool(b) for b in bad]
