"""The one inference engine every command uses: tiles, padding, device and precision.

The whole picture stays in host memory in its own dtype (uint8 or uint16); only tiles go
to the device, and finished rows are quantized strip by strip (see tiling.py), so memory
is bounded by the tile size and the output image, not by a float copy of the picture.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from derain_cli.inference.device import (
    BF16_EMULATED_COST,
    cpu_has_native_bf16,
    is_out_of_memory,
    pick_device,
    pick_dtype,
    release_cached_memory,
)
from derain_cli.inference.tiling import (
    StripBlender,
    aligned_size,
    balanced_tile,
    quantize_into,
    ramp,
    read_padded,
    smallest_tile,
    tile_overlap,
    tile_starts,
)
from derain_cli.errors import ImageError
from derain_cli.methods import MethodSpec


def _peak(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


class InferenceEngine:
    """Runs a method's network over pictures of any size.

    Args:
        model: the network, weights loaded.
        spec: the method's contract (size multiple, overlap, half safety, outputs).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or a torch.device.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16`` (see device.pick_dtype).
        tile: tile size in pixels; 0 processes the whole picture at once; None: the method's
            default (``spec.tile``).
        log: called with one-line notices (device fallback, smaller tiles).

    On out-of-memory the tile is halved and the picture retried; at the smallest tile the
    engine falls back to the CPU; on the CPU it gives up with an ImageError. Methods that
    are not tileable always see the whole picture.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        spec: MethodSpec,
        device: str | torch.device = "auto",
        precision: str = "auto",
        tile: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.precision = precision
        self.dtype = pick_dtype(precision, self.device, spec.half_safe, spec.bf16_safe)
        self.tile = spec.tile if tile is None else max(0, int(tile))
        self.log = log or (lambda message: None)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and not cpu_has_native_bf16():
            self.log(f"--precision bf16: {BF16_EMULATED_COST}")
        self.overlap = tile_overlap(spec)
        self.model = model.eval()
        self._place_model()

    def _place_model(self) -> None:
        self.model.to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last)

    def describe(self) -> str:
        tile = f"{self.tile}px tiles" if self.tile and self.spec.tileable else "whole image"
        return f"{self.device.type} ({str(self.dtype).removeprefix('torch.')}, {tile})"

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Derain one picture.

        Args:
            image: (H, W, 3) RGB, uint8 or uint16, or float32 in [0, 1].
        Returns:
            One (H, W, C) array per declared output, in the input's dtype.
        Raises:
            ValueError: for a wrong shape or dtype. ImageError: out of memory on the CPU.
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        if image.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"expected uint8, uint16 or float32 pixels, got {image.dtype}")
        while True:
            try:
                return self._run_tiled(image)
            except Exception as err:  # only out-of-memory is handled; everything else re-raised
                if not is_out_of_memory(err):
                    raise
                self._recover_from_oom(image.shape)

    def _recover_from_oom(self, shape: tuple[int, ...]) -> None:
        release_cached_memory(self.device)
        smallest = smallest_tile(self.spec)
        current = self.tile or self._aligned(max(shape[:2]))
        if current > smallest and self.spec.tileable:
            self.tile = max(smallest, self._aligned(current // 2))
            self.log(f"out of memory on {self.device.type}: retrying with {self.tile}px tiles")
        elif self.device.type != "cpu":
            self.log(f"out of memory on {self.device.type} even with {current}px tiles: falling back to the CPU")
            self.device = torch.device("cpu")
            fallback = "fp32" if self.precision == "fp16" else self.precision
            self.dtype = pick_dtype(fallback, self.device, self.spec.half_safe, self.spec.bf16_safe)
            self.tile = self.spec.tile
            self._place_model()
        else:
            raise ImageError(f"out of memory on the CPU even with {current}px tiles")

    def _aligned(self, size: int) -> int:
        return aligned_size(size, self.spec.size_multiple, self.spec.size_offset)

    def _run_tiled(self, image: np.ndarray) -> dict[str, np.ndarray]:
        height, width = image.shape[:2]
        padded_h, padded_w = self._aligned(height), self._aligned(width)
        whole = not self.tile or not self.spec.tileable
        tile = max(padded_h, padded_w) if whole else self._aligned(self.tile)
        tile = max(tile, self.overlap + self.spec.size_multiple)
        tile_h, tile_w = (balanced_tile(n, tile, self.overlap, self.spec.size_multiple, self.spec.size_offset)
                          for n in (padded_h, padded_w))
        rows = tile_starts(padded_h, tile_h, self.overlap)
        cols = tile_starts(padded_w, tile_w, self.overlap)
        peak = _peak(image.dtype)

        outputs: dict[str, np.ndarray] = {}
        blenders: dict[str, StripBlender | None] = {}
        for r, y0 in enumerate(rows):
            last_row = r == len(rows) - 1
            weight_y = ramp(tile_h, self.overlap, r > 0, not last_row)
            for c, x0 in enumerate(cols):
                weight = np.outer(weight_y, ramp(tile_w, self.overlap, c > 0, c < len(cols) - 1))
                window = read_padded(image, y0, x0, tile_h, tile_w)
                for name, values in self._infer(window[None], peak).items():
                    values = values[0]
                    if name not in outputs:
                        outputs[name] = np.empty((height, width, values.shape[2]), dtype=image.dtype)
                        blenders[name] = StripBlender(outputs[name], y0, tile_h, padded_w)
                    blenders[name].add(values, weight, y0, x0)
            next_start = padded_h if last_row else rows[r + 1]
            for name, blender in blenders.items():
                blenders[name] = blender.finish(next_start, next_start, 0 if last_row else tile_h)
        return outputs

    def run_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Derain several pictures (video frames); equal to ``run`` on each.

        Same-size pictures that fit in one tile go through the network as one batch. Methods
        whose output depends on whole-image statistics (not tileable: DDN normalises by the
        picture's own mean and variance) and larger pictures run one by one, as does a
        batch that runs out of memory (``run`` then applies its out-of-memory policy).
        """
        first = images[0] if images else None
        if (
            len(images) < 2
            or not self.spec.tileable
            or any(im.shape != first.shape or im.dtype != first.dtype for im in images)
            or first.ndim != 3
            or first.shape[2] != 3
        ):
            return [self.run(image) for image in images]
        height, width = first.shape[:2]
        padded_h, padded_w = self._aligned(height), self._aligned(width)
        if self.tile and max(padded_h, padded_w) > max(self._aligned(self.tile), self.overlap + self.spec.size_multiple):
            return [self.run(image) for image in images]
        windows = np.stack([read_padded(image, 0, 0, padded_h, padded_w) for image in images])
        try:
            values = self._infer(windows, _peak(first.dtype))
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            release_cached_memory(self.device)
            return [self.run(image) for image in images]
        results = []
        for k in range(len(images)):
            result = {}
            for name, batch in values.items():
                result[name] = np.empty((height, width, batch.shape[3]), dtype=first.dtype)
                quantize_into(result[name], np.ascontiguousarray(batch[k, :height, :width]))
            results.append(result)
        return results

    @torch.inference_mode()
    def _infer(self, windows: np.ndarray, peak: float) -> dict[str, np.ndarray]:
        """(N, H, W, 3) windows in the picture's dtype -> (N, H, W, C) float32 per output."""
        scaled = windows.astype(np.float32)
        scaled /= peak  # in place: one float copy of the window, not two
        x = torch.from_numpy(scaled).permute(0, 3, 1, 2)
        x = x.to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last)
        result = self.model(x)
        if isinstance(result, torch.Tensor):
            result = {"image": result}
        missing = set(self.spec.outputs) - set(result)
        if missing:
            raise RuntimeError(f"{self.spec.name} did not return its declared outputs {sorted(missing)}")
        outputs = {name: result[name].float().permute(0, 2, 3, 1).cpu().numpy() for name in self.spec.outputs}
        if not all(np.isfinite(values).all() for values in outputs.values()):
            hint = "; try --precision fp32" if self.dtype == torch.float16 else " (broken weights?)"
            raise ImageError(f"the network's output holds NaN or Inf{hint}; nothing written")
        return outputs
