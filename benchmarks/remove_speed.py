"""`derain remove` on one large picture against this machine's convolution speed.

Usage: python benchmarks/remove_speed.py [--method lpnet [--method spanet ...]] [--size 4000x3000] [--repeat 2] [--tile 512]

The bound: a method's network needs F FLOP per pixel (its convolutions, counted on a tile);
a 3x3 convolution of the network's most common width, channels-last fp32,
runs at up to C FLOP/s on this machine (measured here: the best over map sizes of 128 to
512 px, where the maps stay in the caches, best of several runs). No implementation that
spends its time in such convolutions can beat C / F pixels per second. Printed for the whole
process (a child `derain remove`: start-up, decode, derain, encode), for the engine alone on
the decoded picture, and for the network on one tile; several --method run one after the
other in the same run (compare them there). Record the output in docs/performance.md with
this command and the CPU's name.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from derain_cli.kernels.blocks import plain_paths
from derain_cli.inference.checkpoints import export_safetensors
from derain_cli.inference.engine import InferenceEngine
from derain_cli.methods import get_method
from derain_cli.weights.resolve import available_entries


# the convolution's best speed here comes at sizes whose maps stay in the caches (128-512 px)
CONV_SIZES = (128, 256, 384, 512)


def best_of(repeat: int, run) -> tuple[float, object]:
    """The fastest of ``repeat`` calls of ``run``, in seconds, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def conv_flops_per_pixel(model: nn.Module, size: int) -> tuple[float, int]:
    """FLOP per input pixel of every convolution (2 x MACs), and the most common 3x3 width."""
    total, widths = 0.0, {}

    def count(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        macs = output.numel() * (module.in_channels // module.groups) * kh * kw
        total += 2 * macs
        if (kh, kw) == (3, 3):
            widths[module.out_channels] = widths.get(module.out_channels, 0) + output.shape[-2] * output.shape[-1]

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    # the training path calls every convolution as its module (inference fuses some, slices
    # others' weights, and runs local parts in blocks that recount halos); same arithmetic
    with torch.enable_grad(), plain_paths():
        model(torch.rand(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return total / size**2, max(widths, key=widths.get)


def conv_throughput(width: int, size: int, repeat: int) -> float:
    """Best FLOP/s of a width->width 3x3 convolution on a size x size channels-last map."""
    conv = nn.Conv2d(width, width, 3, padding=1).to(memory_format=torch.channels_last).eval()
    x = torch.rand(1, width, size, size).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
        seconds, _ = best_of(repeat, lambda: conv(x))
    return 2 * 9 * width * width * size * size / seconds


def picture(path: Path, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin(x / 37 + y / 53)], axis=2) * 200
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, quality=92)


def measure(method: str, source: Path, width: int, height: int, tile: int | None, repeat: int, tmp: str) -> None:
    """Print one method's rows: whole process, engine, network on one tile, against its bound."""
    megapixels = width * height / 1e6
    spec = get_method(method)
    torch.manual_seed(0)
    model = spec.build().eval()
    engine = InferenceEngine(model, spec, "cpu", precision="fp32", tile=tile)
    tile = engine._aligned(engine.tile)
    flops, conv_width = conv_flops_per_pixel(spec.build().eval(), tile)
    print(f"{method}: {flops / 1e3:.1f} kFLOP per pixel, most common 3x3 width {conv_width}")
    command = [sys.executable, "-m", "derain_cli", "remove", str(source), "-m", method, "--device", "cpu",
               "--precision", "fp32", "--tile", str(engine.tile), "-q", "--overwrite", "-o", str(Path(tmp, "out.jpg"))]
    if f"{spec.name}.{spec.default_tag}" not in available_entries():  # no shipped checkpoint: this run's random weights (speed does not depend on them)
        export_safetensors(model.state_dict(), Path(tmp, "random.safetensors"))
        command += ["--weights", str(Path(tmp, "random.safetensors"))]
    rows = []
    process_s, _ = best_of(repeat, lambda: subprocess.run(command, check=True))
    rows.append(("whole process (start-up, decode, derain, encode)", process_s, megapixels))
    image = np.asarray(Image.open(source).convert("RGB"))
    engine.run(image[:300, :300])  # warm-up
    engine_s, _ = best_of(repeat, lambda: engine.run(image))
    rows.append(("engine on the decoded picture", engine_s, megapixels))
    x = torch.rand(1, 3, tile, tile).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        engine.model(x)
        tile_s, _ = best_of(3 * repeat, lambda: engine.model(x))
    rows.append((f"network on one {tile}x{tile} {'tile' if spec.tileable else 'picture'}", tile_s, tile * tile / 1e6))
    conv = max(conv_throughput(conv_width, size, 5) for size in CONV_SIZES)
    bound = conv / flops / 1e6
    print(f"{conv_width}-channel 3x3 conv: {conv / 1e9:.1f} GFLOP/s -> bound {bound:.3f} MP/s for {method}")
    where = f"{engine.tile}px tiles" if spec.tileable else "whole picture (not tileable)"
    print(f"picture {width}x{height} ({megapixels:.1f} MP), {where}, fp32")
    for name, seconds, mp in rows:
        print(f"  {name:52s} {seconds:7.2f} s  {mp / seconds:6.3f} MP/s  {mp / seconds / bound:5.2f} of the bound")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", action="append", help="repeatable; default lpnet")
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--tile", type=int, default=None, help="default: the method's own")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "big.jpg")
        picture(source, width, height)
        for method in args.method or ["lpnet"]:
            measure(method, source, width, height, args.tile, args.repeat, tmp)


if __name__ == "__main__":
    main()
