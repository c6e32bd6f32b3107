"""`derain export`: a method with its weights as an ONNX or TorchScript file for other runtimes.

The file holds the network alone: the input is a float32 RGB batch ``(N, 3, H, W)`` in
[0, 1], already padded to the method's size rule (H and W of the form
``size_multiple * k + size_offset``); the outputs are the method's maps in the same range.
Padding, tiling and blending stay with the caller, who finds the rule in the file's
metadata (``ExportMetadata``; ONNX ``metadata_props``, TorchScript ``_extra_files``).

Every export is checked before it is moved into place: the file, loaded back in its own
runtime (onnxruntime, ``torch.jit.load``), must reproduce derain's network to
``TOLERANCE`` on a random batch at a size other than the one it was traced at, so a claim
of dynamic height and width is a measured one.
"""

from __future__ import annotations

from importlib.metadata import version

import importlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from derain_cli.inference.checkpoints import build_network
from derain_cli.inference.tiling import aligned_size
from derain_cli.errors import DerainError, UsageError, WeightsError
from derain_cli.media.images import current_umask
from derain_cli.methods import MethodSpec, get_method
from derain_cli.weights.manifest import split_name
from derain_cli.weights.resolve import resolve, sha256_of

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
SUFFIX_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript"}
OPSET = 17  # the TorchScript-based exporter; ONNX Runtime >= 1.13 runs it
DYNAMO_OPSET = 18  # the lowest the torch.export-based exporter writes natively
TOLERANCE = 1e-4  # max abs difference from derain's network, values in [0, 1]
INPUT_NAME = "input"
METADATA_FILE = "derain.json"  # TorchScript: the _extra_files entry holding the metadata
INSTALL_HINT = 'pip install "derain[onnx]"'
TRACE_SIZE, CHECK_SIZE = (32, 48), (48, 32)  # before alignment to the size rule; small: prenet is slow


class ExportError(DerainError):
    """The network could not be exported, or the file does not reproduce it."""


@dataclass(frozen=True)
class ExportMetadata:
    """What a runtime needs to use an exported file the way derain uses the network.

    ``height``/``width`` are 0 where the size is dynamic; ``dynamic_axes`` names the input
    axes that may vary (``batch``, ``height``, ``width``).
    """

    method: str
    tag: str
    weights: str
    weights_sha256: str
    size_multiple: int
    size_offset: int
    overlap: int
    tileable: bool
    outputs: tuple[str, ...]
    dynamic_axes: tuple[str, ...]
    height: int
    width: int
    opset: int
    exporter: str
    derain_version: str
    input: str = "float32 RGB (N, 3, H, W) in [0, 1]; H, W = size_multiple * k + size_offset"

    @property
    def name(self) -> str:
        return f"{self.method}.{self.tag}"

    def as_strings(self) -> dict[str, str]:
        """Flat string pairs (ONNX metadata_props): tuples comma-joined, booleans 0/1."""
        return _strings(asdict(self))

    @classmethod
    def from_strings(cls, props: dict[str, str], source: str) -> ExportMetadata:
        """Parse ``as_strings`` output; WeightsError naming ``source`` when it is not derain's."""
        missing = [f.name for f in fields(cls) if f.name not in props]
        if "derain_version" in missing or "method" in missing:
            raise WeightsError(f"{source}: not a derain export (no derain metadata; make one with `derain export`)")
        if missing:
            raise WeightsError(f"{source}: derain metadata lacks {', '.join(missing)}; export it again")
        values = {}
        try:
            for f in fields(cls):
                raw = props[f.name]
                if f.type in ("int",):
                    values[f.name] = int(raw)
                elif f.type == "bool":
                    values[f.name] = raw == "1"
                elif f.type.startswith("tuple"):
                    values[f.name] = tuple(v for v in raw.split(",") if v)
                else:
                    values[f.name] = raw
        except ValueError as err:
            raise WeightsError(f"{source}: malformed derain metadata ({err})") from None
        return cls(**values)

    def spec(self) -> MethodSpec:
        """The registry's method with the file's contract (size rule, overlap, outputs)."""
        from dataclasses import replace

        return replace(
            get_method(self.method), size_multiple=self.size_multiple, size_offset=self.size_offset,
            overlap=self.overlap, tileable=self.tileable, outputs=self.outputs, half_safe=False,
        )


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: str
    metadata: ExportMetadata
    checked_shape: tuple[int, ...]
    max_abs_diff: float
    seconds: float


