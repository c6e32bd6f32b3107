"""Training patches cut on the training device from pairs decoded once.

``PairBank`` holds every training pair as uint8 (N, H, W, 3), on the GPU when it fits, so a
step costs no decoding, no host work per patch and no host-to-device copy of float images.
``DevicePatchSampler`` draws a step's crops, flips and transposes as a handful of tensors
from a generator seeded with (seed, step) on the bank's device, and cuts all patches with one
gather: the batch is a pure function of the step (resuming needs no sampler state) and every
torchrun process takes its slice of the same global batch, as with ``data.PatchSampler``.
The random numbers come from the device's generator, so a CUDA run and a CPU run with the
same seed see different (equally distributed) patches.
"""

from __future__ import annotations

import numpy as np
import torch

from derain_cli.data.pairs import DatasetError, Pair, load_pair

# share of the GPU's free memory the bank may take; the rest is for activations
BANK_SHARE_OF_FREE_MEMORY = 0.3


def _landscape(rgb: np.ndarray) -> np.ndarray:
    """Portrait pictures transposed. Patches get all eight flips/turns, so a transposed
    picture yields the same distribution of patches, and one orientation packs densely."""
    return rgb.transpose(1, 0, 2) if rgb.shape[0] > rgb.shape[1] else rgb


class PairBank:
    """Rainy/clean pairs as uint8 (N, H, W, 3) tensors padded to the largest size; ``sizes``
    (N, 2) holds each pair's real (height, width)."""

    def __init__(self, rainy: torch.Tensor, clean: torch.Tensor, sizes: torch.Tensor) -> None:
        self.rainy, self.clean, self.sizes = rainy, clean, sizes

    @classmethod
    def from_arrays(cls, pairs: list[tuple[np.ndarray, np.ndarray]]) -> "PairBank":
        """From (rainy, clean) (H, W, 3) uint8 arrays of equal shape per pair."""
        if not pairs:
            raise DatasetError("no training pairs")
        turned = [(_landscape(a), _landscape(b)) for a, b in pairs]
        height = max(a.shape[0] for a, _ in turned)
        width = max(a.shape[1] for a, _ in turned)
        rainy = np.zeros((len(turned), height, width, 3), dtype=np.uint8)
        clean = np.zeros_like(rainy)
        for i, (a, b) in enumerate(turned):
            rainy[i, : a.shape[0], : a.shape[1]] = a
            clean[i, : b.shape[0], : b.shape[1]] = b
        sizes = torch.tensor([a.shape[:2] for a, _ in turned], dtype=torch.int64)
        return cls(torch.from_numpy(rainy), torch.from_numpy(clean), sizes)

    @classmethod
    def load(cls, pairs: list[Pair], patch_size: int) -> "PairBank":
        """Decode every pair once; DatasetError for unreadable, mismatched or too small ones."""
        loaded = [load_pair(p) for p in pairs]
        small = [p.name for p, (a, _) in zip(pairs, loaded) if min(a.shape[:2]) < patch_size]
        if small:
            raise DatasetError(f"images smaller than the {patch_size}px patch: {', '.join(small[:5])}")
        return cls.from_arrays(loaded)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def nbytes(self) -> int:
        return 2 * self.rainy.numel()

    @property
    def device(self) -> torch.device:
        return self.rainy.device

    def fits_on(self, device: torch.device) -> bool:
        """Whether holding the bank on ``device`` leaves most of its free memory to training."""
        if device.type != "cuda":
            return True  # CPU and Apple's unified memory: the bank is in RAM either way
        free, _ = torch.cuda.mem_get_info(device)
        return self.nbytes <= BANK_SHARE_OF_FREE_MEMORY * free

    def to(self, device: torch.device) -> "PairBank":
        return PairBank(self.rainy.to(device), self.clean.to(device), self.sizes.to(device))


