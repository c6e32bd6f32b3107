"""What one training step optimises: its data and its loss. The Trainer owns everything else.

An objective draws the step's batch (a dict of tensors, a pure function of the step so that
resume needs no sampler state) and turns a network plus that batch into named loss terms;
``"loss"`` is minimised, the other entries are logged. State that evolves during training
(SIRR's rain mixture, say) goes through ``state_dict`` so checkpoints resume exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from derain_cli.data import Pair, PatchSampler


class Objective:
    """Base class. Subclasses set ``name`` and implement ``batch`` and ``losses``."""

    name = "objective"

    def batch_sizes(self) -> tuple[int, ...]:
        """Global batch sizes of every stream; each must split over the processes."""
        raise NotImplementedError

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """This rank's share of the global batch of ``step``, on the CPU."""
        raise NotImplementedError

    def losses(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms for ``batch`` (already on the network's device); ``"loss"`` is minimised."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict[str, str]:
        """Rows for the training card: what this objective used."""
        return {}


class SupervisedObjective(Objective):
    """Paired rainy/clean patches and the method's own paper loss (``training_loss``)."""

    name = "supervised"

    def __init__(self, sampler: PatchSampler) -> None:
        self.sampler = sampler

    @classmethod
    def from_pairs(cls, pairs: list[Pair], patch_size: int, batch_size: int, seed: int = 0) -> "SupervisedObjective":
        return cls(PatchSampler(pairs, patch_size, batch_size, seed))

    def batch_sizes(self) -> tuple[int, ...]:
        return (self.sampler.batch_size,)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        rainy, clean = self.sampler.batch(step, rank, world_size)
        return {"rainy": rainy, "clean": clean}

    def losses(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net.training_loss(batch["rainy"], batch["clean"])
