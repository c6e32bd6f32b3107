"""Exported models against derain's own: fidelity per method, export time, ONNX Runtime speed.

Usage: python benchmarks/export_check.py [--picture examples/rainy_scene.jpg] [--size 1024] [--repeat 3]

For every method (its default shipped checkpoint; random weights where none ships), exports
ONNX and TorchScript files into a temporary folder, then derains ``--picture`` through
derain's engine with the PyTorch network and with the ONNX file (onnxruntime, same tiling)
and prints the largest difference, in [0, 1] floats and in 8-bit levels. Then times LPNet
on a ``--size`` square picture (1 MP by default), PyTorch vs onnxruntime, both fp32 on the
CPU with 512 px tiles, best of ``--repeat`` (alternating). Record the numbers in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

from derain_cli.api import load
from derain_cli.errors import WeightsError
from derain_cli.export.exporter import export_model
from derain_cli.methods import list_methods
from derain_cli.weights.resolve import resolve


def weights_for(method: str, folder: Path) -> tuple[str | None, str]:
    """The shipped default checkpoint, else a random-weight file (say which)."""
    try:
        return str(resolve(method, offline=True).path), "shipped"
    except WeightsError:
        from safetensors.torch import save_file

        from derain_cli.methods import get_method

        torch.manual_seed(0)
        path = folder / f"{method}_random.safetensors"
        save_file({k: v.contiguous() for k, v in get_method(method).build().state_dict().items()}, str(path))
        return str(path), "random"


def fidelity(picture: np.ndarray, folder: Path) -> None:
    print(f"{'method':8} {'weights':8} {'onnx s':>7} {'ts s':>6} {'check':>9} {'float max':>10} {'8-bit max':>9}")
    rgb = picture.astype(np.float32) / 255
    for spec in list_methods():
        weights, kind = weights_for(spec.name, folder)
        onnx_report = export_model(spec.name, folder / f"{spec.name}.onnx", weights=weights)
        ts_report = export_model(spec.name, folder / f"{spec.name}.pt", weights=weights)
        by_torch = load(spec.name, weights, device="cpu", precision="fp32")
        by_onnx = load(spec.name, str(onnx_report.path), device="cpu")
        float_diff = max(float(np.abs(by_torch.run(rgb)[k] - by_onnx.run(rgb)[k]).max()) for k in spec.outputs)
        eight_bit = max(
            int(np.abs(by_torch.run(picture)[k].astype(int) - by_onnx.run(picture)[k].astype(int)).max()) for k in spec.outputs
        )
        check = max(onnx_report.max_abs_diff, ts_report.max_abs_diff)
        print(f"{spec.name:8} {kind:8} {onnx_report.seconds:7.1f} {ts_report.seconds:6.1f} {check:9.1e} {float_diff:10.1e} {eight_bit:9d}")


def best_times(runs: list, image: np.ndarray, repeat: int) -> list[float]:
    """Best wall time of each run; the runs alternate, so a load that comes and goes on a
    shared machine weighs on both alike."""
    for run in runs:
        run(image[:256, :256])  # warm-up
    times = [[] for _ in runs]
    for _ in range(repeat):
        for run, taken in zip(runs, times):
            start = time.perf_counter()
            run(image)
            taken.append(time.perf_counter() - start)
    return [min(taken) for taken in times]


def speed(size: int, repeat: int, folder: Path) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([x, y, 0.5 + 0.4 * np.sin(20 * x * y)], axis=2) * 200
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    model = folder / "lpnet.onnx"
    if not model.exists():
        export_model("lpnet", model)
    by_torch = load("lpnet", device="cpu", precision="fp32")
    by_onnx = load(None, str(model), device="cpu")
    t_torch, t_onnx = best_times([by_torch.run, by_onnx.run], image, repeat)
    mp = size * size / 1e6
    print(f"lpnet.rain100l, {size}x{size} ({mp:.2f} MP), 512 px tiles, fp32, best of {repeat}:")
    print(f"  PyTorch {torch.__version__}: {t_torch:.2f} s ({mp / t_torch:.2f} MP/s), {torch.get_num_threads()} threads")
    print(f"  onnxruntime {onnxruntime.__version__} (CPUExecutionProvider): {t_onnx:.2f} s ({mp / t_onnx:.2f} MP/s)")
    print(f"  onnxruntime / PyTorch speed: {t_torch / t_onnx:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--picture", default="examples/rainy_scene.jpg")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    picture = np.asarray(Image.open(args.picture).convert("RGB"))
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fidelity on {args.picture} ({picture.shape[1]}x{picture.shape[0]}), derain engine, default 512 px tiles:")
        fidelity(picture, Path(tmp))
        speed(args.size, args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
