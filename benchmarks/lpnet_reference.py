"""The authors' LPNet weights run through derain: Rain100L / Rain100H Y-PSNR and SSIM.

Usage: python benchmarks/lpnet_reference.py [--shared ../shared] [--tile 0]
Shows that derain's LPNet and engine score what the authors' own code scores here
(../shared/reference/README.md: Rain100L 33.42 / 0.9588 light model, Rain100H 23.40 /
0.8218 heavy model). Outputs are quantized both ways: truncation, as the authors' test
code saves them (uint8(x*255)), and rounding, as derain writes them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from derain_cli.data.pairs import find_pairs
from derain_cli.inference.engine import InferenceEngine
from derain_cli.methods import get_method
from derain_cli.methods.lpnet import LPNet, state_dict_from_tensorflow
from derain_cli.evaluation.metrics import psnr, ssim

AUTHORS = {"rain100l": (33.42, 0.9588), "rain100h": (23.40, 0.8218)}


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255).permute(2, 0, 1)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--tile", type=int, default=0, help="engine tile size (0 = whole image)")
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16")
    parser.add_argument("--regimes", default="rain100l,rain100h")
    args = parser.parse_args()
    spec = get_method("lpnet")
    for regime in args.regimes.split(","):
        ref_psnr, ref_ssim = AUTHORS[regime]
        model = LPNet()
        model.load_state_dict(state_dict_from_tensorflow(np.load(args.shared / f"reference/lpnet/official_{regime}.npz")))
        engine = InferenceEngine(model, spec, "cpu", precision=args.precision, tile=args.tile)
        rows = {"truncated": [], "rounded": []}
        for pair in find_pairs(args.shared / "data" / regime / "test"):
            rainy = np.asarray(Image.open(pair.rainy).convert("RGB"))
            clean = to_tensor(np.asarray(Image.open(pair.clean).convert("RGB")))
            out = engine.run(rainy.astype(np.float32) / 255)["image"]
            for name, q in (("truncated", np.floor(out * 255)), ("rounded", np.rint(out * 255))):
                t = to_tensor(q.astype(np.uint8))
                rows[name].append((psnr(t, clean).item(), ssim(t, clean).item()))
        for name, values in rows.items():
            p, s = np.mean(values, axis=0)
            print(f"{regime} ({len(values)} pairs, tile {args.tile}, {args.precision}, {name}): Y-PSNR {p:.2f} dB, SSIM {s:.4f}"
                  f"   authors' code here: {ref_psnr:.2f} / {ref_ssim:.4f}")


if __name__ == "__main__":
    main()
