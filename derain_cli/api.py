"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from derain_cli.media.batch import FileResult, OutputOptions, collect_inputs, plan_jobs, run_jobs, run_videos
from derain_cli.inference.engine import InferenceEngine
from derain_cli.inference.loading import DEFAULT_METHOD, load_engine
from derain_cli.inference.tiling import check_tile
from derain_cli.errors import UsageError
from derain_cli.methods import MethodSpec, get_method
from derain_cli.export.onnx_runner import is_onnx_weights
from derain_cli.media.video import is_video
from derain_cli.weights.manifest import split_name
from derain_cli.weights.resolve import ResolvedWeights, resolve

class Restorer:
    """A method with its weights on a device, ready to derain pictures of any size."""

    def __init__(self, spec: MethodSpec, engine: InferenceEngine, weights: ResolvedWeights | None = None) -> None:
        self.spec = spec
        self.engine = engine
        self.weights = weights

    def run(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """(H, W, 3) uint8, uint16 or float32 in [0, 1] -> every declared output, same dtype."""
        return self.engine.run(rgb)

    def __call__(self, image):
        """Derain a PIL image, a numpy array or a tensor, and return the same kind back.

        numpy: (H, W, 3) RGB or (H, W, 4) RGBA (alpha passed through), uint8/uint16/float32.
        torch: (3, H, W) or (B, 3, H, W) float in [0, 1].
        PIL: RGB, RGBA, L or LA.
        """
        if isinstance(image, Image.Image):
            return self._derain_pil(image)
        if isinstance(image, torch.Tensor):
            return self._derain_tensor(image)
        if isinstance(image, np.ndarray):
            return self._derain_array(image)
        raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")

    def _derain_array(self, array: np.ndarray) -> np.ndarray:
        if array.ndim == 3 and array.shape[2] == 4:
            rgb = self.run(np.ascontiguousarray(array[..., :3]))["image"]
            return np.concatenate([rgb, array[..., 3:]], axis=2)
        return self.run(array)["image"]

    def _derain_tensor(self, x: torch.Tensor) -> torch.Tensor:
        batch = x if x.ndim == 4 else x[None]
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
        outs = [
            torch.from_numpy(self.run(img.permute(1, 2, 0).float().cpu().contiguous().numpy())["image"]).permute(2, 0, 1)
            for img in batch
        ]
        out = torch.stack(outs).to(device=x.device, dtype=x.dtype)
        return out if x.ndim == 4 else out[0]

    def _derain_pil(self, im: Image.Image) -> Image.Image:
        mode = im.mode
        if mode not in ("RGB", "RGBA", "L", "LA"):
            im, mode = im.convert("RGB"), "RGB"
        array = np.asarray(im)
        if mode in ("L", "LA"):
            gray = array if mode == "L" else array[..., 0]
            rgb = self.run(np.repeat(gray[..., None], 3, axis=2))["image"]
            y = np.rint(rgb.mean(axis=2, dtype=np.float32)).astype(np.uint8)
            return Image.fromarray(y if mode == "L" else np.stack([y, array[..., 1]], axis=2), mode=mode)
        return Image.fromarray(self._derain_array(array), mode=mode)


def load(
    method: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = None,
    offline: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Restorer:
    """Build ``method`` (``lpnet`` or ``lpnet.rain100h``; default lpnet) with verified weights.

    ``weights`` may be a `derain export` ONNX file: it then runs through onnxruntime in
    float32, its metadata naming the method (``method``, if given, must match).
    Raises UsageError for an unknown method or option, WeightsError when no usable
    checkpoint can be found (never random weights).
    """
    if weights and is_onnx_weights(weights):
        return _load_onnx(method, weights, device, precision, tile, offline, log)
    engine, resolved = load_engine(method, weights, device, precision, tile, offline, log)
    return Restorer(engine.spec, engine, resolved)


def method_spec(method: str | None = None, weights: str | None = None) -> MethodSpec:
    """The method ``load(method, weights)`` runs, without loading it: an ONNX export's own
    method (read from the file), else ``method`` (default lpnet)."""
    if weights and is_onnx_weights(weights) and not weights.startswith("hf://"):
        from derain_cli.export.onnx_runner import onnx_spec

        return onnx_spec(method, weights)
    return get_method(split_name(method or DEFAULT_METHOD)[0])


def _load_onnx(method, weights, device, precision, tile, offline, log) -> Restorer:
    from derain_cli.export.onnx_runner import fitting_tile, open_export

    if precision not in ("auto", "fp32"):
        raise UsageError(f"--precision {precision}: an ONNX model runs in float32 (fp32)")
    path = resolve(method or DEFAULT_METHOD, weights, offline).path  # a local file or an hf:// download
    network, spec = open_export(path, weights, method, device)
    check_tile(spec, tile)
    meta = network.metadata
    providers = network.session.get_providers()
    resolved = ResolvedWeights(spec.name, f"{weights} ({meta.name} export)", path, f"onnxruntime {providers[0]}")
    # the engine keeps its tensors on the CPU in float32; onnxruntime picks its own device
    engine = InferenceEngine(network, spec, device="cpu", precision="fp32", tile=fitting_tile(spec, meta, spec.tile if tile is None else tile), log=log)
    return Restorer(spec, engine, resolved)


def derain_paths(
    inputs: Iterable[str | Path],
    output: str | Path | None = None,
    restorer: Restorer | None = None,
    options: OutputOptions | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    workers: int = 2,
    **load_options,
) -> list[FileResult]:
    """Derain picture and video files, folders and globs; returns one FileResult per entry: folder entries
    that are not pictures (skipped, with the reason) and inputs refused while planning
    outputs first, then the others in input order.

    ``output`` overrides ``options.output``; ``workers`` decode/encode threads (0: none);
    ``load_options`` go to ``load`` when no ``restorer`` is given. A bad file yields a
    failed result, never an exception.
    """
    options = options or OutputOptions()
    if output is not None:
        options = OutputOptions(**{**options.__dict__, "output": Path(output)})
    found = collect_inputs([str(p) for p in inputs], options.recursive, exclude=options.output, suffix=options.suffix)
    jobs, refused = plan_jobs(found.files, options)
    results = found.skipped + refused
    for early in results:
        if on_result:
            on_result(early)
    restorer = restorer or load(**load_options)
    restorer.spec.require_outputs(options.extras)
    pictures = [job for job in jobs if not is_video(job.source)]
    videos = [job for job in jobs if is_video(job.source)]
    for result in chain(run_jobs(pictures, restorer.run, options, workers), run_videos(videos, restorer.engine.run_batch, options)):
        results.append(result)
        if on_result:
            on_result(result)
    return results
