"""SPANet's four-direction IRNN scan (Wang et al. CVPR 2019), on any device.

For every channel c and direction d the authors' CUDA kernel computes, at each pixel, a
recurrence along its row or column that starts at the image's edge::

    h = relu(x[edge]);  then for each next pixel i up to this one:  h = relu(h * w[d, c] + b[d, c] + x[i])

"right" starts at column 0, "left" at the last column, "down" at row 0, "up" at the last row.
Here each recurrence runs once for all pixels at a time: sequential along the scanned axis,
vectorised over everything else, with the two directions of an axis stacked (the reverse one
on the flipped map) so one loop serves both. Written from the kernel's arithmetic; autograd
gives the backward pass (the authors wrote theirs by hand in ``IRNN_Backward_cuda.cu``).
"""

from __future__ import annotations

import torch

DIRECTIONS = ("up", "right", "down", "left")  # the authors' output order
# (axis of a (B, C, H, W) map, the direction scanning it from index 0, the one from its far end)
AXES = ((3, "right", "left"), (2, "down", "up"))


def _scan_leading(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The recurrence along dim 0 of ``x`` (L, ...), from index 0 upwards; weight and bias
    broadcast against ``x[0]``. Returns a tensor shaped like ``x`` (``x`` itself, overwritten,
    when no gradient is needed)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        biased = x + bias  # every step but the first adds the bias
        h = torch.relu(x[0])
        steps = [h]
        for i in range(1, x.shape[0]):
            h = torch.relu(torch.addcmul(biased[i], h, weight))
            steps.append(h)
        return torch.stack(steps)
    first = x[0].clone()
    x[1:] += bias
    torch.clamp(first, min=0, out=x[0])
    for i in range(1, x.shape[0]):  # in place: two passes over one contiguous slice per step
        torch.addcmul(x[i], x[i - 1], weight, out=x[i])
        x[i].relu_()
    return x


def scan_axis(x: torch.Tensor, axis: int, forward: tuple[torch.Tensor, torch.Tensor],
               backward: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scans along ``axis`` (2: rows, 3: columns) of x (B, C, H, W): the one starting at index 0
    with ``forward`` (weight, bias) of shape (C,), and the one starting at the far end with
    ``backward``. Returns both maps shaped like x."""
    both = torch.stack((x, x.flip(axis)))  # (2, B, C, H, W)
    dim = axis + 1
    order = [dim] + [d for d in range(5) if d != dim]  # the scanned axis first, contiguous
    lead = both.permute(order).contiguous()  # (L, 2, B, C, other)
    weight = torch.stack((forward[0], backward[0])).view(2, 1, -1, 1).to(x.dtype)
    bias = torch.stack((forward[1], backward[1])).view(2, 1, -1, 1).to(x.dtype)
    scanned = _scan_leading(lead, weight, bias).permute(torch.argsort(torch.tensor(order)).tolist())
    return scanned[0], scanned[1].flip(axis)


def irnn_scan(x: torch.Tensor, weights: dict[str, torch.Tensor], biases: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four scans of x (B, C, H, W); ``weights[d]``, ``biases[d]`` of shape (C,) per
    direction d. Returns the maps (up, right, down, left), each shaped like x."""
    maps = {}
    for axis, forward, backward in AXES:
        maps[forward], maps[backward] = scan_axis(
            x, axis, (weights[forward], biases[forward]), (weights[backward], biases[backward]))
    return tuple(maps[d] for d in DIRECTIONS)
