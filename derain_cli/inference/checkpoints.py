"""Training checkpoints (atomic, resumable) and the export of a shippable checkpoint."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from derain_cli.errors import WeightsError


def require_finite(state: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """``state`` as it is; WeightsError naming ``source`` when a tensor holds NaN or Inf (the
    network would turn every picture into garbage, or black)."""
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise WeightsError(f"{source}: not usable weights: {bad[0]}{more} hold NaN or Inf values (a diverged training run?)")
    return state


def build_network(spec, resolved) -> torch.nn.Module:
    """``spec``'s network (a MethodSpec) with the weights of ``resolved`` (a ResolvedWeights),
    refused when they do not fit it or are not finite."""
    from derain_cli.weights.loading import load_into, read_state_dict

    return load_into(spec.build(), require_finite(read_state_dict(resolved.path), resolved.path), resolved.label,
                     spec.name)


def save_atomic(state: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``; the file
    gets the permissions the umask gives a new file (mkstemp's are 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    from derain_cli.media.images import current_umask

    os.chmod(tmp, 0o666 & ~current_umask())
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
