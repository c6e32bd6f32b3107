"""Convolutions with their activation fused in (oneDNN post-ops), for CPU inference.

On the CPU a 16-channel activation map is memory-bound: a separate LeakyReLU pass re-reads
and re-writes what the convolution just wrote. oneDNN applies the activation as the
convolution writes its output. Measured on LPNet (2-core EPYC, AVX2, 1553x2049 tile):
12-15 % faster, outputs within 3e-7 (docs/performance.md). The op is PyTorch's own
(``torch.ops.mkldnn._convolution_pointwise``, what torch.compile emits on CPUs); where a
build lacks it, or when training, tracing or in another precision, the plain ops run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from derain_cli.kernels.blocks import blocking_applies


def _pointwise_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_CONV_POINTWISE = _pointwise_op()


def fusion_applies(x: torch.Tensor) -> bool:
    """CPU float32 inference with oneDNN (same conditions as cache blocking, plus the dtype)."""
    return _CONV_POINTWISE is not None and x.dtype == torch.float32 and blocking_applies(x)


# the plain ops a fused activation stands for (the in-place LeakyReLU is autograd-safe
# after a convolution, and saves a pass where no fusion applies)
_PLAIN = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "leaky_relu": lambda y, slope: F.leaky_relu_(y, slope),
}


def conv_act(conv: nn.Conv2d, x: torch.Tensor, act: str, *scalars: float) -> torch.Tensor:
    """``act(conv(x), *scalars)`` for act in relu, leaky_relu (slope), sigmoid, tanh; fused
    into the convolution where ``fusion_applies(x)``."""
    if not fusion_applies(x):
        return _PLAIN[act](conv(x), *scalars)
    return _CONV_POINTWISE(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        act, list(scalars), "",
    )
