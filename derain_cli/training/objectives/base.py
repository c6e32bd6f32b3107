"""What one training step optimises: its data and its loss. The Trainer owns everything else.

An objective draws the step's batch (a dict of tensors, a pure function of the step so that
resume needs no sampler state; on the training device when its data lives there) and turns a network plus that batch into named loss terms;
``"loss"`` is minimised, the other entries are logged. State that evolves during training
(SIRR's rain mixture, say) goes through ``state_dict`` so checkpoints resume exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from derain_cli.data.pairs import Pair, PatchSampler
from derain_cli.data.device_patches import DevicePatchSampler

SAMPLERS = ("device", "host")


class Objective:
    """Base class. Subclasses set ``name`` and implement ``batch`` and ``losses``."""

    name = "objective"
    pick_best = True  # ship the best-validated weights; False: the last (validation only watched)

    def batch_sizes(self) -> tuple[int, ...]:
        """Global batch sizes of every stream; each must split over the processes."""
        raise NotImplementedError

    def to(self, device: torch.device) -> None:
        """Called once by the Trainer: move data that should live on the training device."""

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """This rank's share of the global batch of ``step`` (on the CPU, or on the device the
        objective's data was moved to; the Trainer moves what is not there yet)."""
        raise NotImplementedError

    def losses(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms for ``batch`` (already on the network's device); ``"loss"`` is minimised."""
        raise NotImplementedError

    def extra_modules(self) -> list[nn.Module]:
        """Networks besides the derainer that the Trainer's optimiser trains with it (an
        unpaired objective's other encoders and decoders); under torchrun they are wrapped
        with the derainer, so their gradients are averaged over the processes. None by default."""
        return []

    def extra_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.extra_modules() for p in module.parameters()]

    def adversary_parameters(self) -> list[nn.Parameter]:
        """Parameters the objective's own ``adversary_step`` trains (a GAN's discriminators):
        the Trainer makes them equal on every process at the start and checks they still are
        at the end; ``average_gradients`` keeps them so in between."""
        return []

    def optimizer_options(self) -> dict:
        """Adam options besides the learning rate and weight decay (a GAN's betas, say)."""
        return {}

    def adversary_step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Runs before each step's ``losses`` on the same batch, with optimisers the objective
        owns (a GAN's discriminator updates); returns detached terms to log. Nothing by default."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict[str, str]:
        """Rows for the training card: what this objective used."""
        return {}


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Under torchrun, replace each gradient by its mean over the processes (what DDP does for
    the modules it wraps); nothing in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class SupervisedObjective(Objective):
    """Paired rainy/clean patches and the method's own paper loss (``training_loss``).

    Patches come from a ``DevicePatchSampler`` (pairs held as uint8 on the training device,
    cut there: ``sampler="device"``, what ``derain train`` uses) or from the reference
    ``PatchSampler`` (cut on the CPU per patch: ``"host"``).
    """

    name = "supervised"

    def __init__(self, sampler: PatchSampler | DevicePatchSampler) -> None:
        self.sampler = sampler

    @classmethod
    def from_pairs(cls, pairs: list[Pair], patch_size: int, batch_size: int, seed: int = 0,
                   sampler: str = "host") -> "SupervisedObjective":
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "device":
            return cls(DevicePatchSampler.from_pairs(pairs, patch_size, batch_size, seed))
        return cls(PatchSampler(pairs, patch_size, batch_size, seed))

    def to(self, device: torch.device) -> None:
        self.sampler.to(device)

    def describe(self) -> dict[str, str]:
        where = getattr(self.sampler, "placement", None)
        return {"patches": f"cut on {where} from pairs decoded once"} if where else {}

    def batch_sizes(self) -> tuple[int, ...]:
        return (self.sampler.batch_size,)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        rainy, clean = self.sampler.batch(step, rank, world_size)
        return {"rainy": rainy, "clean": clean}

    def losses(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net.training_loss(batch["rainy"], batch["clean"])
