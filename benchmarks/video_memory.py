"""Memory of video deraining over a long clip: does RSS stay flat as frames stream through?

Usage: python benchmarks/video_memory.py [--frames 3000]
Writes a 640x360 H.264 + AAC clip, runs derain_video over it with an identity network (the
engine's own memory is per batch and measured elsewhere) and the temporal filter on, and
prints the process RSS at each quarter of the frames and the peak.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from derain_cli.media.video import derain_video


def write_clip(path: Path, frames: int) -> None:
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 640, 360, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for k in range(frames):
            frame = np.full((360, 640, 3), 90, np.uint8)
            frame[:, (7 * k) % 640] = 255  # something moves, so every frame differs
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        samples = (0.2 * np.sin(np.arange(16000 * frames // 30) / 7)).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="mono")
            chunk.sample_rate = 16000
            for packet in audio.encode(chunk):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp, "long.mp4")
        write_clip(clip, args.frames)
        done, marks = 0, []

        def progress(count: int) -> None:
            nonlocal done
            done += count
            if done % (args.frames // 4) < count:
                marks.append(f"{done} frames {rss_mb():.0f} MB")

        start = time.perf_counter()
        derain_video(clip, Path(tmp, "out.mp4"), lambda frames: frames, on_frames=progress)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.frames} frames of 640x360 + AAC in {time.perf_counter() - start:.1f} s; RSS at {', '.join(marks)}; peak {peak:.0f} MB")


if __name__ == "__main__":
    main()
