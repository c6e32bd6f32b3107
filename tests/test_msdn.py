"""MSDN: structure the paper describes and the feature stage the matching method needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from derain_cli.methods import get_method
from derain_cli.methods.msdn import MSDN, MultiScaleUnit


def test_parameter_count_and_recipe():
    assert sum(p.numel() for p in MSDN().parameters()) == 372_931
    recipe = get_method("msdn").recipe
    assert (recipe.lr, recipe.batch_size, recipe.patch_size) == (5e-4, 16, 64)  # the paper's


def test_feature_stage_is_reachable_and_forward_goes_through_it():
    torch.manual_seed(0)
    model = MSDN().eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        features = model.features(x)
        assert features.shape == (2, 32, 32, 48)
        assert torch.equal(model.restore(x, features).clamp(0, 1), model(x))
        # the output depends on the features, not only on the skip from the input
        assert not torch.allclose(model.restore(x, features), model.restore(x, torch.zeros_like(features)))


def test_units_see_three_max_pooled_scales():
    unit = MultiScaleUnit(channels=4)
    seen = []
    for block in unit.blocks:
        block.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.rand(1, 4, 16, 24)
    unit(x)
    assert [tuple(s.shape[-2:]) for s in seen] == [(16, 24), (8, 12), (4, 6)]
    assert torch.equal(seen[1], F.max_pool2d(x, 2, 2)) and torch.equal(seen[2], F.max_pool2d(x, 4, 4))


def test_dense_links_read_every_earlier_stage():
    model = MSDN()
    assert [link.in_channels for link in model.links] == [32, 64, 96, 128]
    assert model.fuse.in_channels == 32 * 5


def test_a_feature_statistics_loss_trains_only_the_feature_stage():
    """Matching means and covariances at the feature stage must reach its weights."""
    model = MSDN()
    features = model.features(torch.rand(2, 3, 16, 16)).flatten(2)
    mean_gap = features.mean(dim=2).pow(2).sum()
    mean_gap.backward()
    assert all(p.grad is not None for p in model.transform.parameters())
    assert all(p.grad is None for p in model.units.parameters())
