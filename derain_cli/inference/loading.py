"""A method by name with verified weights, built and placed on a device: the one way every
layer above (the API, a distillation teacher, finetune-real's start and harm guard) gets a
PyTorch network ready to derain."""

from __future__ import annotations

from collections.abc import Callable

from derain_cli.inference.checkpoints import build_network
from derain_cli.inference.engine import InferenceEngine
from derain_cli.inference.tiling import check_tile
from derain_cli.methods import get_method
from derain_cli.weights.manifest import split_name
from derain_cli.weights.resolve import ResolvedWeights, resolve

DEFAULT_METHOD = "lpnet"


def load_engine(method: str | None = None, weights: str | None = None, device: str = "auto", precision: str = "auto",
                tile: int | None = None, offline: bool | None = None,
                log: Callable[[str], None] | None = None) -> tuple[InferenceEngine, ResolvedWeights]:
    """``method`` (``lpnet`` or ``lpnet.rain100h``; default lpnet) with ``weights`` resolved and
    verified, in an engine on ``device``. UsageError for an unknown method or option,
    WeightsError when no usable checkpoint is found (never random weights)."""
    spec = get_method(split_name(method or DEFAULT_METHOD)[0])
    check_tile(spec, tile)
    resolved = resolve(method or DEFAULT_METHOD, weights, offline)
    engine = InferenceEngine(build_network(spec, resolved), spec, device=device, precision=precision, tile=tile, log=log)
    return engine, resolved
