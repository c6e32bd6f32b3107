"""`derain export`: a method with its weights as an ONNX or TorchScript file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from derain_cli.cli.common import exit_codes, say


def export(
    method: Annotated[str, typer.Argument(help="Method, optionally with weights tag (lpnet, lpnet.rain100h, one of yours).", show_default=False)],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File to write. Default: METHOD.TAG.onnx (or .pt) here.", show_default=False)
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("-f", "--format", help="onnx or torchscript. Default: from the output's suffix (.onnx, .pt), else onnx.", show_default=False),
    ] = None,
    weights: Annotated[
        str | None, typer.Option("-w", "--weights", help="Checkpoint file or hf://owner/repo/file@revision instead of the manifest's.")
    ] = None,
    height: Annotated[int | None, typer.Option(help="Fixed input height (with --width) for runtimes that need static shapes.")] = None,
    width: Annotated[int | None, typer.Option(help="Fixed input width (with --height).")] = None,
    dynamo: Annotated[bool, typer.Option("--dynamo", help="ONNX through torch.export (needs onnxscript; slower, opset 18).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the output file if it exists.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never use the network (also HF_HUB_OFFLINE=1).")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
) -> None:
    """Export a method with its weights to ONNX or TorchScript, checked against derain's network.

    Height and width are dynamic unless --height/--width are given; the method's size rule,
    outputs and weights go into the file's metadata. `derain remove --weights FILE.onnx`
    runs an ONNX export with derain's tiling.

    Exit codes: 0 written, 1 export failed or did not reproduce the network, 2 usage error
    (also: onnx packages missing), 3 weights unavailable or failed verification.
    """
    from derain_cli.export.exporter import TOLERANCE, export_model

    with exit_codes():
        notice = (lambda message: None) if quiet else (lambda message: say(message, style="yellow"))
        report = export_model(
            method, output, fmt, weights, overwrite=overwrite, height=height, width=width,
            dynamo=dynamo, offline=offline, log=notice,
        )
        if not quiet:
            meta = report.metadata
            rule = f"{meta.size_multiple}k+{meta.size_offset}" if meta.size_offset else f"multiples of {meta.size_multiple}"
            rule = "any" if meta.size_multiple == 1 and not meta.size_offset else rule
            shape = f"fixed {meta.height}x{meta.width}" if meta.height else f"H, W: {rule}"
            opset = f", opset {meta.opset}" if meta.opset else ""
            say(
                f"{report.path}: {meta.name} as {report.format}{opset}, {shape}, "
                f"dynamic: {', '.join(meta.dynamic_axes) or 'none'}; outputs {', '.join(meta.outputs)}; "
                f"max abs difference {report.max_abs_diff:.1e} (tolerance {TOLERANCE:g}) at "
                f"{report.checked_shape[2]}x{report.checked_shape[3]}; {report.seconds:.1f} s"
            )
