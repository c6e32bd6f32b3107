"""Shared fixtures: tiny pictures and checkpoints made on the spot, and ../shared access."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from derain_cli.methods import get_method

# developer tooling (the training plan and its ledger) lives beside the benchmarks, outside the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
REFERENCE = SHARED / "reference"

needs_shared = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"needs the shared datasets and reference checkpoints at {SHARED}"
)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """Every test gets its own weights cache and data directory, and no ambient Hub settings."""
    monkeypatch.setenv("DERAIN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("DERAIN_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def rainy_picture(height: int = 70, width: int = 90, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with bright diagonal streaks, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.3 * np.sin(x / 7.0)], axis=2) * 0.8
    streaks = ((x + 2 * y + rng.integers(0, 9)) % 11 < 1).astype(np.float32)[..., None] * 0.3
    return (np.clip(base + streaks, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def write_picture(tmp_path):
    def write(name: str = "rain.png", array: np.ndarray | None = None, **save_options) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rainy_picture() if array is None else array).save(path, **save_options)
        return path

    return write


def make_checkpoint(method: str, path: Path, seed: int = 0) -> Path:
    """A safetensors file of the method's network with seeded random weights."""
    torch.manual_seed(seed)
    model = get_method(method).build()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def lpnet_checkpoint(tmp_path) -> Path:
    return make_checkpoint("lpnet", tmp_path / "lpnet_tiny.safetensors")
