"""Running a `derain export` ONNX file through onnxruntime, inside derain's own engine.

``OnnxNetwork`` stands where the torch network would: InferenceEngine hands it the padded
(N, 3, H, W) float32 tile it would give the network and gets the file's outputs back by
name, so padding, tiling, seam blending and image I/O are the PyTorch path's own. The
method and its size rule come from the file's metadata; ``-m`` is only checked against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from derain_cli.inference.tiling import aligned_size, round_up
from derain_cli.errors import UsageError, WeightsError
from derain_cli.export.exporter import INPUT_NAME, ExportMetadata, require_onnx
from derain_cli.methods import MethodSpec
from derain_cli.weights.manifest import split_name


def is_onnx_weights(weights: str | None) -> bool:
    """Whether a ``--weights`` value names an ONNX file (path or hf:// URL)."""
    return bool(weights) and weights.split("@")[0].lower().endswith(".onnx")


def execution_providers(device: str) -> list:
    """onnxruntime providers for derain's ``--device``: auto takes CUDA where onnxruntime has it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if device == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if not cuda:
            raise UsageError(f"--device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise UsageError(f"--device {device}: expected cuda or cuda:N")
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise UsageError(f"--device {device}: an ONNX model runs on cpu or cuda (through onnxruntime)")


def open_session(path: str | Path, label: str, device: str = "auto"):
    """An onnxruntime session; WeightsError naming ``label`` for a file it cannot read."""
    require_onnx("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    providers = execution_providers(device)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # protobuf, graph and shape errors alike: an unusable file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise WeightsError(f"{label}: not a usable ONNX model ({reason})") from None


class OnnxNetwork(torch.nn.Module):
    """A derain ONNX export called like the torch network: (N, 3, H, W) -> {name: tensor}.

    A fixed-size export gets each tile padded up to its size (reflect, as the engine pads
    pictures) and its outputs cropped back; a batch-1 export gets batches one by one.
    """

    def __init__(self, session, metadata: ExportMetadata) -> None:
        super().__init__()
        self.session, self.metadata = session, metadata
        self.one_at_a_time = "batch" not in metadata.dynamic_axes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        array = x.detach().float().cpu().contiguous().numpy()
        items = [array[i : i + 1] for i in range(len(array))] if self.one_at_a_time else [array]
        runs = [self._run(item) for item in items]
        return {
            name: torch.from_numpy(np.concatenate([run[i] for run in runs]))
            for i, name in enumerate(self.metadata.outputs)
        }

    def _run(self, array: np.ndarray) -> list[np.ndarray]:
        height, width = array.shape[2:]
        fixed_h, fixed_w = self.metadata.height, self.metadata.width
        if fixed_h:
            if height > fixed_h or width > fixed_w:
                raise ValueError(f"a {height}x{width} tile does not fit this {fixed_h}x{fixed_w} export")
            mode = "reflect" if fixed_h - height < height and fixed_w - width < width else "replicate"
            padded = F.pad(torch.from_numpy(array), (0, fixed_w - width, 0, fixed_h - height), mode=mode)
            array = padded.numpy()
        values = self.session.run(list(self.metadata.outputs), {INPUT_NAME: array})
        return [v[..., :height, :width] for v in values]


def open_export(path: str | Path, label: str, method: str | None = None, device: str = "auto") -> tuple[OnnxNetwork, MethodSpec]:
    """The network of a derain ONNX export and its method's contract, from the file's metadata.

    Raises UsageError when ``method`` names another method (or tag) than the file's, or
    onnxruntime is missing; WeightsError for a file that is corrupt or not a derain export.
    """
    session = open_session(path, label, device)
    metadata = ExportMetadata.from_strings(session.get_modelmeta().custom_metadata_map, label)
    names = {i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()}
    if INPUT_NAME not in names[0] or not set(metadata.outputs) <= names[1]:
        raise WeightsError(f"{label}: its inputs/outputs do not match its derain metadata; export it again")
    check_method(metadata, method, label)
    return OnnxNetwork(session, metadata), metadata.spec()


def check_method(metadata: ExportMetadata, method: str | None, label: str) -> None:
    """UsageError when ``-m`` asks for another method, or another tag if it names one."""
    if not method:
        return
    name, tag = split_name(method)
    if name != metadata.method or ("." in method and tag != metadata.tag):
        raise UsageError(f"{label} is an export of {metadata.name}, not {method}; leave -m out")


def fitting_tile(spec: MethodSpec, metadata: ExportMetadata, tile: int) -> int:
    """The engine's tile for a fixed-size export: the largest size that follows the rule and
    fits the file (or ``tile`` if smaller); UsageError when the file is too small to tile."""
    if not metadata.height:
        return tile
    largest = (min(metadata.height, metadata.width) - spec.size_offset) // spec.size_multiple * spec.size_multiple
    largest += spec.size_offset
    smallest = round_up(spec.overlap, spec.size_multiple) + spec.size_offset + spec.size_multiple
    if not spec.tileable:
        return 0
    if largest < smallest:
        raise UsageError(
            f"this {metadata.height}x{metadata.width} export is too small to tile {spec.name} "
            f"(tiles need at least {smallest} px); export a larger size or a dynamic one"
        )
    return largest if tile == 0 else min(aligned_size(tile, spec.size_multiple, spec.size_offset), largest)


def onnx_spec(method: str | None, weights: str, label: str | None = None) -> MethodSpec:
    """The method an ONNX export runs, for checks made before loading (e.g. --save-mask)."""
    return open_export(weights, label or weights, method, device="cpu")[1]

