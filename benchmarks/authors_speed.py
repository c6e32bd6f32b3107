"""derain against the authors' way of running the same network, on this CPU, in one run.

Usage: python benchmarks/authors_speed.py [--method prenet] [--sizes 481x321 1024x1024] [--repeat 2]

"Authors' way": the network's operations in the authors' order (derain's modules follow
their code; PReNet's state dicts load key for key), NCHW tensors, the whole picture at
once, under torch.no_grad, as their test scripts run it; derain's CPU paths (cache
blocks, fused activations, channels-last) switched off. "derain": the inference engine
as `derain remove` runs it (default tile). Both on the same random weights and picture;
prints the time, MP/s, the speed ratio and the largest output difference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from derain_cli.kernels.blocks import plain_paths
from derain_cli.inference.engine import InferenceEngine
from derain_cli.methods import get_method
from remove_speed import best_of  # beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="prenet")
    parser.add_argument("--sizes", nargs="+", default=["481x321", "1024x1024"])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    spec = get_method(args.method)
    torch.manual_seed(0)
    model = spec.build().eval()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.method}, random weights, fp32")
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        image = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        model.to(memory_format=torch.contiguous_format)
        with torch.no_grad(), plain_paths():
            authors_s, authors = best_of(args.repeat, lambda: model(x))
        authors = np.rint(authors[0].permute(1, 2, 0).numpy() * 255)
        engine = InferenceEngine(model, spec, "cpu", precision="fp32")
        derain_s, ours = best_of(args.repeat, lambda: engine.run(image)["image"])
        mp = width * height / 1e6
        print(f"{width}x{height}: authors' way {authors_s:7.2f} s ({mp / authors_s:.4f} MP/s); derain "
              f"({engine.tile}px tiles) {derain_s:7.2f} s ({mp / derain_s:.4f} MP/s); derain is "
              f"{authors_s / derain_s:.2f}x as fast; max output difference {np.abs(authors - ours).max():.0f}/255")


if __name__ == "__main__":
    main()
