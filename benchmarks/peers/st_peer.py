"""sentence-transformers (installed: the embedding reward's model runs on it): its
``util.pairwise_cos_sim`` (cos(a[i], b[i])), thresholded as the MediX semantic reward does."""
from __future__ import annotations

from ..ops.base import Unavailable


def pairwise_cos_sim():
    try:
        from sentence_transformers.util import pairwise_cos_sim as fn
    except Exception as exc:
        raise Unavailable(f"sentence_transformers is not importable ({type(exc).__name__}: {exc})") from exc
    return fn
