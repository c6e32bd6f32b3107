"""Unpaired training: LIR (Du, Chen, Yang, CVPR 2020) from a folder of rainy photos and an
unrelated folder of clean photos; no pair is ever needed.

Each step draws 64x64 crops (random position, random horizontal flip) from both folders, a pure
function of the step, and runs the authors' iteration (``unit_noise2clear-bn.yaml``):

1. ``discriminator_step``: the content discriminator D_c three times (Adam 5e-5, gradient norm
   clipped to 5), then the image discriminators D_a and D_b once (Adam 1e-4), on the batch's
   translations computed without gradients. The objective owns both optimisers.
2. the generator step, ``losses``: the generator terms (derain_cli/methods/lir.py) for the
   Trainer's optimiser, which holds the derainer's parameters (E_a^c, G_b) and
   ``extra_modules()`` (E_b, E_a^n, G_a).

The noise UNIT adds to every code before decoding is drawn from a generator seeded by the
step and the rank, so the discriminator step sees exactly the fakes the generator step makes,
and a resumed run draws the same noise. The discriminators' learning rates follow the paper's
schedule (x0.5 every 100k steps) as a function of the step; everything else that evolves
(the training-only networks, batch-norm statistics included, and both optimisers) is in
``state_dict``.

The Trainer runs it through the Objective hooks: ``extra_modules`` (E_b, E_a^n, G_a join
the derainer in its Adam, with ``optimizer_options``' betas, and in the module DDP wraps) and
``adversary_step`` (the discriminator step, before each generator step).

Under torchrun each process takes its share of both streams' crops; the discriminators'
gradients are averaged over the processes by hand (``average_gradients``: they live outside
the DDP module) and the Trainer checks at the end that every process holds the same weights.
Batch norm normalises with each process's own share of the batch (not synchronised). The
discriminator step runs in float32.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from derain_cli.data.pairs import DatasetError, Pair, find_photos, shrink
from derain_cli.training.objectives.base import Objective, average_gradients
from derain_cli.errors import DerainError, UsageError
from derain_cli.media.images import read_image
from derain_cli.methods.lir import LIR, LIRTraining, LIRWeights, VGGFeatures

MIN_CROP = 64  # the image discriminators' four stride-2 reflect-padded convolutions need it
CONTENT_UPDATES = 3  # D_c updates per iteration
CONTENT_CLIP = 5.0  # D_c gradient norm clip
BETAS = (0.0, 0.9)


class CropSampler:
    """Random ``patch_size`` crops with a random horizontal flip from unlabeled photos, a pure
    function of (seed, stream, step). Photos are picked with replacement, so a folder needs
    only one usable photo; photos larger than ``max_side`` are downscaled (area)."""

    def __init__(self, photos: list[Path], patch_size: int, batch_size: int, seed: int = 0, stream: int = 0,
                 max_side: int = 1024, warn=print) -> None:
        self.images: list[torch.Tensor] = []
        for path in photos:
            try:
                rgb = shrink(read_image(path).rgb8, max_side)
            except DerainError as err:  # ImageError names the file and the reason
                warn(f"skipping {err}")
                continue
            if min(rgb.shape[:2]) < patch_size:
                warn(f"skipping {path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than the {patch_size}px patch")
                continue
            self.images.append(torch.tensor(rgb).permute(2, 0, 1).contiguous())
        if not self.images:
            where = photos[0].parent if photos else "the folder"
            raise DatasetError(f"{where}: no usable photo of {len(photos)} (unreadable or smaller than {patch_size}px)")
        self.patch_size, self.batch_size, self.seed, self.stream = patch_size, batch_size, seed, stream

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Float tensor (batch_size / world_size, 3, P, P) in [0, 1]: this rank's share."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) ^ ((self.stream + 1) << 40))
        p, share = self.patch_size, self.batch_size // world_size
        patches = []
        for _ in range(self.batch_size):
            image = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
            h, w = image.shape[1:]
            y = int(torch.randint(h - p + 1, (1,), generator=g))
            x = int(torch.randint(w - p + 1, (1,), generator=g))
            patch = image[:, y : y + p, x : x + p]
            patches.append(patch.flip(2) if int(torch.randint(2, (1,), generator=g)) else patch)
        return torch.stack(patches[rank * share : (rank + 1) * share]).float().div_(255)


def unpaired_halves(pairs: list[Pair]) -> tuple[list[Path], list[Path]]:
    """An unpaired training set made from pairs, as unsupervised papers evaluate: the rainy
    pictures of the even-numbered pairs and the clean pictures of the odd-numbered ones, so no
    scene is seen in both domains."""
    return [p.rainy for p in pairs[0::2]], [p.clean for p in pairs[1::2]]


VGG_ENTRY = "vgg19.imagenet"


def semantic_network(vgg: str | Path | None = None, offline: bool | None = None) -> tuple[VGGFeatures, str]:
    """The semantic loss's frozen VGG19 and where its weights came from: ``vgg`` (a
    safetensors or .pth state dict with torchvision's or timm's keys), else the manifest's
    ``vgg19.imagenet`` (bundled, cached or downloaded, sha256-checked). Raises UsageError with
    the way out (``--no-semantic``) when neither is available."""
    from derain_cli.errors import UsageError, WeightsError
    from derain_cli.weights.loading import read_state_dict
    from derain_cli.weights.manifest import load_manifest
    from derain_cli.weights.resolve import locate

    if vgg is not None:
        path, label = Path(vgg).expanduser(), str(vgg)
    else:
        entry = load_manifest().get(VGG_ENTRY)
        if entry is None:
            raise UsageError(f"the semantic loss needs VGG19 ImageNet weights and this installation declares no "
                             f"{VGG_ENTRY}: pass --vgg FILE (torchvision's vgg19 state dict) or --no-semantic")
        try:
            resolved = locate(entry, offline)
        except WeightsError as err:
            raise UsageError(f"{err}; or pass --vgg FILE, or --no-semantic to train without the semantic loss") from None
        path, label = resolved.path, f"{VGG_ENTRY} (sha256 {entry.sha256[:12]})"
    try:
        return VGGFeatures(read_state_dict(path)), label
    except (ValueError, RuntimeError) as err:  # a state dict of another network (keys or shapes)
        raise UsageError(f"{path}: not VGG19 weights ({str(err).splitlines()[0]})") from None


def _unwrap(net: nn.Module) -> LIR:
    return getattr(net, "module", net)


@contextmanager
def _frozen(*modules: nn.Module):
    """Parameters of ``modules`` left out of the graphs built inside (gradients still flow
    through the modules to their inputs)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class UnpairedObjective(Objective):
    """LIR's losses on a rainy stream and a clean stream (see the module docstring)."""

    name = "unpaired"

    pick_best = False  # unsupervised: validation pairs, if any, are watched, never used to choose weights

    def __init__(self, rainy: CropSampler, clean: CropSampler, dim: int, n_res: int, vgg: VGGFeatures | None = None,
                 seed: int = 0, weights: LIRWeights = LIRWeights(), lr: float = 1e-4, content_lr: float = 5e-5,
                 weight_decay: float = 1e-4, lr_step: int = 100_000) -> None:
        if rainy.patch_size < MIN_CROP or rainy.patch_size % 4:
            raise UsageError(f"LIR trains on crops of at least {MIN_CROP} px and a multiple of 4 (its image "
                             f"discriminators halve them four times); --patch-size {rainy.patch_size} will not do")
        self.rainy, self.clean, self.vgg, self.seed = rainy, clean, vgg, seed
        self.vgg_source = "given"
        self.lr, self.content_lr, self.lr_step = lr, content_lr, lr_step
        self.training = LIRTraining(dim, n_res, weights).train()
        self.image_opt = torch.optim.Adam(self.training.image_discriminator_parameters(), lr=lr, betas=BETAS,
                                          weight_decay=weight_decay)
        self.content_opt = torch.optim.Adam(self.training.dis_c.parameters(), lr=content_lr, betas=BETAS,
                                            weight_decay=weight_decay)

    @classmethod
    def from_folders(cls, rainy: str | Path, clean: str | Path, dim: int, n_res: int, **options) -> "UnpairedObjective":
        return cls.from_photos(find_photos(rainy), find_photos(clean), dim, n_res, **options)

    @classmethod
    def from_photos(cls, rainy: list[Path], clean: list[Path], dim: int, n_res: int, patch_size: int = 64,
                    batch_size: int = 16, seed: int = 0, vgg: VGGFeatures | None = None, warn=print,
                    **options) -> "UnpairedObjective":
        return cls(CropSampler(rainy, patch_size, batch_size, seed, 0, warn=warn),
                   CropSampler(clean, patch_size, batch_size, seed, 1, warn=warn),
                   dim, n_res, vgg, seed, **options)

    def batch_sizes(self) -> tuple[int, ...]:
        return (self.rainy.batch_size, self.clean.batch_size)

    def to(self, device: torch.device) -> None:
        self.training.to(device)
        if self.vgg is not None:
            self.vgg.to(device)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        noise_seed = ((self.seed * 1_000_003 + step) * 65_537 + rank) % (1 << 62)
        return {"rainy": self.rainy.batch(step, rank, world_size), "clean": self.clean.batch(step, rank, world_size),
                "step": torch.tensor(step), "noise_seed": torch.tensor(noise_seed)}

    def extra_modules(self) -> list[nn.Module]:
        """E_b, E_a^n and G_a: trained by the Trainer's optimiser with the derainer."""
        return self.training.generators()

    def adversary_parameters(self) -> list[nn.Parameter]:
        t = self.training
        return [*t.image_discriminator_parameters(), *t.dis_c.parameters()]

    def optimizer_options(self) -> dict:
        return {"betas": BETAS}

    def adversary_step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.discriminator_step(net, batch)

    @staticmethod
    def _noise(batch: dict[str, torch.Tensor]):
        """The step's code noise: the same sequence for every call with this batch."""
        device = batch["rainy"].device
        g = torch.Generator(device=device).manual_seed(int(batch["noise_seed"]))
        return lambda t: torch.randn(t.shape, generator=g, device=t.device, dtype=t.dtype)

    def _set_learning_rates(self, step: int) -> None:
        factor = 0.5 ** (step // self.lr_step)
        for opt, base in ((self.image_opt, self.lr), (self.content_opt, self.content_lr)):
            for group in opt.param_groups:
                group["lr"] = base * factor

    def discriminator_step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """D_c ``CONTENT_UPDATES`` times, then D_a and D_b once, on this batch; their losses
        (before each update). Generator parameters receive no gradient. The authors' image
        discriminator update also adds D_c's loss to its total; here D_c learns only in its
        own three updates (``d_content`` is the first one's loss)."""
        t, x_a, x_b = self.training, batch["rainy"], batch["clean"]
        self._set_learning_rates(int(batch["step"]))
        with torch.no_grad():
            codes = t.translate(_unwrap(net), x_a, x_b, self._noise(batch), cycle=False)
        content_losses = []
        for _ in range(CONTENT_UPDATES):
            self.content_opt.zero_grad(set_to_none=True)
            loss = t.weights.gan * t.content_discriminator_loss(codes["h_a"], codes["h_b"])
            loss.backward()
            average_gradients(list(t.dis_c.parameters()))
            nn.utils.clip_grad_norm_(t.dis_c.parameters(), CONTENT_CLIP)
            self.content_opt.step()
            content_losses.append(loss.detach())
        self.image_opt.zero_grad(set_to_none=True)
        image = t.image_discriminator_losses(x_a, x_b, codes["x_ba"], codes["x_ab"])
        image["loss"].backward()
        average_gradients(t.image_discriminator_parameters())
        self.image_opt.step()
        return {"d_loss": image["loss"].detach(), "d_a": image["d_a"], "d_b": image["d_b"],
                "d_content": content_losses[0]}

    def losses(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The generator terms (``"loss"`` for the Trainer's optimiser); the discriminators'
        parameters are kept out of the graph, so only generators receive gradients."""
        t = self.training
        with _frozen(t.dis_a, t.dis_b, t.dis_c):
            return t.generator_losses(_unwrap(net), batch["rainy"], batch["clean"], self._noise(batch), self.vgg)

    def state_dict(self) -> dict:
        return {"networks": self.training.state_dict(), "image_opt": self.image_opt.state_dict(),
                "content_opt": self.content_opt.state_dict(), "semantic": self.vgg is not None}

    def load_state_dict(self, state: dict) -> None:
        semantic = state.get("semantic", False)
        if semantic != (self.vgg is not None):
            raise UsageError(f"--resume: the run was started {'with' if semantic else 'without'} the semantic loss; "
                             f"resume it {'without --no-semantic' if semantic else 'with --no-semantic'}")
        self.training.load_state_dict(state["networks"])
        self.image_opt.load_state_dict(state["image_opt"])
        self.content_opt.load_state_dict(state["content_opt"])

    def describe(self) -> dict[str, str]:
        t, w = self.training, self.training.weights
        semantic = (f"on ({w.vgg} x VGG19 conv4_1, instance-normalised; weights {self.vgg_source})"
                    if self.vgg is not None else "off (--no-semantic)")
        return {
            "objective": (f"LIR (Du et al. CVPR 2020), unpaired: dim {t.dim}, {t.n_res} residual blocks; "
                          f"{w.gan} LSGAN (images, content codes) + {w.recon} L1 reconstruction + {w.cycle} L1 "
                          f"cycle + {w.kl} code prior + {w.bgm} background guidance (Gaussian 5/9/15, sigma 25)"),
            "semantic loss": semantic,
            "discriminators": (f"D_c x{CONTENT_UPDATES} per step (Adam {self.content_lr}, clip {CONTENT_CLIP}), "
                               f"D_a/D_b x1 (Adam {self.lr}), betas {BETAS}, x0.5 every {self.lr_step} steps"),
            "weights kept": "the last step's (unsupervised: validation pairs, if any, are watched, never used to choose)",
            "data": (f"{len(self.rainy)} rainy + {len(self.clean)} clean photos (unpaired); "
                     f"{self.rainy.batch_size} + {self.clean.batch_size} crops of {self.rainy.patch_size}px per step"),
        }
