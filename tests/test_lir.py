"""LIR (Du et al. CVPR 2020): networks, loss terms, the unpaired objective. Tiny configurations
(dim 8, one residual block, batch 2) keep every test fast on a CPU; crops are 64x64, the
smallest the three-scale image discriminators accept (their third scale is 16x16, reduced to
1x1, where reflection padding still works)."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from derain_cli.inference.engine import InferenceEngine
from derain_cli.methods import MethodSpec, TrainingRecipe
from derain_cli.methods.lir import (
    LIR,
    ContentEncoder,
    GaussianBlur,
    LIRTraining,
    RainEncoder,
    VGGFeatures,
    receptive_radius,
)
from derain_cli.training.objectives.unpaired import CropSampler, UnpairedObjective, _frozen

from conftest import rainy_picture

DIM, N_RES, SIZE, BATCH = 8, 1, 64, 2


def _pictures(folder, n, streaks, seed):
    """``n`` smooth pictures; with ``streaks``, bright diagonal lines over them (rain)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        y, x = np.mgrid[0:80, 0:80].astype(np.float32)
        a, b = rng.uniform(0.2, 0.8, 2)
        base = np.stack([a + 0.2 * np.sin(x / 9 + i), b + 0.2 * np.cos(y / 7), 0.5 + 0.1 * np.sin((x + y) / 11)], 2)
        if streaks:
            base = base + ((x + 3 * y + i) % 9 < 1)[..., None] * 0.4
        Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny: on a shared 2-core machine two threads per process made steps
    several times slower (oversubscription), one thread keeps the module under a minute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def objective(tmp_path):
    torch.manual_seed(0)
    rainy, clean = _pictures(tmp_path / "rainy", 4, True, 0), _pictures(tmp_path / "clean", 4, False, 1)
    return UnpairedObjective.from_folders(rainy, clean, DIM, N_RES, patch_size=SIZE, batch_size=BATCH,
                                          warn=lambda m: None)


def _vgg_state(seed=0):
    """Random weights under torchvision's vgg19 key names, with layers past conv4_1 too."""
    g = torch.Generator().manual_seed(seed)
    convs = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
             16: (256, 256), 19: (256, 512), 21: (512, 512)}
    state = {}
    for i, (cin, cout) in convs.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(cout)
    state["classifier.0.weight"] = torch.zeros(4, 4)
    return state


