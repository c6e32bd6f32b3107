"""`derain remove` time of checkpoints on one large picture, alternated in one run.

Usage: python benchmarks/checkpoint_speed.py -m lpnet.rain100l -m lpnet.real [--size 4000x3000] [--rounds 3]

Each round runs every checkpoint once as a child process (start-up, decode, derain, encode:
what a user waits for), in turn, so that a busy machine slows them alike; prints each one's
best and median seconds and its ratio to the first checkpoint's best. A checkpoint may be
METHOD.TAG or METHOD=FILE (a run's weights before they ship).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from remove_speed import picture


def command(checkpoint: str, source: Path, out: Path) -> list[str]:
    method, _, weights = checkpoint.partition("=")
    extra = ["--weights", weights] if weights else []
    return [sys.executable, "-m", "derain_cli", "remove", str(source), "-m", method, *extra, "--device", "cpu",
            "-q", "--overwrite", "-o", str(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", action="append", required=True)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    times: dict[str, list[float]] = {m: [] for m in args.model}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "big.jpg")
        picture(source, width, height)
        for _ in range(args.rounds):
            for model in args.model:
                start = time.perf_counter()
                subprocess.run(command(model, source, Path(tmp, "out.jpg")), check=True)
                times[model].append(time.perf_counter() - start)
    first = min(times[args.model[0]])
    print(f"derain remove, {width}x{height} JPEG ({width * height / 1e6:.1f} MP), {args.rounds} alternated rounds")
    for model, seconds in times.items():
        print(f"  {model:40s} best {min(seconds):6.2f} s  median {statistics.median(seconds):6.2f} s  "
              f"{min(seconds) / first:4.2f}x {args.model[0]}")


if __name__ == "__main__":
    main()
