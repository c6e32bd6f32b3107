"""Safe checkpoint loading: safetensors, or torch.load(weights_only=True); strict keys."""

from __future__ import annotations

from pathlib import Path

import torch

from derain_cli.errors import WeightsError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never unpickling arbitrary objects.

    Accepts a ``.safetensors`` file, a plain ``.pth`` state dict, or a derain training
    checkpoint (its ``model`` entry); a ``module.`` prefix left by DataParallel is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif _is_torchscript(path):  # torch.load would hand it to torch.jit.load: never load it
            raise WeightsError(f"{path}: a TorchScript export (for LibTorch / torch.jit.load), not a checkpoint; "
                               "--weights takes the checkpoint it was exported from")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as err:  # any decoding failure of an untrusted file is the same user error
        # never the error's text: torch's advises weights_only=False, which would run the file's code
        raise WeightsError(f"{path}: not a checkpoint derain can read (a state dict in .safetensors or .pth); "
                           f"{type(err).__name__}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a checkpoint derain can read (a state dict in .safetensors or .pth); "
                           "it holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (``derain export -f torchscript``): a zip holding code/ and constants."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def fitting_methods(state: dict[str, torch.Tensor]) -> list[str]:
    """The registered methods whose network takes ``state`` as it is (same keys and shapes).
    Networks are built on the meta device: no memory, no initialisation."""
    from derain_cli.methods import list_methods

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fits = []
    for spec in list_methods():
        try:
            with torch.device("meta"):
                expected = spec.build().state_dict()
        except Exception:  # noqa: BLE001 - a network that cannot be built on meta is just not named
            continue
        if expected.keys() == shapes.keys() and all(tuple(v.shape) == shapes[k] for k, v in expected.items()):
            fits.append(spec.name)
    return fits


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
              method: str | None = None) -> torch.nn.Module:
    """Strictly load ``state`` into ``model`` (``method``'s network, named in errors); a mismatch
    is a WeightsError naming the keys, and the methods the weights do fit, if any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
                details.append(f"{label}: {shown}")
        fits = [m for m in fitting_methods(state) if m != method]
        network = method or "this network"
        if fits:
            raise WeightsError(f"{source}: these weights fit {' / '.join(fits)}, not {network}")
        raise WeightsError(f"{source} does not fit {network} ({'; '.join(details)})")
    model.load_state_dict(state, strict=True)
    return model