def test_shapes():
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    assert ContentEncoder(DIM, N_RES)(x).shape == (BATCH, 4 * DIM, SIZE // 4, SIZE // 4)
    assert RainEncoder(DIM)(x).shape == (BATCH, 4 * DIM, SIZE // 4, SIZE // 4)
    training = LIRTraining(DIM, N_RES)
    assert training.decoder_a[0].body[0][1].in_channels == 8 * DIM  # G_a reads [content, rain]
    out = training.translate(LIR(DIM, N_RES), x, torch.rand_like(x))
    for name in ("x_a_rec", "x_b_rec", "x_ba", "x_ab", "x_aba", "x_bab"):
        assert out[name].shape == x.shape
    assert [o.shape[-1] for o in training.dis_a(x)] == [SIZE // 16, SIZE // 32, SIZE // 64]
    assert training.dis_c(out["h_a"]).shape == (BATCH, 1, 1, 1)


def test_inference_is_clean_decoder_of_rainy_content_clamped():
    torch.manual_seed(0)
    net = LIR(DIM, N_RES).eval()
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(net(x), net.decoder(net.content(x)).clamp(0, 1))
        odd = net(torch.rand(1, 3, 30, 35))  # not multiples of 4: padded and cropped
    assert odd.shape == (1, 3, 30, 35) and 0 <= float(odd.min()) and float(odd.max()) <= 1


def test_receptive_radius_matches_gradient_support():
    torch.manual_seed(0)
    net = LIR(4, N_RES).eval()
    x = torch.rand(1, 3, 160, 160, requires_grad=True)
    y = net.decoder(net.content(x))
    reach = 0
    for offset in range(4):  # the four phases of the x4 grid
        c = 80 + offset
        (grad,) = torch.autograd.grad(y[0, :, c, c].sum(), x, retain_graph=True)
        rows = (grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero().flatten()
        reach = max(reach, c - int(rows.min()), int(rows.max()) - c)
    assert reach == receptive_radius(N_RES)


GENERATORS = ("lir.content", "lir.decoder", "content_b", "rain_a", "decoder_a")
REACHES = {  # which generators each term's gradient must reach (and no others)
    "gan": GENERATORS,
    "content_gan": ("lir.content", "content_b"),
    "recon": GENERATORS,
    "cycle": GENERATORS,
    "kl": ("lir.content", "content_b", "rain_a"),
    "kl_cycle": GENERATORS,
    "bgm": GENERATORS,
    "vgg": GENERATORS,
}


def test_generator_terms_are_finite_and_reach_the_right_networks():
    torch.manual_seed(0)
    net, training, vgg = LIR(DIM, N_RES).train(), LIRTraining(DIM, N_RES).train(), VGGFeatures(_vgg_state())
    groups = {"lir.content": net.content, "lir.decoder": net.decoder, "content_b": training.content_b,
              "rain_a": training.rain_a, "decoder_a": training.decoder_a, "dis_a": training.dis_a,
              "dis_b": training.dis_b, "dis_c": training.dis_c, "vgg": vgg}
    x_a, x_b = torch.rand(BATCH, 3, SIZE, SIZE), torch.rand(BATCH, 3, SIZE, SIZE)
    with _frozen(training.dis_a, training.dis_b, training.dis_c):
        terms = training.generator_terms(net, x_a, x_b, noise=torch.randn_like, vgg=vgg)
    assert set(terms) == set(REACHES)
    for name, term in terms.items():
        assert torch.isfinite(term), name
        owners = [(group, p) for group, module in groups.items() for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(term, [p for _, p in owners], retain_graph=True, allow_unused=True)
        reached = {group for (group, _), g in zip(owners, grads) if g is not None and bool(g.abs().sum() > 0)}
        assert reached == set(REACHES[name]), name
    assert not any(p.requires_grad for p in vgg.parameters())


def test_image_discriminator_loss_does_not_reach_generators():
    torch.manual_seed(0)
    net, training = LIR(DIM, N_RES), LIRTraining(DIM, N_RES)
    x_a, x_b = torch.rand(BATCH, 3, SIZE, SIZE), torch.rand(BATCH, 3, SIZE, SIZE)
    out = training.translate(net, x_a, x_b, cycle=False)
    training.image_discriminator_losses(x_a, x_b, out["x_ba"], out["x_ab"])["loss"].backward()
    training.content_discriminator_loss(out["h_a"], out["h_b"]).backward()
    for module in (net, *training.generators()):
        assert all(p.grad is None for p in module.parameters())
    for module in (training.dis_a, training.dis_b, training.dis_c):
        assert all(p.grad is not None for p in module.parameters())


def test_discriminator_step_changes_only_discriminators(objective):
    net = LIR(DIM, N_RES).train()
    t = objective.training
    before = {name: copy.deepcopy(m.state_dict(keep_vars=False)) for name, m in
              (("net", net), ("content_b", t.content_b), ("rain_a", t.rain_a), ("decoder_a", t.decoder_a),
               ("dis_a", t.dis_a), ("dis_b", t.dis_b), ("dis_c", t.dis_c))}
    terms = objective.discriminator_step(net, objective.batch(0))
    assert all(torch.isfinite(v) for v in terms.values())
    modules = {"net": net, "content_b": t.content_b, "rain_a": t.rain_a, "decoder_a": t.decoder_a,
               "dis_a": t.dis_a, "dis_b": t.dis_b, "dis_c": t.dis_c}
    for name, module in modules.items():
        changed = any(not torch.equal(p, before[name][k]) for k, p in module.named_parameters())
        assert changed == name.startswith("dis"), name
        assert name.startswith("dis") or all(p.grad is None for p in module.parameters())


def _step(objective, net, optimizer, step):
    batch = objective.batch(step)
    d = objective.discriminator_step(net, batch)
    losses = objective.losses(net, batch)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {**{k: float(v.detach()) for k, v in losses.items()}, **{k: float(v) for k, v in d.items()}}


def _optimizer(net, objective, lr=1e-4):
    return torch.optim.Adam([*net.parameters(), *objective.extra_parameters()], lr=lr, betas=(0.0, 0.9),
                            weight_decay=1e-4)


def test_alternating_steps_lower_reconstruction(objective):
    torch.manual_seed(1)
    net = LIR(DIM, N_RES).train()
    optimizer = _optimizer(net, objective, lr=1e-3)
    history = [_step(objective, net, optimizer, step) for step in range(12)]
    first = np.mean([h["recon"] + h["cycle"] for h in history[:3]])
    last = np.mean([h["recon"] + h["cycle"] for h in history[-3:]])
    assert last < 0.7 * first  # measured: 1.81 -> 0.90
    assert all(np.isfinite(list(h.values())).all() for h in history)


def test_resume_is_exact(objective, tmp_path):
    torch.manual_seed(2)
    net = LIR(DIM, N_RES).train()
    optimizer = _optimizer(net, objective)
    for step in range(2):
        _step(objective, net, optimizer, step)
    path = tmp_path / "state.pt"
    torch.save({"net": net.state_dict(), "opt": optimizer.state_dict(), "objective": objective.state_dict()}, path)
    expected = _step(objective, net, optimizer, 2)

    torch.manual_seed(3)  # different initial weights everywhere: everything must come from the state
    other = UnpairedObjective(objective.rainy, objective.clean, DIM, N_RES)
    net2 = LIR(DIM, N_RES).train()
    optimizer2 = _optimizer(net2, other)
    state = torch.load(path, weights_only=True)
    net2.load_state_dict(state["net"])
    optimizer2.load_state_dict(state["opt"])
    other.load_state_dict(state["objective"])
    assert _step(other, net2, optimizer2, 2) == expected


def test_sampler_is_deterministic_and_splits_over_ranks(objective):
    sampler = objective.rainy
    whole = sampler.batch(5)
    assert whole.shape == (BATCH, 3, SIZE, SIZE) and torch.equal(whole, sampler.batch(5))
    assert not torch.equal(whole, sampler.batch(6))
    assert torch.equal(torch.cat([sampler.batch(5, r, BATCH) for r in range(BATCH)]), whole)
    assert not torch.equal(objective.clean.batch(5), whole)
    batch = objective.batch(5, 1, 2)
    assert batch["rainy"].shape[0] == 1 and int(batch["step"]) == 5
    assert int(batch["noise_seed"]) != int(objective.batch(5, 0, 2)["noise_seed"])


def test_sampler_skips_small_photos(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    Image.fromarray(rainy_picture(20, 20)).save(folder / "small.png")
    Image.fromarray(rainy_picture(70, 90)).save(folder / "ok.png")
    notes = []
    sampler = CropSampler(sorted(folder.iterdir()), SIZE, 4, warn=notes.append)
    assert len(sampler) == 1 and "smaller than the 64px patch" in notes[0]


def test_describe_records_semantic_switch(objective):
    rows = objective.describe()
    assert rows["semantic loss"].startswith("off") and "4 rainy + 4 clean" in rows["data"]
    assert "vgg" not in objective.losses(LIR(DIM, N_RES), objective.batch(0))
    with_vgg = UnpairedObjective(objective.rainy, objective.clean, DIM, N_RES, vgg=VGGFeatures(_vgg_state()))
    assert with_vgg.describe()["semantic loss"].startswith("on")
    assert torch.isfinite(with_vgg.losses(LIR(DIM, N_RES), with_vgg.batch(0))["vgg"])


def test_vgg_features_follow_torchvision_layout():
    vgg = VGGFeatures(_vgg_state())
    convs = [i for i, m in enumerate(vgg.features) if isinstance(m, nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19] and len(vgg.features) == 20  # vgg19().features[:20]
    assert vgg(torch.rand(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    assert not any(p.requires_grad for p in vgg.parameters())
    state = _vgg_state()
    del state["features.16.weight"]
    with pytest.raises(ValueError, match="features|16.weight"):
        VGGFeatures(state)


@pytest.mark.parametrize("k", [5, 9, 15])
def test_blur_kernel_matches_opencv(k):
    # reference: OpenCV's cv2.getGaussianKernel(k, 25), 2-D as the outer product
    g = cv2.getGaussianKernel(k, 25)
    blur = GaussianBlur(k, 25)
    assert blur.kernel.shape == (3, 1, k, k)
    np.testing.assert_allclose(blur.kernel[1, 0].numpy(), g @ g.T, atol=1e-6, rtol=0)
    flat = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(blur(flat), flat, atol=1e-6)


def test_tiled_equals_whole_picture():
    torch.manual_seed(0)
    net = LIR(DIM, N_RES).eval()
    overlap = -(-3 * receptive_radius(N_RES) // 4) * 4  # 3 x the radius: seams measured at 0.28/255
    spec = MethodSpec(name="lir-test", network="derain_cli.methods.lir:LIR", summary="", paper="", size_multiple=4,
                      size_offset=0, overlap=overlap, half_safe=False, default_tag="none", tileable=True,
                      recipe=TrainingRecipe(lr=1e-4, batch_size=16, patch_size=64, iterations=1))
    image = rainy_picture(96, 128, seed=3).astype(np.float32) / 255
    whole = InferenceEngine(net, spec, "cpu", "fp32", tile=0).run(image)["image"]
    tiled = InferenceEngine(net, spec, "cpu", "fp32", tile=64).run(image)["image"]
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= 1.0 / 255


class TinyLIR(LIR):
    """The test configuration as a registry-style network (built with no arguments)."""

    def __init__(self) -> None:
        super().__init__(DIM, N_RES)


def test_trainer_runs_the_unpaired_objective_and_resumes_exactly(tmp_path):
    from derain_cli.training.trainer import TrainConfig, Trainer

    rainy, clean = _pictures(tmp_path / "rainy", 4, True, 0), _pictures(tmp_path / "clean", 4, False, 1)
    spec = MethodSpec(name="lir-test", network="test_lir:TinyLIR", summary="", paper="", size_multiple=4,
                      size_offset=0, overlap=136, half_safe=False, default_tag="none",
                      recipe=TrainingRecipe(lr=1e-4, batch_size=BATCH, patch_size=SIZE, iterations=4))

    def trainer(out: str, iterations: int) -> Trainer:
        torch.manual_seed(0)
        objective = UnpairedObjective.from_folders(rainy, clean, DIM, N_RES, patch_size=SIZE, batch_size=BATCH,
                                                   warn=lambda m: None)
        cfg = TrainConfig(method="lir-test", data=str(rainy), out=str(tmp_path / out), iterations=iterations,
                          batch_size=BATCH, patch_size=SIZE, lr=1e-4, weight_decay=1e-4, val_every=2,
                          checkpoint_every=2, device="cpu")
        return Trainer(spec, cfg, objective, [], log=lambda m: None)

    straight = trainer("straight", 4)
    group = straight.optimizer.param_groups[0]
    assert group["betas"] == (0.0, 0.9)
    assert len(group["params"]) == len(list(straight.net.parameters())) + len(straight.objective.extra_parameters())
    straight.train()
    assert {"d_loss", "d_content", "loss"} <= set(straight.history[-1])

    trainer("resumed", 2).train()
    resumed = trainer("resumed", 4)
    resumed.resume()
    resumed.train()
    for mine, theirs in ((resumed.net, straight.net), (resumed.objective.training, straight.objective.training)):
        for key, value in theirs.state_dict().items():
            assert torch.equal(value, mine.state_dict()[key]), key
