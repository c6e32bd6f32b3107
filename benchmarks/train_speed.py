"""Training speed per method, device and precision, against the device's own conv throughput.

    python benchmarks/train_speed.py --device cpu --threads 2                # paper batches
    torchrun --standalone --nproc_per_node 2 benchmarks/train_speed.py --device cpu --threads 1
    python benchmarks/train_speed.py --device cuda --precision fp32 bf16 --compile
    python benchmarks/train_speed.py --compare-bf16 20 --batch 4 --patch 48   # loss curves

For each method: iterations/s and patches/s of the real training step (engine/training.py:
device-side patches, autocast, DDP under torchrun) at the paper's batch and patch size; the
step's FLOPs (torch.utils.flop_counter, forward + backward); and the fraction of the device's
conv throughput the step reaches, measured in the same run with a 3x3 convolution of the
method's most common width at the same batch, patch size and precision.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from derain_cli.data.pairs import PatchSampler
from derain_cli.inference.precision import autocast
from derain_cli.training.objectives.base import SupervisedObjective
from derain_cli.data.device_patches import DevicePatchSampler, PairBank
from derain_cli.training.trainer import TrainConfig, Trainer
from derain_cli.methods import get_method, list_methods


def synthetic_bank(pairs: int = 8, size=(321, 481)) -> PairBank:
    """Rain100-sized pictures; speed does not depend on their content."""
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 256, (*size, 3), dtype=np.uint8), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
              for _ in range(pairs)]
    return PairBank.from_arrays(images)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "cpu" and torch.distributed.is_initialized():
        torch.distributed.barrier()


def host_sampler(bank: PairBank, patch: int, batch: int) -> PatchSampler:
    """The reference sampler (cuts on the CPU, per patch) over the same pictures."""
    sampler = PatchSampler([], patch, batch)
    sampler.rainy = [bank.rainy[i, :h, :w].permute(2, 0, 1).contiguous() for i, (h, w) in enumerate(bank.sizes.tolist())]
    sampler.clean = [bank.clean[i, :h, :w].permute(2, 0, 1).contiguous() for i, (h, w) in enumerate(bank.sizes.tolist())]
    return sampler


def make_trainer(method: str, args, precision: str, bank: PairBank, folder: str, sampler: str = "device") -> Trainer:
    spec = get_method(method)
    batch, patch = args.batch or spec.recipe.batch_size, args.patch or spec.recipe.patch_size
    config = TrainConfig(method=method, data="synthetic", out=folder, iterations=10**9, batch_size=batch,
                         patch_size=patch, lr=spec.recipe.lr, device=args.device, precision=precision,
                         compile=args.compile, sampler=sampler, val_every=10**9, checkpoint_every=10**9)
    objective = SupervisedObjective(DevicePatchSampler(bank, patch, batch, seed=0) if sampler == "device"
                                    else host_sampler(bank, patch, batch))
    return Trainer(spec, config, objective, [], log=lambda m: None)


def step_flops(trainer: Trainer) -> float:
    """FLOPs of one forward + backward of this process's share of the batch."""
    batch = trainer.objective.batch(0, trainer.rank, trainer.world_size)
    with FlopCounterMode(display=False) as counter:
        trainer.net.training_loss(batch["rainy"].to(trainer.device), batch["clean"].to(trainer.device))["loss"].backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def typical_width(net: nn.Module) -> int:
    """The most common output width of the network's 3x3 convolutions."""
    widths = collections.Counter(m.out_channels for m in net.modules()
                                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    return widths.most_common(1)[0][0]


def conv_throughput(width: int, batch: int, patch: int, precision: str, device: torch.device, seconds: float) -> float:
    """FLOP/s of a 3x3 ``width``->``width`` convolution, forward + backward, channels-last."""
    conv = nn.Conv2d(width, width, 3, padding=1).to(device, memory_format=torch.channels_last)
    x = torch.randn(batch, width, patch, patch, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def once():
        with autocast(precision, device):
            y = conv(x)
        y.float().sum().backward()

    with FlopCounterMode(display=False) as counter:
        once()
    flops = counter.get_total_flops()
    once()
    sync(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        once()
        n += 1
    sync(device)
    return flops * n / (time.perf_counter() - start)


def measure(method: str, precision: str, sampler: str, args, bank: PairBank) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(method, args, precision, bank, folder, sampler)
        flops = step_flops(trainer) * trainer.world_size
        for _ in range(args.warmup):
            trainer.train_step()
            trainer.step += 1
        sync(trainer.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
            trainer.step += 1
        sync(trainer.device)
        seconds = (time.perf_counter() - start) / args.steps
        batch, patch = trainer.config.batch_size, trainer.config.patch_size
        width = typical_width(trainer.net)
        conv = conv_throughput(width, batch // trainer.world_size, patch, trainer.precision, trainer.device,
                               args.conv_seconds) * trainer.world_size
        return {"method": method, "device": str(trainer.device), "precision": trainer.precision, "sampler": sampler,
                "processes": trainer.world_size, "threads": torch.get_num_threads(), "compiled": args.compile,
                "batch": batch, "patch": patch, "it_per_s": 1 / seconds, "patches_per_s": batch / seconds,
                "gflop_per_step": flops / 1e9, "gflop_per_s": flops / seconds / 1e9, "conv_width": width,
                "conv_gflop_per_s": conv / 1e9, "fraction_of_conv": flops / seconds / conv}


def compare_bf16(method: str, args, bank: PairBank) -> dict:
    """Loss per step of fp32 and bf16 autocast from the same start on the same batches."""
    curves = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as folder:
            trainer = make_trainer(method, args, precision, bank, folder)
            curve = []
            for _ in range(args.compare_bf16):
                curve.append(float(trainer.train_step()["loss"].detach()))
                trainer.step += 1
            curves[precision] = curve
    a, b = np.array(curves["fp32"]), np.array(curves["bf16"])
    return {"method": method, "steps": len(a), "fp32_first_last": [a[0], a[-1]], "bf16_first_last": [b[0], b[-1]],
            "max_relative_difference": float(np.max(np.abs(b - a) / np.abs(a)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=[m.name for m in list_methods()])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["auto"])
    parser.add_argument("--sampler", nargs="+", default=["device"], help="device (derain train's) and/or host (reference)")
    parser.add_argument("--threads", type=int, help="torch threads per process")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch", type=int, help="default: the paper's")
    parser.add_argument("--patch", type=int, help="default: the paper's")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--conv-seconds", type=float, default=2.0)
    parser.add_argument("--compare-bf16", type=int, metavar="STEPS", help="loss curves fp32 vs bf16 instead")
    parser.add_argument("--json", help="append one JSON line per measurement here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bank = synthetic_bank()
    rank0 = int(os.environ.get("RANK", "0")) == 0
    for method in args.methods:
        rows = ([compare_bf16(method, args, bank)] if args.compare_bf16
                else [measure(method, p, s, args, bank) for p in args.precision for s in args.sampler])
        for row in rows:
            if not rank0:
                continue
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
