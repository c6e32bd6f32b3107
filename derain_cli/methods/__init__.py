"""The registry: every method derain knows, with the contract the engine reads.

Adding a method means adding one module under ``derain_cli/methods/`` and one entry to
``METHODS``. Nothing is discovered by scanning files. Importing this module does not import
torch; a network's module is imported only when it is built.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field, replace

from derain_cli.errors import UsageError


DEFAULT_TILE = 512  # pixels; a method whose local parts run in cached blocks declares larger


@dataclass(frozen=True)
class TrainingRecipe:
    """The paper's training settings, the defaults of ``derain train`` (all overridable)."""

    lr: float
    batch_size: int
    patch_size: int
    iterations: int
    weight_decay: float = 0.0
    source: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """What the engine needs to know about a network, without knowing which one it is.

    Attributes:
        name: registry name, the ``method`` of ``method.tag`` weight names.
        network: ``"module:Class"`` of the ``torch.nn.Module`` to build (no arguments).
        summary: one line for ``derain models list``.
        paper: citation of the paper the network follows.
        size_multiple: tiles start on multiples of this, and inputs are padded (reflect) to
            a size of ``size_multiple * k + size_offset``.
        size_offset: see size_multiple. LPNet uses 16k + 1: every pyramid level then has odd
            size, as the Rain100 images have, so padding and tiling keep the authors' phase.
        overlap: pixels of context a tile needs on each side so that its blended seams match
            whole-image output (derived from the receptive field; see docs/methods.md).
        half_safe: whether float16 inference keeps quality (used on GPU only).
        bf16_safe: whether bfloat16 inference keeps quality (measured on the test sets);
            ``--precision auto`` then uses it on CPUs with native bf16.
        default_tag: the tag a bare ``name`` resolves to (``lpnet`` -> ``lpnet.rain100l``).
        outputs: names of the maps the network returns; ``image`` is the derained picture,
            others (a rain mask, say) have one channel in [0, 1] and can be saved alongside.
        recipe: the paper's training settings. The network itself provides
            ``training_loss(rainy, clean) -> dict`` with the paper's loss under ``"loss"``.
        tileable: False when the output depends on whole-image statistics (DDN's batch
            norm uses the image's own mean and variance): such pictures are never tiled.
        bf16_training: whether bf16 autocast training follows the fp32 loss curve (measured,
            docs/performance.md); ``derain train --precision auto`` then uses it on CUDA.
        training: "paired" (``derain train DATA`` on rainy/clean pairs) or "unpaired" (trained
            from unrelated rainy and clean photos, ``derain train --rainy DIR --clean DIR``;
            such a network still fine-tunes on pairs through its ``training_loss``).
        tile: the default tile size in pixels (``--tile``): 512, or larger for a network whose
            local parts run in cached blocks on the CPU (engine/blocks.py), where larger tiles
            mean less overlap to recompute at the same memory bound.
        feature_stage: the sub-module (dotted name) whose output is the network's early
            feature representation, where ``finetune-real --algorithm moments`` matches the
            statistics of synthetic and real rain (its first call in a forward pass);
            None: the method cannot be adapted that way.
    """

    name: str
    network: str
    summary: str
    paper: str
    size_multiple: int
    size_offset: int
    overlap: int
    half_safe: bool
    default_tag: str
    recipe: TrainingRecipe
    outputs: tuple[str, ...] = field(default=("image",))
    tileable: bool = True
    feature_stage: str | None = None
    bf16_training: bool = False
    bf16_safe: bool = False
    training: str = "paired"
    cpu_size: str | None = None  # the method's smaller configuration for CPUs (``derain train`` says so there)
    tile: int = DEFAULT_TILE
    sized_by_loops: str | None = None  # why exports need a fixed size: tracing unrolls these loops for one size

    def require_outputs(self, names: tuple[str, ...]) -> None:
        """Raise UsageError unless the network returns every map in ``names``."""
        for name in names:
            if name not in self.outputs:
                able = ", ".join(m.name for m in METHODS if name in m.outputs) or "none"
                raise UsageError(f"{self.name} predicts no {name} (methods that do: {able})")

    def build(self):
        """Instantiate the network with its paper configuration (random weights)."""
        module_name, class_name = self.network.split(":")
        return getattr(importlib.import_module(module_name), class_name)()

