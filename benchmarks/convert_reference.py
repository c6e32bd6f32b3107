"""Convert the authors' released weights in ../shared/reference to safetensors for derain.

Usage: python benchmarks/convert_reference.py --out /tmp/derain-reference
Writes lpnet_official_rain100l.safetensors, lpnet_official_rain100h.safetensors and
ddn_sirr_official.safetensors into --out, to use with `derain remove/benchmark --weights`.
These files carry no licence: keep them out of the repository and never redistribute them.
(PReNet's .pth checkpoints load as they are.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from derain_cli.methods import ddn, lpnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        parser.error("--out must lie outside the repository: these weights must not be committed")
    args.out.mkdir(parents=True, exist_ok=True)
    ref = args.shared / "reference"
    jobs = {
        "lpnet_official_rain100l": lpnet.state_dict_from_tensorflow(np.load(ref / "lpnet/official_rain100l.npz")),
        "lpnet_official_rain100h": lpnet.state_dict_from_tensorflow(np.load(ref / "lpnet/official_rain100h.npz")),
        "ddn_sirr_official": ddn.state_dict_from_tensorflow(np.load(ref / "sirr/official.npz")),
    }
    for name, state in jobs.items():
        path = args.out / f"{name}.safetensors"
        save_file(state, str(path))
        print(path)


if __name__ == "__main__":
    main()
