"""LIR: Du, Chen, Yang, "Learning Invariant Representation for Unsupervised Image Restoration",
CVPR 2020, trained on unpaired rainy (domain a) and clean (domain b) photos.

Built from the facts of the authors' code (config ``unit_noise2clear-bn.yaml``), written anew:

- ``ContentEncoder`` (E_a^c for rainy, E_b for clean, separate weights): conv7x7 3->d,
  two conv4x4 stride 2 (d->2d->4d), each followed by batch norm and ReLU, then ``n_res``
  residual blocks; the content code has 4d channels at H/4 x W/4.
- ``RainEncoder`` (E_a^n): the same three downsampling convolutions and a plain 1x1 conv: a
  spatial rain map of 4d channels at H/4, concatenated to a content code for G_a.
- ``Decoder`` (G_a from 8d channels, G_b from 4d): ``n_res`` residual blocks, twice
  [nearest x2 upsampling, conv5x5 halving the channels, layer norm, ReLU], conv7x7 to RGB, tanh.
- Discriminators (training only): multi-scale patch discriminators on images (D_a, D_b; they
  need crops of at least 64x64, the paper's size) and a discriminator on content codes (D_c),
  all least-squares GANs.

Every convolution pads by reflection. The derainer is ``LIR`` = G_b(E_a^c(x)): no residual
connection, tanh output clipped to [0, 1]. Like the authors' code, images enter the networks in
[0, 1] (not the [-1, 1] tanh's range): the clean decoder learns to produce [0, 1] pictures.

Deviation from the authors' code, on purpose: their decoder's layer norm normalises each sample
over C x H x W, so every output pixel depends on statistics of the whole picture and tiles
would disagree with the whole image. Here the layer norm normalises over the channels at each
pixel (per-position statistics, per-channel affine weight and bias), so the network is
tileable: its output at a pixel depends only on its receptive field (``receptive_radius``).
Their layer norm's gamma starts uniform in [0, 1); here it starts at one (the usual choice).

Building blocks for the training objective (derain_cli/training/objectives/unpaired.py) live here too:
``LIRTraining`` (E_b, E_a^n, G_a, D_a, D_b, D_c and the loss terms), ``VGGFeatures`` (the
semantic loss's frozen VGG19 up to conv4_1, from a state dict given to it) and
``GaussianBlur`` (the background-guidance loss's fixed blurs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DIM, N_RES = 64, 4  # the paper's configuration (256-channel codes, 4 residual blocks)
SMALL_DIM, SMALL_N_RES = 12, 2  # CPU size (lir-small): a step of 4 64x64 crops ~0.9 s on 2 cores, 1.5 s on 1


def conv(cin: int, cout: int, k: int, stride: int = 1, norm: str | None = None, act: str | None = None,
         slope: float = 0.2) -> nn.Sequential:
    """Reflection padding (k - 1) // 2 (1 for the 4x4 stride-2 convs, as the authors' code),
    convolution with bias, optional norm ("bn" or "ln") and activation ("relu" or "lrelu")."""
    layers: list[nn.Module] = [nn.ReflectionPad2d((k - 1) // 2), nn.Conv2d(cin, cout, k, stride)]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(cout))
    elif norm == "ln":
        layers.append(PixelLayerNorm(cout))
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "lrelu":
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return nn.Sequential(*layers)


class PixelLayerNorm(nn.Module):
    """Layer norm over the channels at each pixel of (B, C, H, W), with per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.channels, self.eps = channels, eps  # a plain int: exports trace it as a constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, plus the input (no activation after the sum)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels, 3, norm="bn", act="relu"),
                                  conv(channels, channels, 3, norm="bn"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _downsampling(dim: int) -> list[nn.Module]:
    return [conv(3, dim, 7, norm="bn", act="relu"), conv(dim, 2 * dim, 4, 2, norm="bn", act="relu"),
            conv(2 * dim, 4 * dim, 4, 2, norm="bn", act="relu")]


class ContentEncoder(nn.Sequential):
    """(B, 3, H, W) -> content code (B, 4*dim, H/4, W/4); H and W multiples of 4."""

    def __init__(self, dim: int = DIM, n_res: int = N_RES) -> None:
        super().__init__(*_downsampling(dim), *(ResBlock(4 * dim) for _ in range(n_res)))


class RainEncoder(nn.Sequential):
    """(B, 3, H, W) rainy image -> rain map (B, 4*dim, H/4, W/4)."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__(*_downsampling(dim), nn.Conv2d(4 * dim, 4 * dim, 1))


class Decoder(nn.Sequential):
    """(B, width, h, w) code -> (B, 3, 4h, 4w) image in (-1, 1): residual blocks at ``width``,
    two upsampling stages halving the channels, conv7x7 to RGB, tanh."""

    def __init__(self, width: int, n_res: int = N_RES) -> None:
        layers: list[nn.Module] = [ResBlock(width) for _ in range(n_res)]
        for c in (width, width // 2):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(c, c // 2, 5, norm="ln", act="relu")]
        layers += [conv(width // 4, 3, 7), nn.Tanh()]
        super().__init__(*layers)


def init_generator(module: nn.Module) -> None:
    """Kaiming normal (fan in) convolution weights, zero biases (the authors' 'kaiming')."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            nn.init.zeros_(m.bias)


def init_discriminator(module: nn.Module) -> None:
    """N(0, 0.02) convolution weights, zero biases (the authors' 'gaussian')."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


def receptive_radius(n_res: int) -> int:
    """Pixels an output pixel of ``LIR`` can see on each side: 4 n_res 3x3 convs at H/4 (4
    full-resolution pixels each) plus 18 for the rest (measured as the support of the gradient of
    one output pixel, the widest of the four phases; tests/test_lir.py checks it)."""
    return 16 * n_res + 18


class LIR(nn.Module):
    """The derainer: G_b(E_a^c(x)). Input (B, 3, H, W) rainy image in [0, 1]; output the
    derained image in [0, 1]. Sizes that are not multiples of 4 are padded (reflect) and the
    result cropped; the engine already pads to ``size_multiple=4``."""

    def __init__(self, dim: int = DIM, n_res: int = N_RES) -> None:
        super().__init__()
        self.dim, self.n_res = dim, n_res
        self.content = ContentEncoder(dim, n_res)  # E_a^c
        self.decoder = Decoder(4 * dim, n_res)  # G_b
        init_generator(self)

    def forward(self, rainy: torch.Tensor) -> torch.Tensor:
        h, w = rainy.shape[-2:]
        pad_h, pad_w = (4 - h % 4) % 4, (4 - w % 4) % 4  # no negative operands: ONNX's Mod differs
        x = F.pad(rainy, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else rainy
        return self.decoder(self.content(x))[..., :h, :w].clamp(0.0, 1.0)

    def training_loss(self, rainy: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """L1 of the clean decoder's output on paired data (not the paper's training, which is
        unpaired: derain_cli/training/objectives/unpaired.py); lets ``derain train`` fine-tune LIR on pairs."""
        return {"loss": F.l1_loss(self.decoder(self.content(rainy)), clean)}


class LIRSmall(LIR):
    """LIR at CPU size (``SMALL_DIM``, ``SMALL_N_RES``)."""

    def __init__(self) -> None:
        super().__init__(SMALL_DIM, SMALL_N_RES)


# -- training-only parts -------------------------------------------------------------------

class ImageDiscriminator(nn.Module):
    """Multi-scale patch discriminator: ``scales`` copies of the picture, each halved by
    AvgPool2d(3, 2, 1, count_include_pad=False); per scale conv4x4 s2 3->d and three more
    conv4x4 s2 doubling to 8d, LeakyReLU 0.2, no norm; conv1x1 to one logit per patch."""

    def __init__(self, dim: int = DIM, scales: int = 3) -> None:
        super().__init__()
        self.nets = nn.ModuleList(self._scale(dim) for _ in range(scales))
        self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @staticmethod
    def _scale(dim: int) -> nn.Sequential:
        widths = [3, dim, 2 * dim, 4 * dim, 8 * dim]
        return nn.Sequential(*(conv(a, b, 4, 2, act="lrelu") for a, b in zip(widths, widths[1:])),
                             nn.Conv2d(8 * dim, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for net in self.nets:
            outputs.append(net(x))
            x = self.down(x)
        return outputs


class ContentDiscriminator(nn.Sequential):
    """Content code (B, C, h, w) -> (B, 1, 1, 1): four [reflect pad 1, conv3x3 s2, LeakyReLU 0.01],
    global average pooling, conv1x1."""

    def __init__(self, channels: int) -> None:
        super().__init__(*(conv(channels, channels, 3, 2, act="lrelu", slope=0.01) for _ in range(4)),
                         nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 1, 1))


def gaussian_kernel(k: int, sigma: float) -> np.ndarray:
    """(k,) float64 Gaussian, sum 1: what cv2.getGaussianKernel(k, sigma) returns (for sigma > 0)."""
    x = np.arange(k, dtype=np.float64) - (k - 1) / 2
    g = np.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


class GaussianBlur(nn.Module):
    """Fixed depthwise k x k Gaussian (outer product of ``gaussian_kernel``), reflect padding."""

    def __init__(self, k: int, sigma: float = 25.0, channels: int = 3) -> None:
        super().__init__()
        g = gaussian_kernel(k, sigma)
        kernel = torch.tensor(np.outer(g, g), dtype=torch.float32)
        self.register_buffer("kernel", kernel.expand(channels, 1, k, k).clone(), persistent=False)
        self.pad = (k - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.conv2d(x, self.kernel.to(x.dtype), groups=x.shape[1])


VGG19_TO_CONV4_1 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """Frozen VGG19 up to conv4_1 before its ReLU (torchvision's ``vgg19().features[:20]``).

    Built from ``state_dict`` (torchvision's keys, ``features.N.weight`` or ``N.weight``; keys
    of layers past conv4_1 are ignored) -- nothing is downloaded here. Input (B, 3, H, W) in
    [0, 1], normalised with torchvision's ImageNet mean and std because the weights are
    torchvision's (the authors' Caffe-style BGR x 255 minus means suits Caffe weights only).
    """

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG19_TO_CONV4_1:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers[:-1])  # up to conv4_1, before its ReLU
        names = set(self.features.state_dict())
        ours = {}
        for key, value in state_dict.items():
            key = key.removeprefix("features.")
            if key.split(".")[0].isdigit() and int(key.split(".")[0]) < len(self.features):
                ours[key] = value
        missing = names - set(ours)
        if missing:
            raise ValueError(f"VGG19 state dict lacks {sorted(missing)}")
        self.features.load_state_dict(ours, strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always inference: no layer depends on it, but stay explicit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


@dataclass(frozen=True)
class LIRWeights:
    """Loss weights of ``unit_noise2clear-bn.yaml``."""

    gan: float = 1.0  # image GANs and the content GAN
    recon: float = 10.0  # within-domain reconstruction
    cycle: float = 10.0  # cross-domain cycle reconstruction
    kl: float = 0.01  # mean square of the codes (UNIT's VAE prior)
    vgg: float = 1.0  # semantic (perceptual) loss
    bgm: float = 5.0  # background guidance: blurred translations match blurred inputs


BGM_KERNELS = ((5, 0.25), (9, 0.5), (15, 1.0))  # (size, weight); sigma 25


def lsgan_generator(outputs: list[torch.Tensor], target: float = 1.0) -> torch.Tensor:
    return sum(torch.mean((o - target) ** 2) for o in outputs)


def lsgan_discriminator(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.mean(f ** 2) + torch.mean((r - 1) ** 2) for f, r in zip(fake, real))


def _msq(x: torch.Tensor) -> torch.Tensor:
    return torch.mean(x ** 2)


class LIRTraining(nn.Module):
    """Everything of LIR besides the derainer, for one configuration (``dim``, ``n_res``).

    Generators: ``content_b`` (E_b), ``rain_a`` (E_a^n), ``decoder_a`` (G_a, reads [content,
    rain] = 8 * dim channels). Discriminators: ``dis_a``, ``dis_b`` (images), ``dis_c``
    (content codes). The derainer ``LIR`` (E_a^c and G_b) is passed to the loss methods.
    """

    def __init__(self, dim: int = DIM, n_res: int = N_RES, weights: LIRWeights = LIRWeights()) -> None:
        super().__init__()
        self.dim, self.n_res, self.weights = dim, n_res, weights
        self.content_b = ContentEncoder(dim, n_res)
        self.rain_a = RainEncoder(dim)
        self.decoder_a = Decoder(8 * dim, n_res)
        self.dis_a, self.dis_b = ImageDiscriminator(dim), ImageDiscriminator(dim)
        self.dis_c = ContentDiscriminator(4 * dim)
        self.blurs = nn.ModuleList(GaussianBlur(k) for k, _ in BGM_KERNELS)
        for part in self.generators():
            init_generator(part)
        for part in (self.dis_a, self.dis_b, self.dis_c):
            init_discriminator(part)

    def generators(self) -> list[nn.Module]:
        return [self.content_b, self.rain_a, self.decoder_a]

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for part in self.generators() for p in part.parameters()]

    def image_discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.dis_a.parameters(), *self.dis_b.parameters()]

    def translate(self, lir: LIR, x_a: torch.Tensor, x_b: torch.Tensor, noise=None,
                  cycle: bool = True) -> dict[str, torch.Tensor]:
        """Codes, translations, reconstructions and cycles of a rainy batch ``x_a`` and a clean
        batch ``x_b`` (both in [0, 1]). ``noise(t)`` returns the Gaussian noise added to code
        ``t`` before decoding (UNIT's VAE; one draw per encoding, in a fixed order); None adds
        none. ``cycle=False`` stops after the codes and translations (what discriminators need)."""
        noise = noise or torch.zeros_like

        def with_noise(t: torch.Tensor) -> torch.Tensor:
            return t + noise(t)

        out = {"h_a": lir.content(x_a), "h_b": self.content_b(x_b), "z": self.rain_a(x_a)}
        h_a, h_b, z = with_noise(out["h_a"]), with_noise(out["h_b"]), with_noise(out["z"])
        out["x_ba"] = self.decoder_a(torch.cat([h_b, z], 1))  # clean content, rain of x_a
        out["x_ab"] = lir.decoder(h_a)  # the derained x_a
        if not cycle:
            return out
        out["x_a_rec"] = self.decoder_a(torch.cat([h_a, z], 1))
        out["x_b_rec"] = lir.decoder(h_b)
        out["h_b_cyc"], out["z_cyc"] = lir.content(out["x_ba"]), self.rain_a(out["x_ba"])
        out["h_a_cyc"] = self.content_b(out["x_ab"])
        out["x_aba"] = self.decoder_a(torch.cat([with_noise(out["h_a_cyc"]), with_noise(out["z_cyc"])], 1))
        out["x_bab"] = lir.decoder(with_noise(out["h_b_cyc"]))
        return out

    def generator_terms(self, lir: LIR, x_a: torch.Tensor, x_b: torch.Tensor, noise=None,
                        vgg: VGGFeatures | None = None) -> dict[str, torch.Tensor]:
        """The generators' loss terms, unweighted and attached to the graph. ``vgg`` None: no
        semantic term. The content term pulls D_c towards 0.5 on both domains' codes."""
        t = self.translate(lir, x_a, x_b, noise)
        terms = {
            "gan": lsgan_generator(self.dis_a(t["x_ba"])) + lsgan_generator(self.dis_b(t["x_ab"])),
            "content_gan": lsgan_generator([self.dis_c(t["h_a"])], 0.5) + lsgan_generator([self.dis_c(t["h_b"])], 0.5),
            "recon": F.l1_loss(t["x_a_rec"], x_a) + F.l1_loss(t["x_b_rec"], x_b),
            "cycle": F.l1_loss(t["x_aba"], x_a) + F.l1_loss(t["x_bab"], x_b),
            "kl": _msq(t["h_a"]) + _msq(t["h_b"]) + _msq(t["z"]),
            "kl_cycle": _msq(t["h_a_cyc"]) + _msq(t["h_b_cyc"]) + _msq(t["z_cyc"]),
            "bgm": sum(weight * (F.l1_loss(blur(t["x_ab"]), blur(x_a)) + F.l1_loss(blur(t["x_ba"]), blur(x_b)))
                       for blur, (_, weight) in zip(self.blurs, BGM_KERNELS)),
        }
        if vgg is not None:
            terms["vgg"] = self.semantic_loss(vgg, t["x_ba"], x_b) + self.semantic_loss(vgg, t["x_ab"], x_a)
        return terms

    def generator_losses(self, lir: LIR, x_a: torch.Tensor, x_b: torch.Tensor, noise=None,
                         vgg: VGGFeatures | None = None) -> dict[str, torch.Tensor]:
        """The weighted sum of ``generator_terms`` under ``"loss"``, the terms (detached) beside
        it. Only the generators should be stepped on it: the authors' generator update also
        steps D_c's optimiser on the content term, which trains D_c to be fooled -- a bug, not
        reproduced."""
        w, terms = self.weights, self.generator_terms(lir, x_a, x_b, noise, vgg)
        loss = (w.gan * (terms["gan"] + terms["content_gan"]) + w.recon * terms["recon"] + w.cycle * terms["cycle"]
                + w.kl * (terms["kl"] + terms["kl_cycle"]) + w.bgm * terms["bgm"])
        if "vgg" in terms:
            loss = loss + w.vgg * terms["vgg"]
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    @staticmethod
    def semantic_loss(vgg: VGGFeatures, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE between instance-normalised conv4_1 features of ``image`` and ``target``."""
        return F.mse_loss(F.instance_norm(vgg(image)), F.instance_norm(vgg(target)))

    def image_discriminator_losses(self, x_a: torch.Tensor, x_b: torch.Tensor, x_ba: torch.Tensor,
                                   x_ab: torch.Tensor) -> dict[str, torch.Tensor]:
        """LSGAN losses of D_a (real x_a, fake x_ba) and D_b (real x_b, fake x_ab); the fakes
        are detached here."""
        d_a = lsgan_discriminator(self.dis_a(x_ba.detach()), self.dis_a(x_a))
        d_b = lsgan_discriminator(self.dis_b(x_ab.detach()), self.dis_b(x_b))
        return {"loss": self.weights.gan * (d_a + d_b), "d_a": d_a.detach(), "d_b": d_b.detach()}

    def content_discriminator_loss(self, h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
        """LSGAN loss of D_c: rainy codes -> 0, clean codes -> 1 (codes detached)."""
        return lsgan_discriminator([self.dis_c(h_a.detach())], [self.dis_c(h_b.detach())])

