"""Training checkpoints (atomic, resumable) and the export of a shippable checkpoint."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch


def save_atomic(state: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_training_state(path: Path) -> dict:
    """A training checkpoint written by save_atomic; plain tensors and numbers only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def export_safetensors(state_dict: dict[str, torch.Tensor], path: Path) -> str:
    """Write the weights as safetensors (atomically) and return their sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
