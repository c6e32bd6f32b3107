"""SPANet's four-direction IRNN scan (Wang et al. CVPR 2019), on any device.

For every channel c and direction d the authors' CUDA kernel computes, at each pixel, a
recurrence along its row or column that starts at the image's edge::

    h = relu(x[edge]);  then for each next pixel i up to this one:  h = relu(h * w[d, c] + b[d, c] + x[i])

"right" starts at column 0, "left" at the last column, "down" at row 0, "up" at the last row.
Here each recurrence runs once for all pixels at a time: sequential along the scanned axis,
vectorised over everything else (one slice of the map per step). Written from the kernel's
arithmetic; autograd gives the backward pass (the authors wrote theirs by hand in
``IRNN_Backward_cuda.cu``).
"""

from __future__ import annotations

import torch

DIRECTIONS = ("up", "right", "down", "left")  # the authors' output order
# the axis of a (B, C, H, W) map each direction scans, and whether it starts at the far end
SCANS = {"up": (2, True), "right": (3, False), "down": (2, False), "left": (3, True)}


def scan(x: torch.Tensor, direction: str, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One direction's recurrence over x (B, C, H, W); weight and bias of shape (C,). Returns
    a map shaped like x (in x's memory format: channels-last maps scan with every step's
    slice made of whole pixels, so nothing is transposed)."""
    axis, reverse = SCANS[direction]
    order = range(x.shape[axis] - 1, -1, -1) if reverse else range(x.shape[axis])
    w, b = weight.to(x.dtype).view(1, -1, 1), bias.to(x.dtype).view(1, -1, 1)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        steps = {}
        h = None
        for i in order:
            row = x.select(axis, i)
            h = torch.relu(row) if h is None else torch.relu(torch.addcmul(row + b, h, w))
            steps[i] = h
        return torch.stack([steps[i] for i in range(x.shape[axis])], dim=axis)
    out = torch.add(x, b.unsqueeze(-1))  # every step but the first adds the bias
    first, *rest = order
    previous = out.select(axis, first)
    torch.clamp(x.select(axis, first), min=0, out=previous)
    for i in rest:  # in place: two passes over one slice per step
        current = out.select(axis, i)
        torch.addcmul(current, previous, w, out=current).relu_()
        previous = current
    return out


def irnn_scan(x: torch.Tensor, weights: dict[str, torch.Tensor], biases: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four scans of x (B, C, H, W); ``weights[d]``, ``biases[d]`` of shape (C,) per
    direction d. Returns the maps (up, right, down, left), each shaped like x."""
    return tuple(scan(x, d, weights[d], biases[d]) for d in DIRECTIONS)
