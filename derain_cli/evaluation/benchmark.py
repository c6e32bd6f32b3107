"""Scoring methods on paired test sets: quality (paper convention), speed and memory."""

from __future__ import annotations

import resource
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from derain_cli.data.pairs import find_pairs, load_pair
from derain_cli.evaluation.metrics import score_uint8

PUBLISHED_FILE = Path(__file__).with_name("published.toml")
CONVENTION = {
    "y": "PSNR/SSIM on the Y channel of MATLAB rgb2ycbcr (BT.601, [0,255]), Gaussian 11x11 SSIM, no crop",
    "rgb": "PSNR/SSIM on RGB ([0,255]; SSIM averaged over channels), Gaussian 11x11 SSIM, no crop",
}
QUANTIZE = {
    "round": "outputs rounded to uint8 (as derain writes them)",
    "truncate": "outputs truncated to uint8, uint8(x*255) (as most authors' test code saves them)",
}


def convention(channel: str, quantize: str) -> str:
    return f"{CONVENTION[channel]}; {QUANTIZE[quantize]}"


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float
    seconds: float
    megapixels: float


@dataclass
class BenchmarkResult:
    method: str
    weights: str
    dataset: str
    channel: str
    device: str
    parameters: int
    images: list[ImageScore] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    peak_device_mb: float | None = None

    @property
    def psnr(self) -> float:
        return float(np.mean([i.psnr for i in self.images]))

    @property
    def ssim(self) -> float:
        return float(np.mean([i.ssim for i in self.images]))

    @property
    def seconds_per_image(self) -> float:
        return float(np.mean([i.seconds for i in self.images]))

    @property
    def megapixels_per_second(self) -> float:
        return sum(i.megapixels for i in self.images) / max(sum(i.seconds for i in self.images), 1e-9)

    def summary(self) -> dict:
        return {
            "method": self.method, "weights": self.weights, "dataset": self.dataset, "channel": self.channel,
            "pairs": len(self.images), "psnr": round(self.psnr, 4), "ssim": round(self.ssim, 5),
            "seconds_per_image": round(self.seconds_per_image, 4), "mp_per_s": round(self.megapixels_per_second, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1), "peak_device_mb": self.peak_device_mb,
            "parameters": self.parameters, "device": self.device,
        }


def dataset_name(folder: Path) -> str:
    """``.../rain100l/test`` -> ``rain100l``; other folders keep their own name."""
    folder = Path(folder)
    return (folder.parent.name if folder.name in ("test", "train", "val") else folder.name).lower()


def published_scores(channel: str = "y") -> dict[tuple[str, str], dict]:
    if channel != "y":
        return {}
    rows = tomllib.loads(PUBLISHED_FILE.read_text(encoding="utf-8"))["score"]
    return {(r["method"], r["dataset"]): r for r in rows}


def authors_checkpoints(folders: list[Path]) -> dict[str, list[Path]]:
    """The authors' released checkpoints trained for these data sets (``METHOD.authors-DATASET``
    in weights.toml, e.g. ``prenet.authors-rain100l`` for ``.../rain100l/test``), each with its
    folders; `benchmark --published` runs them beside the chosen methods."""
    from derain_cli.weights.manifest import AUTHORS_PREFIX, load_manifest

    runs: dict[str, list[Path]] = {}
    for entry in load_manifest().values():
        matching = [f for f in folders if entry.by_authors and entry.tag == AUTHORS_PREFIX + dataset_name(f)]
        if matching:
            runs[entry.name] = matching
    return runs


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate(restorer, folder: Path, channel: str = "y", limit: int | None = None,
             quantize: str = "round") -> BenchmarkResult:
    """Run ``restorer`` (api.Restorer) over every pair in ``folder`` and score it."""
    to_uint8 = {"round": np.rint, "truncate": np.floor}[quantize]
    engine = restorer.engine
    result = BenchmarkResult(
        method=restorer.spec.name, weights=restorer.weights.label if restorer.weights else "-",
        dataset=dataset_name(folder), channel=channel, device=engine.describe(),
        parameters=sum(p.numel() for p in engine.model.parameters()),
    )
    pairs = find_pairs(folder)[:limit]
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    restorer.run(load_pair(pairs[0])[0])  # warm-up, not timed
    for pair in pairs:
        rainy, clean = load_pair(pair)
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        start = time.perf_counter()
        out = restorer.run(rainy.astype(np.float32) / 255)["image"]
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        seconds = time.perf_counter() - start
        out = to_uint8(np.clip(out, 0, 1) * 255).astype(np.uint8)
        result.images.append(ImageScore(pair.name, *score_uint8(out, clean, channel),
                                        seconds, rainy.shape[0] * rainy.shape[1] / 1e6))
    result.peak_rss_mb = _peak_rss_mb()
    if engine.device.type == "cuda":
        result.peak_device_mb = torch.cuda.max_memory_allocated(engine.device) / 2**20
    return result


INPUT = "input"  # the row of the rainy inputs themselves (no deraining)


def evaluate_input(folder: Path, channel: str = "y", limit: int | None = None) -> BenchmarkResult:
    """The rainy inputs scored as they are against their clean images: the "no deraining" row
    papers print first, what every method has to improve on."""
    result = BenchmarkResult(method=INPUT, weights="-", dataset=dataset_name(folder), channel=channel, device="-",
                             parameters=0)
    for pair in find_pairs(folder)[:limit]:
        rainy, clean = load_pair(pair)
        result.images.append(ImageScore(pair.name, *score_uint8(rainy, clean, channel), 0.0,
                                        rainy.shape[0] * rainy.shape[1] / 1e6))
    return result