class DevicePatchSampler:
    """Random training patches cut where the bank is; same interface as ``data.PatchSampler``.

    Each patch: a pair, a crop corner, and one of the eight flips/turns (transpose, flip rows,
    flip columns), drawn for the whole global batch; the patches are then gathered in one
    indexing operation and converted to float [0, 1] channels-last (b, 3, P, P) tensors.
    """

    def __init__(self, bank: PairBank, patch_size: int, batch_size: int, seed: int = 0) -> None:
        if int(bank.sizes.min()) < patch_size:
            raise DatasetError(f"images smaller than the {patch_size}px patch")
        self.bank, self.patch_size, self.batch_size, self.seed = bank, patch_size, batch_size, seed
        self.placement = "cpu"
        self._generator = torch.Generator(device=bank.device)

    @classmethod
    def from_pairs(cls, pairs: list[Pair], patch_size: int, batch_size: int, seed: int = 0) -> "DevicePatchSampler":
        return cls(PairBank.load(pairs, patch_size), patch_size, batch_size, seed)

    def __len__(self) -> int:
        return len(self.bank)

    def to(self, device: torch.device) -> None:
        """Move the bank to ``device`` if it fits there (else it stays in host memory and only
        the finished patches travel)."""
        if device.type != "cpu" and self.bank.fits_on(device):
            self.bank = self.bank.to(device)
            self._generator = torch.Generator(device=device)
        self.placement = f"{self.bank.device.type} ({self.bank.nbytes / 2**20:.0f} MiB uint8)"

    def draws(self, step: int) -> dict[str, torch.Tensor]:
        """The global batch's random choices at ``step``: ``index`` (b,), ``corner`` (b, 2)
        (row, column), ``turn`` (b, 3) booleans (transpose, flip rows, flip columns)."""
        g = self._generator.manual_seed(self.seed * 1_000_003 + step)
        dev, b, p = self.bank.device, self.batch_size, self.patch_size
        index = torch.randint(len(self.bank), (b,), generator=g, device=dev)
        room = self.bank.sizes[index] - p + 1
        corner = torch.minimum((torch.rand((b, 2), generator=g, device=dev) * room).long(), room - 1)
        turn = torch.randint(2, (b, 3), generator=g, device=dev).bool()
        return {"index": index, "corner": corner, "turn": turn}

    def cut(self, draws: dict[str, torch.Tensor], start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches ``start:stop`` of ``draws`` as (rainy, clean) float tensors in [0, 1]."""
        index, corner, turn = (draws[k][start:stop] for k in ("index", "corner", "turn"))
        n, p = len(index), self.patch_size
        grid = torch.arange(p, device=index.device)
        a, b = grid.view(1, p, 1).expand(n, p, p), grid.view(1, 1, p).expand(n, p, p)
        transpose, flip_rows, flip_cols = (turn[:, i].view(n, 1, 1) for i in range(3))
        rows, cols = torch.where(transpose, b, a), torch.where(transpose, a, b)
        rows = torch.where(flip_rows, p - 1 - rows, rows) + corner[:, 0].view(n, 1, 1)
        cols = torch.where(flip_cols, p - 1 - cols, cols) + corner[:, 1].view(n, 1, 1)
        _, height, width, _ = self.bank.rainy.shape
        pixels = ((index.view(n, 1, 1) * height + rows) * width + cols).view(-1)
        # whole RGB pixels selected (faster than indexing three dimensions, on the CPU too);
        # the (n, P, P, 3) result's NCHW view is channels-last, the layout the network uses
        return tuple(bank.view(-1, 3).index_select(0, pixels).view(n, p, p, 3).permute(0, 3, 1, 2).float().div_(255)
                     for bank in (self.bank.rainy, self.bank.clean))

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(rainy, clean) (b, 3, P, P) float tensors in [0, 1] for this rank at ``step``."""
        share = self.batch_size // world_size
        return self.cut(self.draws(step), rank * share, (rank + 1) * share)
