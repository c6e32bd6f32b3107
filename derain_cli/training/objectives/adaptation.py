"""Semi-supervised objectives that adapt a network to real rain without clean images.

Each step sees a batch of labeled synthetic pairs and a batch of the user's rainy photos.

- ``SIRRObjective`` (Wei et al., "Semi-supervised Transfer Learning for Image Rain Removal",
  CVPR 2019): l1 MSE(f(x_s), y_s) + l2 mixture NLL of the real residual x_r - f(x_r)
  + l3 TV(f(x_r)) + l4 KL(synthetic rain Gaussian || closest mixture component).
- ``MomentsObjective`` (Qiu et al. 2022): the method's supervised loss + w * distance between
  the first- and second-order statistics of synthetic and real features at the method's
  declared feature stage.

Where the SIRR authors' code departs from the paper, the paper's intent is followed (see
docs/adaptation.md): the KL uses standard deviations (their code passes variances as scales),
its synthetic Gaussian is the network's synthetic rain estimate x_s - f(x_s) (theirs is
x_s - y_s, a constant, so the term has no gradient), and the first mixture is fitted on the
starting network's residuals (theirs on raw patches). The mixture term is scaled by the
mixture's variance by default: unscaled, it collapses the network to the identity (measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from derain_cli.data.pairs import PatchSampler, PhotoSampler
from derain_cli.training.objectives.base import Objective
from derain_cli.training.losses import ZeroMeanMixture, gaussian_kl, mixture_nll, moment_distances, total_variation


def derained(output) -> torch.Tensor:
    """The image of a network's output (a tensor, or a dict of named maps)."""
    return output["image"] if isinstance(output, dict) else output