_LIR_RECIPE = TrainingRecipe(
    lr=1e-4, batch_size=16, patch_size=64, iterations=300_000, weight_decay=1e-4,
    source="Du et al. 2020 (unit_noise2clear-bn.yaml): Adam 1e-4, betas (0, 0.9), weight decay 1e-4, x0.5 every "
    "100k, batch 16, 64x64 crops + horizontal flip, 300k iterations",
)

# LIR's overlaps: the engine weights the outer quarter of an overlap 0 and ramps over the middle
# half, so seams are exact once overlap >= 4 x receptive radius (lir 82 px, lir-small 50 px); far
# less suffices in practice (measured at random initialisation, docs/methods.md): 2.5 r and 3 r.
_LIR = MethodSpec(
    name="lir",
    network="derain_cli.methods.lir:LIR",
    summary="Unsupervised: trained from unpaired rainy and clean photos (invariant content codes, 64 wide); GPU size",
    paper="Du, Chen, Yang, Learning Invariant Representation for Unsupervised Image Restoration, CVPR 2020",
    size_multiple=4,
    size_offset=0,
    overlap=204,
    half_safe=False,
    default_tag="rain100l",
    feature_stage="content",
    training="unpaired",
    cpu_size="lir-small",
    recipe=_LIR_RECIPE,
)

_LPNET = MethodSpec(
    name="lpnet",
    network="derain_cli.methods.lpnet:LPNet",
    summary="Lightweight pyramid network (7,548 parameters), fast on CPU",
    paper="Fu et al., Lightweight Pyramid Networks for Image Deraining, IEEE TNNLS 2019",
    size_multiple=16,
    size_offset=1,
    overlap=96,
    half_safe=True,
    bf16_safe=True,  # Rain100L with the authors' weights: 33.40 dB in bf16, 33.42 in fp32
    default_tag="real",  # distilled from spanet.spa on real photos: the default since issue 21 (docs/real_rain.md)
    tile=2048,  # subnets run in cached blocks on the CPU; 50 MP peak RSS measured in performance.md
    feature_stage="subnets.0.features",
    bf16_training=True,  # bf16 autocast loss curve within 0.07 % of fp32's (performance.md)
    recipe=TrainingRecipe(
        lr=1e-3, batch_size=10, patch_size=80, iterations=300_000,
        source="Fu et al. 2019, Sec. IV-A: Adam, learning rate 0.001, batch 10, 80x80 patches, 3e5 iterations",
    ),
)