def require_onnx(*modules: str) -> None:
    """UsageError with the install line when an optional ONNX package is missing."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(f"ONNX needs {', '.join(missing)}, not installed: {INSTALL_HINT}")


class _OutputsInOrder(torch.nn.Module):
    """The network with its outputs as a tensor (one map) or a tuple in ``spec.outputs`` order,
    the form both exporters take; the names go into the metadata."""

    def __init__(self, network: torch.nn.Module, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.network, self.outputs = network, outputs

    def forward(self, x: torch.Tensor):
        result = self.network(x)
        if isinstance(result, torch.Tensor):
            return result
        ordered = tuple(result[name] for name in self.outputs)
        return ordered[0] if len(ordered) == 1 else ordered


def export_model(
    method: str,
    output: str | Path | None = None,
    fmt: str | None = None,
    weights: str | None = None,
    overwrite: bool = False,
    height: int | None = None,
    width: int | None = None,
    dynamo: bool = False,
    offline: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export ``method`` (``lpnet``, ``lpnet.rain100h``, one of yours) with verified weights.

    Args:
        output: the file to write; default ``METHOD.TAG.onnx`` (or ``.pt``) here.
        fmt: ``onnx`` or ``torchscript``; default from the output's suffix, else onnx.
        weights: a checkpoint file or hf:// URL instead of the manifest's.
        height, width: a fixed-size export (both, following the size rule); default dynamic.
        dynamo: ONNX through the torch.export-based exporter (needs onnxscript; slower).
    Raises:
        UsageError (bad format, size, existing output, missing onnx packages), WeightsError,
        ExportError (export failed, or the file does not reproduce the network).
    """
    log = log or (lambda message: None)
    started = time.perf_counter()
    fmt = _pick_format(fmt, output)
    if fmt == "onnx":
        require_onnx("onnx", "onnxruntime", *(("onnxscript",) if dynamo else ()))
    elif dynamo:
        raise UsageError("--dynamo applies to ONNX exports only")
    spec = get_method(split_name(method)[0])
    if spec.sized_by_loops and not height:
        raise UsageError(f"{spec.name} exports at one fixed size only: {spec.sized_by_loops}, loops that tracing "
                         "unrolls for the size it sees; give --height H --width W")
    trace_hw, check_hw = _sizes(spec, height, width)
    resolved = resolve(method, weights, offline)
    tag = resolved.entry.tag if resolved.entry else safe_stem(resolved.path)
    path = Path(output) if output else Path(f"{spec.name}.{tag}{FORMATS[fmt]}")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    network = _OutputsInOrder(build_network(spec, resolved), spec.outputs).eval()
    metadata = ExportMetadata(
        method=spec.name, tag=tag,
        weights=resolved.label if resolved.entry or resolved.source == "hf" else resolved.path.name,  # no local paths
        weights_sha256=resolved.entry.sha256 if resolved.entry else sha256_of(resolved.path),
        size_multiple=spec.size_multiple, size_offset=spec.size_offset, overlap=spec.overlap,
        tileable=spec.tileable, outputs=spec.outputs,
        dynamic_axes=("batch",) if height else ("batch", "height", "width"),
        height=height or 0, width=width or 0,
        opset=(DYNAMO_OPSET if dynamo else OPSET) if fmt == "onnx" else 0,
        exporter="torch.export" if dynamo else "torch.jit.trace", derain_version=version("derain"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(temp_name)
    try:
        torch.manual_seed(0)
        example = torch.rand(2, 3, *trace_hw)
        with warnings.catch_warnings():
            # tracer and deprecation chatter: the check below is what vouches for the file
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                metadata = _write_onnx(network, example, metadata, temp, dynamo, log)
            else:
                _write_torchscript(network, example, metadata, temp)
        checked = (2 if "batch" in metadata.dynamic_axes else 1, 3, *check_hw)
        difference = _max_difference(network, fmt, temp, metadata, checked)
        if not difference <= TOLERANCE:  # also catches NaN
            raise ExportError(
                f"{spec.name}: the exported {fmt} file differs from derain's network by {difference:.2e} "
                f"(tolerance {TOLERANCE:g}) at {checked[2]}x{checked[3]}; not written"
            )
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain write would honour the umask
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return ExportReport(path, fmt, metadata, checked, difference, time.perf_counter() - started)


def safe_stem(path: Path) -> str:
    """A tag from a checkpoint file name (letters, digits, '_' and '-')."""
    from derain_cli.weights.user import safe_tag

    return safe_tag(Path(path).stem)


def _pick_format(fmt: str | None, output: str | Path | None) -> str:
    if fmt is None:
        fmt = SUFFIX_FORMATS.get(Path(output).suffix.lower(), "onnx") if output else "onnx"
    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}' (choose {' or '.join(FORMATS)})")
    return fmt


def _sizes(spec: MethodSpec, height: int | None, width: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(trace size, check size). Dynamic exports are checked at another size than traced;
    a fixed-size export at its own size."""

    def aligned(n: int) -> int:
        return aligned_size(n, spec.size_multiple, spec.size_offset)

    if (height is None) != (width is None):
        raise UsageError("--height and --width go together (a fixed-size export)")
    if height is None:
        return (aligned(TRACE_SIZE[0]), aligned(TRACE_SIZE[1])), (aligned(CHECK_SIZE[0]), aligned(CHECK_SIZE[1]))
    for label, size in (("height", height), ("width", width)):
        if size < 1 or aligned(size) != size:
            rule = f"{spec.size_multiple}k + {spec.size_offset}" if spec.size_offset else f"a multiple of {spec.size_multiple}"
            raise UsageError(f"--{label} {size}: {spec.name} takes sizes of the form {rule}, e.g. {aligned(max(size, 1))}")
    return (height, width), (height, width)


def _write_onnx(network, example, metadata: ExportMetadata, temp: Path, dynamo: bool, log) -> ExportMetadata:
    """Export to ``temp`` with the metadata; returns it with the axes that really are dynamic."""
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"}
    wanted = {i: n for i, n in axes.items() if n in metadata.dynamic_axes}
    try:
        proto = (_dynamo_proto if dynamo else _traced_proto)(network, example, metadata, wanted)
    except Exception as err:  # an exporter failure of any kind: try without a dynamic batch, once
        if 0 not in wanted:
            raise ExportError(f"{metadata.method}: ONNX export failed ({type(err).__name__}: {_first_line(err)})") from None
        log(f"{metadata.method}: no ONNX export with a dynamic batch ({_first_line(err)}); exporting with batch 1")
        wanted.pop(0)
        metadata = _replace(metadata, dynamic_axes=tuple(n for n in metadata.dynamic_axes if n != "batch"))
        try:
            proto = (_dynamo_proto if dynamo else _traced_proto)(network, example[:1], metadata, wanted)
        except Exception as err2:  # noqa: BLE001 - reported as one line
            raise ExportError(f"{metadata.method}: ONNX export failed ({type(err2).__name__}: {_first_line(err2)})") from None
    onnx.helper.set_model_props(proto, metadata.as_strings())
    proto.doc_string = f"derain {metadata.name}: rain removal; input {metadata.input}"
    onnx.save(proto, str(temp))
    return metadata


def _traced_proto(network, example, metadata: ExportMetadata, axes: dict[int, str]):
    """The TorchScript-based exporter: about 1-3 s here (torch.export's takes 8-90 s)."""
    import io

    import onnx

    buffer = io.BytesIO()
    names = list(metadata.outputs)
    with _native_stdout_silenced():
        torch.onnx.export(
            network, (example,), buffer, dynamo=False, opset_version=metadata.opset, input_names=[INPUT_NAME],
            output_names=names, dynamic_axes={name: dict(axes) for name in [INPUT_NAME, *names]} if axes else None,
        )
    return onnx.load_from_string(buffer.getvalue())


@contextmanager
def _native_stdout_silenced():
    """Point file descriptor 1 at /dev/null: when it fails, the TorchScript-based exporter
    prints its whole graph from C++ to stdout (torch 2.13 leaves its ONNX log on), which
    would bury the one-line error and spoil output meant for scripts."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _dynamo_proto(network, example, metadata: ExportMetadata, axes: dict[int, str]):
    """The torch.export-based exporter; the size rule becomes the symbolic size 16*k + 1."""
    from torch.export import Dim

    shapes = {}
    if 0 in axes:
        shapes[0] = Dim("batch", min=1, max=1024)
    for index, name in ((2, "height"), (3, "width")):
        if index in axes:
            k = Dim(f"{name}_k", min=1, max=1 << 14)
            shapes[index] = metadata.size_multiple * k + metadata.size_offset if metadata.size_multiple > 1 else k
    program = torch.onnx.export(
        network, (example,), None, dynamo=True, opset_version=metadata.opset, input_names=[INPUT_NAME],
        output_names=list(metadata.outputs), dynamic_shapes=(shapes,) if shapes else None, verbose=False,
    )
    return program.model_proto


def _write_torchscript(network, example, metadata: ExportMetadata, temp: Path) -> None:
    traced = torch.jit.trace(network, (example,), check_trace=False)
    torch.jit.save(traced, str(temp), _extra_files={METADATA_FILE: json.dumps(asdict(metadata))})


def _max_difference(network, fmt: str, temp: Path, metadata: ExportMetadata, shape: tuple[int, ...]) -> float:
    """Max abs difference between the file, run in its runtime, and the network, all outputs."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(*shape, generator=generator)
    with torch.inference_mode():
        expected = network(x)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    try:
        if fmt == "onnx":
            from derain_cli.export.onnx_runner import open_session

            session = open_session(temp, temp.name, "cpu")
            got = session.run(None, {INPUT_NAME: x.numpy()})
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit.load
                loaded = torch.jit.load(str(temp))
            with torch.inference_mode():
                got = loaded(x)
            got = [got] if isinstance(got, torch.Tensor) else list(got)
            got = [g.numpy() for g in got]
    except DerainError:
        raise
    except Exception as err:  # the runtime refusing the file is an export failure
        raise ExportError(f"{metadata.method}: the exported file does not run ({type(err).__name__}: {_first_line(err)})") from None
    if len(got) != len(expected) or any(g.shape != tuple(e.shape) for g, e in zip(got, expected)):
        return float("inf")
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))


def read_torchscript_metadata(path: str | Path) -> ExportMetadata:
    """The metadata of a TorchScript export (``torch.jit.load`` with its extra file)."""
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit.load
            torch.jit.load(str(path), _extra_files=extra)
    except Exception as err:  # unreadable archive: one line naming it
        raise WeightsError(f"{path}: not a readable TorchScript file ({type(err).__name__})") from None
    try:
        props = json.loads(extra[METADATA_FILE] or "{}")
    except json.JSONDecodeError:
        props = {}
    return ExportMetadata.from_strings(_strings(props) if isinstance(props, dict) else {}, str(path))


def _strings(values: dict) -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if isinstance(value, (tuple, list)):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = int(value)
        out[str(key)] = str(value)
    return out


def _replace(metadata: ExportMetadata, **changes) -> ExportMetadata:
    from dataclasses import replace

    return replace(metadata, **changes)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
