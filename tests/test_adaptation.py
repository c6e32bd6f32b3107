"""Semi-supervised adaptation: loss terms against hand-computed values, EM, feature taps, the
objectives inside the training engine (loss goes down, exact resume)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from derain_cli.training.objectives.adaptation import FeatureTap, MomentsObjective, SIRRObjective
from derain_cli.data.pairs import DatasetError, PatchSampler, PhotoSampler, find_pairs, find_photos
from derain_cli.training.trainer import TrainConfig, Trainer
from derain_cli.training.losses import ZeroMeanMixture, gaussian_kl, mixture_nll, moment_distances, total_variation
from derain_cli.methods import get_method, list_methods

from conftest import rainy_picture
from test_training import make_dataset


def test_em_recovers_a_known_mixture():
    g = torch.Generator().manual_seed(0)
    weights, stds = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.01, 0.05, 0.2])
    n = 300_000
    component = torch.multinomial(weights, n, replacement=True, generator=g)
    samples = torch.randn(n, generator=g) * stds[component]
    mixture = ZeroMeanMixture.initial(samples, 3).fit(samples, 200)
    order = torch.argsort(mixture.variances)
    assert torch.allclose(mixture.weights[order].float(), weights, atol=0.02), mixture.weights
    assert torch.allclose(mixture.variances[order].sqrt().float(), stds, rtol=0.05), mixture.variances.sqrt()
    # EM never lowers the likelihood
    other = ZeroMeanMixture.initial(samples, 3)
    before = other.log_likelihood(samples)
    assert other.fit(samples, 3).log_likelihood(samples) >= before


def test_mixture_nll_matches_hand_computed_values_and_its_gradient():
    r = torch.tensor([0.1, -0.2], requires_grad=True)
    gamma = torch.tensor([[0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
    weights = torch.tensor([0.6, 0.4], dtype=torch.float64)
    variances = torch.tensor([0.01, 0.04], dtype=torch.float64)

    def term(x, k):  # r^2 / (2 var) + log(2 pi var) / 2 - log pi, by hand
        return x * x / (2 * variances[k].item()) + 0.5 * math.log(2 * math.pi * variances[k].item()) - math.log(weights[k].item())

    expected = (0.7 * term(0.1, 0) + 0.3 * term(0.1, 1) + 0.2 * term(-0.2, 0) + 0.8 * term(-0.2, 1)) / 2
    value = mixture_nll(r, gamma, weights, variances)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    grad = [(0.7 * 0.1 / 0.01 + 0.3 * 0.1 / 0.04) / 2, (0.2 * -0.2 / 0.01 + 0.8 * -0.2 / 0.04) / 2]
    assert r.grad.tolist() == pytest.approx(grad, rel=1e-6)

    # with the posterior responsibilities it is the true NLL plus their entropy
    mixture = ZeroMeanMixture(weights, variances)
    posterior = mixture.responsibilities(r)
    entropy = -(posterior * posterior.log()).sum(1).mean()
    nll = -mixture.log_likelihood(r)
    assert (mixture_nll(r, posterior, weights, variances) - entropy).item() == pytest.approx(nll.item(), rel=1e-6)


def test_total_variation_and_kl_match_hand_computed_values():
    a = torch.tensor([[[[0.0, 1.0], [3.0, 2.0]]]])  # |3-0| + |2-1| down, |1-0| + |2-3| across = 6
    b = torch.zeros(1, 1, 2, 2)
    assert total_variation(torch.cat([a, b])).item() == pytest.approx(3.0)  # per image, batch mean
    kl = gaussian_kl(torch.tensor(1.0), torch.tensor(2.0))
    assert kl.item() == pytest.approx(math.log(2) + 1 / 8 - 0.5)
    assert gaussian_kl(torch.tensor(0.3), torch.tensor(0.3)).item() == pytest.approx(0.0, abs=1e-7)


def test_moment_distances_match_numpy():
    rng = np.random.default_rng(0)
    fs, fr = rng.normal(size=(2, 3, 4, 5)), rng.normal(1.0, 2.0, size=(3, 3, 2, 2))
    mean_gap, cov_gap = moment_distances(torch.tensor(fs), torch.tensor(fr))

    def stats(f):  # (B, d, H, W) -> d x N feature vectors, their mean and covariance (divided by N)
        x = f.transpose(1, 0, 2, 3).reshape(f.shape[1], -1)
        m = x.mean(1, keepdims=True)
        return m[:, 0], (x - m) @ (x - m).T / x.shape[1]

    (ms, cs), (mr, cr) = stats(fs), stats(fr)
    assert mean_gap.item() == pytest.approx(np.linalg.norm(ms - mr), rel=1e-5)
    assert cov_gap.item() == pytest.approx(np.linalg.norm(cs - cr, "fro") / 3, rel=1e-5)
    same = torch.tensor(fs)
    assert sum(moment_distances(same, same)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("spec", list_methods(), ids=lambda s: s.name)
def test_every_method_declares_a_feature_stage_the_tap_reaches(spec):
    torch.manual_seed(0)
    net = spec.build()
    x = torch.rand(2, 3, 32, 32)
    with FeatureTap(net, spec.feature_stage) as tap:
        early = tap.features(x)
        _, during = tap.during(lambda: net(x))
    assert early.ndim == 4 and early.shape[0] == 2 and early.shape[1] >= 8
    assert torch.allclose(early, during)  # stopping early changes nothing before the stage
    early.sum().backward()  # and gradients reach the layers before it
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_msdn_stage_is_its_feature_transform():
    net = get_method("msdn").build()
    x = torch.rand(1, 3, 16, 16)
    with FeatureTap(net, "transform") as tap:
        assert torch.equal(tap.features(x), net.features(x))


def make_photos(folder: Path, n: int = 5, size=(48, 56)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rainy_picture(*size, seed=10 + i)).save(folder / f"photo{i}.png")
    return folder


def semi_supervised(tmp_path: Path, algorithm: str, steps: int, out: str, lr: float = 1e-3, val_every: int = 2):
    pairs = PatchSampler(find_pairs(make_dataset(tmp_path / "pairs", 4)), 32, 4, seed=1)
    photos = PhotoSampler(find_photos(make_photos(tmp_path / "photos")), 32, 4, seed=1)
    spec = get_method("lpnet")
    objective = (SIRRObjective(pairs, photos) if algorithm == "sirr"
                 else MomentsObjective(pairs, photos, spec.feature_stage))
    config = TrainConfig(method="lpnet", data=str(tmp_path / "photos"), out=str(tmp_path / out), iterations=steps,
                         batch_size=4, patch_size=32, lr=lr, val_every=val_every, checkpoint_every=2, device="cpu")
    return Trainer(spec, config, objective, [], log=lambda m: None)


@pytest.mark.parametrize("algorithm", ["sirr", "moments"])
def test_a_short_run_lowers_the_objective(tmp_path, algorithm):
    trainer = semi_supervised(tmp_path, algorithm, 40, "run", lr=3e-3, val_every=10)
    trainer.train()
    first, last = trainer.history[0], trainer.history[-1]
    assert last["loss"] < first["loss"], (first, last)
    if algorithm == "moments":
        assert last["match"] < first["match"]
    else:
        assert sum(last[f"pi{k}"] for k in (1, 2, 3)) == pytest.approx(1.0, abs=1e-5)


def test_every_sirr_term_reaches_the_network_and_em_runs_on_every_batch(tmp_path):
    from derain_cli.training.objectives.adaptation import SIRRWeights

    trainer = semi_supervised(tmp_path, "sirr", 1, "run")
    objective, net = trainer.objective, trainer.net
    batch = objective.batch(0)
    terms = objective.losses(net, batch)
    w, m = SIRRWeights(), objective.mixture
    scale = (m.weights * m.variances).sum().item()  # the scale-free mixture term
    weighted = w.supervised * terms["mse"] + w.mixture * scale * terms["nll"] + w.tv * terms["tv"] + w.kl * terms["kl"]
    assert terms["loss"].item() == pytest.approx(weighted.item(), rel=1e-5)
    fitted = objective.mixture.state_dict()
    for alone in ("supervised", "mixture", "tv", "kl"):
        objective.weights = SIRRWeights(**{k: float(k == alone) for k in ("supervised", "mixture", "tv", "kl")})
        objective.mixture = ZeroMeanMixture(**fitted)
        net.zero_grad()
        objective.losses(net, batch)["loss"].backward()
        assert sum(p.grad.abs().sum() for p in net.parameters() if p.grad is not None) > 0, alone
    objective.losses(net, objective.batch(1))
    assert not torch.equal(objective.mixture.variances, fitted["variances"])  # refitted on the new batch


@pytest.mark.parametrize("algorithm", ["sirr", "moments"])
def test_resume_is_exact(tmp_path, monkeypatch, algorithm):
    straight = semi_supervised(tmp_path, algorithm, 6, "straight")
    straight.train()
    crashing = semi_supervised(tmp_path, algorithm, 6, "crashed")
    original = crashing.objective.batch

    def crash(step, *args):
        if step == 4:
            raise KeyboardInterrupt
        return original(step, *args)

    monkeypatch.setattr(crashing.objective, "batch", crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    resumed = semi_supervised(tmp_path, algorithm, 6, "crashed")
    resumed.resume()
    assert resumed.step == 4
    resumed.train()
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert straight.objective.state_dict().keys() == resumed.objective.state_dict().keys()
    for k, v in straight.objective.state_dict().items():
        assert torch.equal(v, resumed.objective.state_dict()[k]), k


def test_photo_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no images"):
        find_photos(tmp_path / "empty")
    folder = make_photos(tmp_path / "few", n=3)
    few = PhotoSampler(find_photos(folder), 32, 4)  # fewer photos than the batch: several patches from some
    batch = few.batch(0)
    assert batch.shape == (4, 3, 32, 32) and len({tuple(p.flatten()[:64].tolist()) for p in batch}) == 4
    (tmp_path / "unusable").mkdir()
    Image.fromarray(rainy_picture(20, 20)).save(tmp_path / "unusable" / "tiny.png")
    with pytest.raises(DatasetError, match="unusable: no usable photo of 1 \\(1 smaller than the 32px patch\\)"):
        PhotoSampler(find_photos(tmp_path / "unusable"), 32, 4, warn=lambda m: None)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(rainy_picture(20, 20)).save(folder / "tiny.png")
    warnings = []
    sampler = PhotoSampler(find_photos(folder), 32, 2, warn=warnings.append)
    assert len(sampler) == 3
    assert any("broken.jpg" in w for w in warnings) and any("tiny.png" in w and "smaller than the 32px patch" in w
                                                          for w in warnings)
    batch = sampler.batch(0)
    assert batch.shape == (2, 3, 32, 32) and torch.equal(batch, sampler.batch(0))


def test_the_scale_free_mixture_term_cannot_run_away_as_the_residual_shrinks():
    """With EM refitted on the residual, the raw NLL pulls harder the smaller the residual
    (gradient x 1/c when the residual is scaled by c): the runaway that collapses SIRR to the
    identity. Scaled by the mixture's variance, the pull shrinks with the residual (x c)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20_000, generator=g) * torch.where(torch.rand(20_000, generator=g) < 0.2, 0.3, 0.05)

    def pull(residual: torch.Tensor, scale_free: bool) -> torch.Tensor:
        mixture = ZeroMeanMixture.initial(residual, 3).fit(residual, 30)
        r = residual.clone().requires_grad_(True)
        nll = mixture_nll(r, mixture.responsibilities(r), mixture.weights, mixture.variances)
        scale = (mixture.weights * mixture.variances).sum().item() if scale_free else 1.0
        (scale * nll).backward()
        return r.grad.abs().mean()

    c = 0.2  # small components stay well above the variance floor
    assert pull(c * base, False) / pull(base, False) == pytest.approx(1 / c, rel=0.05)
    assert pull(c * base, True) / pull(base, True) == pytest.approx(c, rel=0.05)
