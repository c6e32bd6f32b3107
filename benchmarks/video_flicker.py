"""Temporal flicker of derained video: a still and a panning scene, fresh synthetic rain per frame.

Usage: python benchmarks/video_flicker.py [--method lpnet] [--style light] [--frames 24]
The scene is a Rain100L clean test picture when ../shared is present (else a gradient); the
panning clip moves across it 3 pixels per frame. Flicker = mean absolute difference between
consecutive frames (8-bit levels, RGB): on the still scene the clean video has none, so
what the output shows is rain left behind. Y-PSNR is against each frame's clean scene, so
it also catches ghosting from the temporal filter on the panning clip. Record the figures in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from derain_cli.api import load
from derain_cli.evaluation.metrics import score_uint8
from derain_cli.data.synth import STYLES, add_rain
from derain_cli.media.video import VideoOptions, derain_video

SCENE = Path(__file__).resolve().parents[2] / "shared/data/rain100l/test/norain/norain-1.png"


def scene() -> np.ndarray:
    if SCENE.is_file():
        return np.asarray(Image.open(SCENE).convert("RGB"))
    y, x = np.mgrid[0:320, 0:480].astype(np.float32)
    return (np.stack([x / 480, y / 320, 0.5 + 0.3 * np.sin(x / 9)], axis=2) * 220).astype(np.uint8)


def clean_frames(count: int, panning: bool, height: int = 240, width: int = 320) -> list[np.ndarray]:
    big = scene()
    step = 3 if panning else 0
    width = min(width, big.shape[1] - step * count) // 2 * 2
    return [np.ascontiguousarray(big[:height, step * k : step * k + width]) for k in range(count)]


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 24) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "12"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def read_clip(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def flicker(frames: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(a.astype(np.float32) - b).mean() for a, b in zip(frames, frames[1:])]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lpnet")
    parser.add_argument("--style", default="light", choices=sorted(STYLES))
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--temporal", type=float, nargs="+", default=[0.0, 0.7])
    args = parser.parse_args()
    restorer = load(args.method, device="cpu")
    derain = lambda frames: [o["image"] for o in restorer.engine.run_batch(frames)]  # noqa: E731
    print(f"{args.method} ({restorer.weights.label}), {args.style} rain, {args.frames} frames")
    with tempfile.TemporaryDirectory() as tmp:
        for panning in (False, True):
            cleans = clean_frames(args.frames, panning)
            rainy_clip, clean_clip = Path(tmp, "rainy.mp4"), Path(tmp, "clean.mp4")
            write_clip(rainy_clip, [add_rain(c, STYLES[args.style], 3, k) for k, c in enumerate(cleans)])
            write_clip(clean_clip, cleans)
            rows = [("clean scene through the codec", clean_clip), ("rainy input", rainy_clip)]
            for strength in args.temporal:
                out = Path(tmp, f"out{strength}.mp4")
                derain_video(rainy_clip, out, derain, VideoOptions(temporal=strength))
                rows.append((f"derained, --temporal {strength:g}", out))
            print(f"{'panning' if panning else 'still'} scene, {cleans[0].shape[1]}x{cleans[0].shape[0]}:")
            for name, path in rows:
                frames = read_clip(path)
                score = np.mean([score_uint8(f, c)[0] for f, c in zip(frames, cleans)])
                print(f"  {name:32s} flicker {flicker(frames):5.2f}   Y-PSNR vs clean {score:5.2f} dB")


if __name__ == "__main__":
    main()
