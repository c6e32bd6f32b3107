"""Training losses, differentiable, as pure functions; and the rain mixture model.

Shapes: images (B, C, H, W) in [0, 1]; a residual is any tensor (its elements are treated as
independent samples). Every function returns a scalar tensor.

- ``ZeroMeanMixture``: SIRR's model of real rain, a K-component zero-mean Gaussian mixture over
  the residual elements x - f(x), refitted by EM on every real batch (Wei et al. CVPR 2019).
- ``mixture_nll``: its negative log-likelihood term, responsibilities and variances constant.
- ``total_variation``: anisotropic TV, summed per image and averaged over the batch (the
  ``tf.image.total_variation`` convention SIRR's weight 1e-5 was chosen for).
- ``gaussian_kl``: KL between two zero-mean Gaussians given by their standard deviations.
- ``moment_distances``: first- and second-order feature statistics distance (Qiu et al. 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


VARIANCE_FLOOR = 1e-6  # the SIRR authors' floor; keeps a collapsed component finite


def _samples(x: torch.Tensor) -> torch.Tensor:
    """Detached, flat, float64 on the CPU: EM runs there (MPS has no float64; N is small)."""
    return x.detach().flatten().to("cpu", torch.float64)


@dataclass
class ZeroMeanMixture:
    """K zero-mean Gaussians: ``weights`` (K,) summing to 1 and ``variances`` (K,), float64 on
    the CPU."""

    weights: torch.Tensor
    variances: torch.Tensor

    @classmethod
    def initial(cls, samples: torch.Tensor, components: int = 3) -> "ZeroMeanMixture":
        """Equal weights; variances from ``components`` equal-count groups of the samples sorted
        by magnitude, so small, medium and large residuals each start with their own component."""
        x = _samples(samples)
        groups = torch.sort(x.abs()).values.chunk(components)
        variances = torch.stack([(g * g).mean() for g in groups]).clamp_min(VARIANCE_FLOOR)
        return cls(torch.full((components,), 1.0 / components, dtype=torch.float64), variances)

    def log_joint(self, samples: torch.Tensor) -> torch.Tensor:
        """(N, K): log(pi_k) + log N(x_n | 0, var_k)."""
        x = _samples(samples)[:, None]
        var = self.variances[None]
        return torch.log(self.weights)[None] - 0.5 * (x * x / var + torch.log(2 * math.pi * var))

    def responsibilities(self, samples: torch.Tensor) -> torch.Tensor:
        """(N, K) posterior probability of each component for each sample (E-step)."""
        return torch.softmax(self.log_joint(samples), dim=1)

    def em_step(self, samples: torch.Tensor) -> None:
        """One E-step and M-step (zero means fixed), in place."""
        x = _samples(samples)
        gamma = self.responsibilities(x)
        counts = gamma.sum(0).clamp_min(1e-12)
        self.weights = counts / x.numel()
        self.variances = (gamma * (x * x)[:, None]).sum(0) / counts + VARIANCE_FLOOR

    def fit(self, samples: torch.Tensor, iterations: int) -> "ZeroMeanMixture":
        for _ in range(iterations):
            self.em_step(samples)
        return self

    def log_likelihood(self, samples: torch.Tensor) -> torch.Tensor:
        """Mean log-likelihood per sample (float64), for monitoring EM."""
        return torch.logsumexp(self.log_joint(samples), dim=1).mean()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights.clone(), "variances": self.variances.clone()}


def mixture_nll(residual: torch.Tensor, responsibilities: torch.Tensor, weights: torch.Tensor,
                variances: torch.Tensor) -> torch.Tensor:
    """EM's form of the mixture's negative log-likelihood, averaged over the residual's elements:

        mean_n sum_k gamma_nk * (r_n^2 / (2 var_k) + log(2 pi var_k) / 2 - log pi_k)

    ``responsibilities`` (N, K), ``weights`` and ``variances`` (K,) are constants (no gradient
    reaches them). With the responsibilities of the current residual this equals the true NLL
    plus their entropy (a constant), so its gradient is the NLL's: sum_k gamma_nk r_n / var_k.
    """
    r = residual.flatten()[:, None]
    gamma = responsibilities.detach().to(r)
    var = variances.detach().to(r)[None]
    log_prior = torch.log(weights.detach().to(r))[None]
    per_component = r * r / (2 * var) + 0.5 * torch.log(2 * math.pi * var) - log_prior
    return (gamma * per_component).sum(1).mean()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Sum of absolute differences between vertical and horizontal neighbours, per image
    (all channels), averaged over the batch. (B, C, H, W) -> scalar."""
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).sum(1)
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).sum(1)
    return (dy + dx).mean()


def gaussian_kl(std_p: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """KL(N(0, std_p^2) || N(0, std_q^2)) = log(std_q / std_p) + std_p^2 / (2 std_q^2) - 1/2."""
    return torch.log(std_q / std_p) + std_p * std_p / (2 * std_q * std_q) - 0.5


def moment_distances(synthetic: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the feature-statistics distance between two batches, (B, d, H, W) each:

        ||M_s - M_r||_2   and   (1/d) ||C_s - C_r||_F      (L_match is their sum)

    M: the mean feature vector over every position of the batch; C: the d x d covariance of
    the feature vectors, (F - M)(F - M)^T divided by their number N. (The paper writes the
    scatter matrix without 1/N; dividing keeps the term independent of batch and patch size.)
    """
    def stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = features.float().transpose(0, 1).flatten(1)  # (d, N)
        mean = f.mean(1, keepdim=True)
        centred = f - mean
        return mean.squeeze(1), centred @ centred.T / f.shape[1]

    m_s, c_s = stats(synthetic)
    m_r, c_r = stats(real)
    return torch.linalg.vector_norm(m_s - m_r), torch.linalg.matrix_norm(c_s - c_r) / synthetic.shape[1]
