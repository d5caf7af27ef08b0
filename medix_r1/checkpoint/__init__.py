"""Checkpoints: atomic, verified, resumable step folders (:mod:`.store`) and their export as a
Hugging Face model folder (:mod:`.export`, ``python -m medix_r1.checkpoint export``)."""
from medix_r1.checkpoint.export import dcp_model_state, export_hf, main
from medix_r1.checkpoint.store import (
    MARKER,
    PREFIX,
    CheckpointError,
    CheckpointMismatch,
    file_sha256,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    manifest,
    prune,
    save_checkpoint,
    save_sharded,
    step_dir,
    verify_checkpoint,
)

__all__ = ["MARKER", "PREFIX", "CheckpointError", "CheckpointMismatch", "dcp_model_state", "export_hf",
           "file_sha256", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_latest", "main", "manifest",
           "prune", "save_checkpoint", "save_sharded", "step_dir", "verify_checkpoint"]