def _gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` from every process concatenated (only ``x`` when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _SemiSupervised(Objective):
    """Shared by both algorithms: a synthetic pair stream and a real photo stream."""

    def __init__(self, pairs: PatchSampler, photos: PhotoSampler) -> None:
        self.pairs, self.photos = pairs, photos

    def batch_sizes(self) -> tuple[int, ...]:
        return (self.pairs.batch_size, self.photos.batch_size)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        rainy, clean = self.pairs.batch(step, rank, world_size)
        return {"rainy": rainy, "clean": clean, "real": self.photos.batch(step, rank, world_size)}


@dataclass(frozen=True)
class SIRRWeights:
    """The SIRR authors' loss weights lambda 1..4."""

    supervised: float = 1.0
    mixture: float = 0.5
    tv: float = 1e-5
    kl: float = 1e-9


class SIRRObjective(_SemiSupervised):
    """SIRR's loss. The mixture is refitted by EM on every real batch's residual (warm-started
    from the previous batch; the first fit starts from ``ZeroMeanMixture.initial``) and enters
    the loss as constants; under DDP every process fits it on the residuals of all processes."""

    name = "sirr"

    def __init__(self, pairs: PatchSampler, photos: PhotoSampler, components: int = 3, em_iterations: int = 1,
                 first_em_iterations: int = 20, weights: SIRRWeights = SIRRWeights(), scale_free: bool = True) -> None:
        super().__init__(pairs, photos)
        self.components, self.em_iterations, self.first_em_iterations = components, em_iterations, first_em_iterations
        self.weights = weights
        # The NLL's gradient is sum_k gamma_k r / var_k: as the residual shrinks, EM shrinks the
        # variances and the pull towards r = 0 grows without bound, until the network is the
        # identity (measured, docs/adaptation.md). Scaling the term by the mixture's own
        # variance sum_k pi_k var_k (a constant) keeps its shape -- small components pull
        # harder than the rain's -- but makes its strength independent of the residual's scale.
        self.scale_free = scale_free
        self.mixture: ZeroMeanMixture | None = None

    def refit(self, residual: torch.Tensor) -> ZeroMeanMixture:
        samples = _gather(residual.detach()).flatten()
        if self.mixture is None:
            self.mixture = ZeroMeanMixture.initial(samples, self.components).fit(samples, self.first_em_iterations)
        else:
            self.mixture.fit(samples, self.em_iterations)
        return self.mixture

    def losses(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = self.weights
        synthetic = derained(net(batch["rainy"]))
        supervised = F.mse_loss(synthetic, batch["clean"])
        real_out = derained(net(batch["real"]))
        residual = batch["real"] - real_out
        mixture = self.refit(residual)
        nll = mixture_nll(residual, mixture.responsibilities(residual), mixture.weights, mixture.variances)
        tv = total_variation(real_out)
        synthetic_std = (batch["rainy"] - synthetic).pow(2).mean().clamp_min(1e-12).sqrt()  # zero-mean Gaussian
        stds = mixture.variances.sqrt().to(synthetic_std)
        kl = gaussian_kl(synthetic_std, stds).min()
        scale = (mixture.weights * mixture.variances).sum().item() if self.scale_free else 1.0
        loss = w.supervised * supervised + w.mixture * scale * nll + w.tv * tv + w.kl * kl
        terms = {"loss": loss, "mse": supervised.detach(), "nll": nll.detach(), "tv": tv.detach(), "kl": kl.detach()}
        for k in range(self.components):
            terms[f"pi{k + 1}"] = mixture.weights[k].float()
            terms[f"sigma{k + 1}"] = stds[k].detach().float()
        return terms

    def state_dict(self) -> dict:
        return self.mixture.state_dict() if self.mixture is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.mixture = ZeroMeanMixture(state["weights"], state["variances"]) if state else None

    def describe(self) -> dict[str, str]:
        w = self.weights
        return {
            "objective": (f"SIRR (Wei et al. CVPR 2019): {w.supervised} MSE(synthetic) + {w.mixture} "
                          f"{'x mixture variance ' if self.scale_free else ''}x mixture NLL(real "
                          f"residual, K={self.components}, EM {self.em_iterations}/batch) + {w.tv} TV(real output) "
                          f"+ {w.kl} KL(synthetic rain ‖ closest component)"),
            "batches": f"{self.pairs.batch_size} synthetic + {self.photos.batch_size} real patches per step",
        }


class _StageReached(Exception):
    """Raised by FeatureTap's hook to stop a forward pass once the features are captured."""


class FeatureTap:
    """Captures the output of a network's sub-module (its first call in a forward pass).

    ``features(x)`` runs the network only until that stage: the hook raises once the output
    is captured, so the layers after it cost nothing.
    """

    def __init__(self, net: nn.Module, stage: str) -> None:
        self.net = net
        self.module = net.get_submodule(stage)
        self.captured: torch.Tensor | None = None
        self.stop = False

    def _hook(self, module, inputs, output) -> None:
        if self.captured is None:
            # a copy: the network may modify its own tensor in place afterwards (LPNet's activations)
            self.captured = output.clone()
            if self.stop:
                raise _StageReached

    def __enter__(self) -> "FeatureTap":
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def during(self, run):
        """Call ``run()`` (a full forward pass); return its result and the captured features."""
        self.captured, self.stop = None, False
        result = run()
        return result, self.captured

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.captured, self.stop = None, True
        try:
            self.net(x)
        except _StageReached:
            pass
        if self.captured is None:
            raise RuntimeError("the feature stage was never reached")
        return self.captured


class MomentsObjective(_SemiSupervised):
    """The method's supervised loss on synthetic pairs + ``weight`` * L_match between the
    synthetic and real features at ``stage`` (Qiu et al. 2022, omega = 1)."""

    name = "moments"

    def __init__(self, pairs: PatchSampler, photos: PhotoSampler, stage: str, weight: float = 1.0) -> None:
        super().__init__(pairs, photos)
        self.stage, self.weight = stage, weight

    def losses(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with FeatureTap(net, self.stage) as tap:
            supervised, synthetic = tap.during(lambda: net.training_loss(batch["rainy"], batch["clean"]))
            real = tap.features(batch["real"])
        mean_gap, covariance_gap = moment_distances(synthetic, real)
        match = mean_gap + covariance_gap
        return {"loss": supervised["loss"] + self.weight * match, "supervised": supervised["loss"].detach(),
                "match": match.detach(), "mean_gap": mean_gap.detach(), "cov_gap": covariance_gap.detach()}

    def describe(self) -> dict[str, str]:
        return {
            "objective": (f"feature statistics matching (Qiu et al. 2022): supervised loss + {self.weight} x "
                          f"(‖M_s - M_r‖ + ‖C_s - C_r‖_F / d) at `{self.stage}` (per process under DDP)"),
            "batches": f"{self.pairs.batch_size} synthetic + {self.photos.batch_size} real patches per step",
        }