METHODS: tuple[MethodSpec, ...] = (
    _LPNET,
    replace(
        _LPNET, name="lpnet-wide", network="derain_cli.methods.lpnet:LPNetWide", default_tag="real",
        summary="LPNet with wider levels (24, 12, 6, 4, 2 features; 2.2x the arithmetic): a student for distillation",
        paper="Fu et al. TNNLS 2019 (LPNet), widened by derain as a distillation student",
    ),
    MethodSpec(
        name="prenet",
        network="derain_cli.methods.prenet:PReNet",
        summary="Progressive recurrent network (6 stages, LSTM, 168,963 parameters); loads the authors' checkpoints",
        paper="Ren et al., Progressive Image Deraining Networks: A Better and Simpler Baseline, CVPR 2019",
        size_multiple=1,
        size_offset=0,
        overlap=96,
        half_safe=False,
        default_tag="rain100l",
        tile=1024,  # stages run in cached blocks on the CPU; 1024 px keeps the LSTM state at 0.3 GB
        feature_stage="conv0",
        bf16_training=True,  # bf16 autocast loss curve within 0.07 % of fp32's (performance.md)
        recipe=TrainingRecipe(
            lr=1e-3, batch_size=18, patch_size=100, iterations=16_700,
            source="Ren et al. 2019: Adam 1e-3 (x0.2 at epochs 30/50/80), batch 18, 100x100 patches, 100 epochs, negative SSIM",
        ),
    ),
    MethodSpec(
        name="ddn",
        network="derain_cli.methods.ddn:DDN",
        summary="Deep detail network (57,369 parameters): guided-filter detail layer, negative residual; SIRR's backbone",
        paper="Fu et al., Removing Rain from Single Images via a Deep Detail Network, CVPR 2017",
        size_multiple=1,
        size_offset=0,
        overlap=0,
        half_safe=False,
        default_tag="rain100l",
        tileable=False,
        feature_stage="norms.0",
        bf16_training=True,  # bf16 autocast loss curve within 0.07 % of fp32's (performance.md)
        recipe=TrainingRecipe(
            lr=1e-3, batch_size=20, patch_size=64, iterations=210_000,
            source="Fu et al. 2017: batch 20, 64x64 patches, 210k iterations, MSE; the paper's SGD (lr 0.1, /10 at "
            "100k and 200k) is replaced by derain's Adam 1e-3",
        ),
    ),
    MethodSpec(
        name="jorder",
        network="derain_cli.methods.jorder:JORDER",
        summary="Joint rain detection and removal (dilated context, 2 recurrences); predicts a rain mask",
        paper="Yang et al., Deep Joint Rain Detection and Removal from a Single Image, CVPR 2017",
        size_multiple=1,
        size_offset=0,
        overlap=48,
        half_safe=False,
        default_tag="rain100l",
        outputs=("image", "mask"),
        feature_stage="head",
        bf16_training=True,  # bf16 autocast loss curve within 0.07 % of fp32's (performance.md)
        recipe=TrainingRecipe(
            lr=1e-4, batch_size=16, patch_size=64, iterations=100_000,
            source="Yang et al. 2017 train on 64x64 patches; optimizer settings are derain's choice (Adam 1e-4, "
            "batch 16), see docs/methods.md",
        ),
    ),
    MethodSpec(
        name="msdn",
        network="derain_cli.methods.msdn:MSDN",
        summary="Multi-scale de-raining network (32 channels, 3 scales, dense units); backbone of feature-statistics matching",
        paper="Qiu et al., semi-supervised image deraining with feature statistics matching, Journal of Computer Applications 2022",
        size_multiple=4,
        size_offset=0,
        overlap=128,
        half_safe=False,
        default_tag="rain100l",
        feature_stage="transform",
        bf16_training=True,  # bf16 autocast loss curve within 0.07 % of fp32's (performance.md)
        recipe=TrainingRecipe(
            lr=5e-4, batch_size=16, patch_size=64, iterations=100_000,
            source="Qiu et al. 2022: Adam, learning rate 5e-4, batch 16, 64x64 patches (iterations not stated; derain's choice)",
        ),
    ),
    MethodSpec(
        name="spanet",
        network="derain_cli.methods.spanet:SPANet",
        summary="Spatial attentive network trained on REAL rain (SPA-Data; 283,716 parameters): IRNN attention along whole rows and columns",
        paper="Wang et al., Spatial Attentive Single-Image Deraining with a High Quality Real Rain Dataset, CVPR 2019",
        size_multiple=1,
        size_offset=0,
        overlap=0,
        half_safe=False,
        default_tag="spa",
        tileable=False,  # its scans cross whole rows and columns: tiles differ by up to 200 levels (methods.md)
        sized_by_loops="its IRNN scans step along every row and column",
        outputs=("image", "mask"),
        feature_stage="conv_in.0",
        recipe=TrainingRecipe(
            lr=5e-3, batch_size=16, patch_size=256, iterations=40_000,
            source="Wang et al. 2019 (the authors' main.py): Adam 5e-3 (x0.1 at 30k), batch 16, 256 px random resized "
            "crops, 40k iterations, L1 + (1 - SSIM) + MSE of the attention mask against the rain mask",
        ),
    ),
    _LIR,
    replace(_LIR, name="lir-small", network="derain_cli.methods.lir:LIRSmall", overlap=152, cpu_size=None,
            summary="LIR at CPU size (12 wide, 2 residual blocks): unpaired training on a CPU"),
)


def list_methods() -> tuple[MethodSpec, ...]:
    return METHODS


def get_method(name: str) -> MethodSpec:
    """Look a method up by name; an unknown name raises UsageError naming the closest match."""
    by_name = {spec.name: spec for spec in METHODS}
    if name in by_name:
        return by_name[name]
    known = ", ".join(sorted(by_name))
    close = difflib.get_close_matches(name, by_name, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UsageError(f"unknown method '{name}'.{hint} Known methods: {known}.")
