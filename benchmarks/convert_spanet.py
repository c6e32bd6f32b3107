"""Convert the SPANet authors' released checkpoint to derain's bundled ``spanet.spa`` file.

Usage: python benchmarks/convert_spanet.py [--shared ../shared]
Reads ``reference/spanet/spanet_spa_latest.pt`` (its ``net`` state dict: weights only, loaded
with ``weights_only=True``), checks that it loads strictly into derain's SPANet, and writes
``derain_cli/weights/files/spanet_spa.safetensors``; prints its sha256 for weights.toml.
The authors' licence permits redistribution with their notice, which docs/weights/spanet.spa.md
reproduces (the only reference checkpoint derain may ship; see ../shared/reference/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from derain_cli.methods import get_method
from derain_cli.weights.manifest import BUNDLED_DIR

SOURCE_SHA256 = "3b5d58d0f4569004a0d2dc6f4373463bd60991fc8a04c061361357cf012e5eb0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    source = args.shared / "reference" / "spanet" / "spanet_spa_latest.pt"
    if hashlib.sha256(source.read_bytes()).hexdigest() != SOURCE_SHA256:
        parser.error(f"{source} is not the authors' released file (sha256 differs)")
    state = torch.load(source, map_location="cpu", weights_only=True)["net"]
    get_method("spanet").build().load_state_dict(state, strict=True)
    out = BUNDLED_DIR / "spanet_spa.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(out),
              metadata={"source": f"stevewongv/SPANet model/latest, sha256 {SOURCE_SHA256}", "licence": "see docs/weights/spanet.spa.md"})
    print(out, hashlib.sha256(out.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
