"""The one training loop every method uses.

The method supplies its network; an objective (engine/objectives.py) supplies each step's
batch and loss terms (paired supervision, or semi-supervised adaptation on real rain). This
loop supplies the optimizer, schedule, precision (autocast), validation (Y-PSNR/SSIM through
the inference engine), atomic resumable checkpoints, logging and DistributedDataParallel when
started by torchrun.

Nothing in a step waits for the device: batches are cut where the data lives, loss terms
accumulate as device tensors and are read only at log points (``val_every``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from derain_cli.data.pairs import Pair, load_pair
from derain_cli.inference.precision import autocast, grad_scaler, training_precision
from derain_cli.inference.checkpoints import export_safetensors, load_training_state, save_atomic
from derain_cli.inference.device import pick_device
from derain_cli.inference.engine import InferenceEngine
from derain_cli.training.objectives.base import Objective
from derain_cli.errors import DerainError, Interrupted, UsageError
from derain_cli.methods import MethodSpec
from derain_cli.evaluation.metrics import score_uint8

SCHEDULES = ("constant", "cosine", "steps", "multistep:F1,F2,...:FACTOR")


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint and the training card."""

    method: str
    data: str
    out: str
    iterations: int
    batch_size: int
    patch_size: int
    lr: float
    weight_decay: float = 0.0
    schedule: str = "constant"
    val: str | None = None
    val_split: float = 0.0
    val_every: int = 1000
    checkpoint_every: int = 1000
    seed: int = 0
    device: str = "auto"
    tag: str = "custom"
    init: str | None = None  # start from these weights (a file, hf:// URL or method.tag) instead of random
    precision: str = "fp32"  # asked for: auto, fp32, bf16 or fp16 (engine/amp.py); the card says what ran
    compile: bool = False  # torch.compile the training step
    sampler: str = "host"  # where patches are cut: "device" (engine/patches.py) or "host" (data.PatchSampler)
    notes: str = ""
    extra: dict = field(default_factory=dict)  # rows for the card (objective, data used, ...)


class TrainStep(nn.Module):
    """Wraps a network and its objective so DistributedDataParallel sees the loss as the
    forward pass."""

    def __init__(self, net: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.net = net
        self.extras = nn.ModuleList(objective.extra_modules())  # trained with net (DDP averages them too)
        self.objective = objective

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.objective.losses(self.net, batch)


def split_pairs(pairs: list[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """Deterministic hold-out: every k-th pair (by sorted name) goes to validation."""
    if fraction <= 0:
        return pairs, []
    every = max(2, round(1 / fraction))
    return [p for i, p in enumerate(pairs) if i % every], [p for i, p in enumerate(pairs) if i % every == 0]


def multistep_milestones(schedule: str) -> tuple[tuple[float, ...], float]:
    """``multistep:0.3,0.5,0.8:0.2`` -> ((0.3, 0.5, 0.8), 0.2): the rate is multiplied by the
    factor at each fraction of the run (PReNet's x0.2 at epochs 30, 50 and 80 of 100)."""
    try:
        _, fractions, factor = schedule.split(":")
        milestones = tuple(float(f) for f in fractions.split(","))
        if not all(0 < f < 1 for f in milestones):
            raise ValueError
        return milestones, float(factor)
    except ValueError:
        raise UsageError(f"schedule '{schedule}': expected multistep:F1,F2,...:FACTOR with fractions of the run "
                         "between 0 and 1, e.g. multistep:0.3,0.5,0.8:0.2") from None


def check_schedule(schedule: str) -> None:
    if schedule.startswith("multistep"):
        multistep_milestones(schedule)
    elif schedule not in SCHEDULES:
        raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")


def _learning_rate(config: TrainConfig, step: int) -> float:
    if config.schedule.startswith("multistep"):
        milestones, factor = multistep_milestones(config.schedule)
        return config.lr * factor ** sum(step >= round(f * config.iterations) for f in milestones)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(step, config.iterations) / config.iterations))
    if config.schedule == "steps":  # x0.1 after a third of the run and again after two thirds (SIRR)
        return config.lr * 0.1 ** min(2, 3 * step // config.iterations)
    return config.lr


class Trainer:
    """Trains ``spec``'s network on ``objective`` as ``config`` says (its batch_size and
    patch_size are the objective's, recorded for the card); ``val_pairs`` are scored during
    training; ``log`` receives one-line progress."""

    def __init__(self, spec: MethodSpec, config: TrainConfig, objective: Objective, val_pairs: list[Pair],
                 log: Callable[[str], None] = print) -> None:
        check_schedule(config.schedule)
        self.spec, self.config, self.log = spec, config, log
        self.out = Path(config.out)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        for size in objective.batch_sizes():
            if size % self.world_size:
                raise UsageError(f"batch size {size} does not split over {self.world_size} processes")
        self.objective = objective
        self.device = self._init_device()
        self.precision = training_precision(config.precision, self.device, spec.bf16_training,
                                            warn=lambda m: log(f"warning: {m}"))
        self.scaler = grad_scaler(self.precision, self.device)
        if self.device.type == "cuda":  # fixed patch shapes: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        objective.to(self.device)
        if self.world_size > 1:
            self._broadcast(objective.adversary_parameters())  # DDP does this for what it wraps
        config.extra.update(objective.describe())
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        # channels-last throughout: faster on CPU, and the same layout the validation engine
        # uses, so a resumed run computes bit for bit what an uninterrupted one does
        self.net = spec.build()
        if config.init:
            self._load_init(config.init)
        self.net = self.net.to(self.device, memory_format=torch.channels_last)
        self.step_module: nn.Module = TrainStep(self.net, objective)
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers are not sent at each step: pyramid kernels are constants, and batch-norm
            # running statistics may differ per process (rank 0's are the ones saved)
            self.step_module = DistributedDataParallel(self.step_module, device_ids=ids, **_no_buffer_sync())
        if config.compile:  # after DDP, as torch documents; the first steps pay for compiling
            self.step_module = torch.compile(self.step_module)
        self.optimizer = torch.optim.Adam([*self.net.parameters(), *objective.extra_parameters()], lr=config.lr,
                                          weight_decay=config.weight_decay, **objective.optimizer_options())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _learning_rate(config, s) / config.lr)
        self.val_data = [load_pair(p) for p in val_pairs] if self.rank == 0 else []
        self.step, self.best, self.history = 0, None, []
        self._signal: int | None = None  # SIGINT/SIGTERM received while training
        self._catching = False  # in stopping_on_signals
        self.started = time.time()
        self.elapsed_before = 0.0

    def _load_init(self, weights: str) -> None:
        from derain_cli.weights.loading import load_into, read_state_dict
        from derain_cli.weights.resolve import resolve

        if Path(weights).is_file() or weights.startswith("hf://"):
            resolved = resolve(self.spec.name, weights)
        else:  # a manifest name such as lpnet.rain100l
            if not weights.startswith(self.spec.name + "."):
                raise UsageError(f"--init {weights}: not a {self.spec.name} checkpoint name or file")
            resolved = resolve(weights)
        load_into(self.net, read_state_dict(resolved.path), resolved.label, self.spec.name)

    def _init_device(self) -> torch.device:
        if self.world_size == 1:
            return pick_device(self.config.device)
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and self.config.device != "cpu"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")

    # -- checkpoints ---------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out / "last.pth"

    def state(self) -> dict:
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "precision": self.precision,  # what ran (config holds what was asked)
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "objective": self.objective.state_dict(),
            "objective_name": self.objective.name,
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "elapsed": self.elapsed(),
            "config": asdict(self.config),
        }

    def resume(self) -> None:
        if not self.last_path.is_file():
            raise UsageError(f"--resume: no checkpoint at {self.last_path}")
        state = load_training_state(self.last_path)
        self._check_same_run(state)
        self.net.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state.get("objective", {}))
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.elapsed_before = state["elapsed"]
        self.log(f"resumed from {self.last_path} at step {self.step}")

    # what a resumed run may change: its length, logging, device (and with it the precision
    # and compilation that suit the device) and place (of the run and of the same data)
    _RESUMABLE_CHANGES = ("iterations", "val_every", "checkpoint_every", "device", "out", "notes", "extra",
                          "precision", "compile", "data", "val")
    # settings checkpoints written before a setting existed ran with
    _BEFORE_SETTING = {"sampler": "host"}

    def _check_same_run(self, state: dict) -> None:
        saved, now = dict(state.get("config", {})), asdict(self.config)
        for key, value in self._BEFORE_SETTING.items():
            saved.setdefault(key, value)
        changed = [k for k in now if k not in self._RESUMABLE_CHANGES and k in saved and saved[k] != now[k]]
        if state.get("objective_name", self.objective.name) != self.objective.name:
            changed.insert(0, f"objective ({state['objective_name']} -> {self.objective.name})")
        if changed:
            details = ", ".join(c if c.startswith("objective") else f"{c} ({saved[c]} -> {now[c]})" for c in changed)
            raise UsageError(f"--resume: {self.last_path} was started with other settings: {details}")

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    @staticmethod
    def _broadcast(parameters: list[nn.Parameter]) -> None:
        import torch.distributed as dist

        with torch.no_grad():
            for p in parameters:
                dist.broadcast(p.data, 0)

    def save(self) -> None:
        if self.rank == 0:
            save_atomic(self.state(), self.last_path)

    # -- validation ----------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        engine = InferenceEngine(self.net, self.spec, self.device, precision="fp32", tile=0)
        scores = []
        for rainy, clean in self.val_data:
            scores.append(score_uint8(engine.run(rainy)["image"], clean))
        self.net.train()
        p, s = np.mean(scores, axis=0)
        return {"psnr_y": float(p), "ssim_y": float(s)}

    # -- the loop ------------------------------------------------------------------
    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step at ``self.step`` (not advanced); its loss terms, on the device."""
        batch = self.objective.batch(self.step, self.rank, self.world_size)
        batch = {k: _to_device(v, self.device) for k, v in batch.items()}
        adversary = self.objective.adversary_step(self.net, batch)  # in float32, before the network's step
        with autocast(self.precision, self.device):
            losses = self.step_module(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            losses["loss"].backward()
            self.optimizer.step()
        self.scheduler.step()
        return {**losses, **adversary}

    # under torchrun the processes agree on stopping (time budget, a signal) every this many steps
    SYNC_EVERY = 20

    def _stop_reason(self, stop_at: float | None) -> int | str | None:
        """Checked before each step: "time" once ``stop_at`` has passed, the number of a signal
        received (SIGINT, SIGTERM), else None. Under torchrun the processes decide together
        every SYNC_EVERY steps (one small all-reduce), so they all stop at the same step."""
        time_up = stop_at is not None and time.time() >= stop_at
        if self.world_size == 1:
            return self._signal or ("time" if time_up else None)
        if self.step % self.SYNC_EVERY:  # no extra synchronisation per step
            return None
        import torch.distributed as dist

        flags = torch.tensor([float(time_up), float(self._signal or 0)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return int(flags[1].item()) or ("time" if flags[0].item() else None)

    @contextmanager
    def stopping_on_signals(self) -> Iterator[None]:
        """While in it (train() enters it; a caller may enter it earlier, so that a signal
        before the first step counts too), SIGINT and SIGTERM ask the loop to stop at the next
        step boundary (where it writes the checkpoint); a second one in a single process stops
        at once, without one. Under torchrun a repeated signal only repeats the request
        (torchrun's agent follows a Ctrl-C with SIGTERM). Outside the main thread signals are
        left alone."""
        if self._catching or threading.current_thread() is not threading.main_thread():
            yield
            return
        self._signal, self._catching = None, True

        def request_stop(signum, frame):
            if self._signal is not None and self.world_size == 1:
                raise Interrupted(signum, step=self.step)
            self._signal = self._signal or signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._catching = False

    def _stop_for_signal(self, signum: int) -> None:
        """Write the checkpoint of this step boundary (rank 0; the others wait for it) and raise
        Interrupted, which says where it is."""
        self.save()
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()  # no process exits (and has torchrun end the others) before rank 0 has written
        raise Interrupted(signum, self.last_path if self.rank == 0 else None, self.step)

    def train(self, on_step: Callable[[int, dict], None] | None = None, stop_at: float | None = None) -> dict:
        """Train to ``config.iterations``, or until ``time.time()`` passes ``stop_at`` (checked
        before each step; the checkpoint is then written, so ``--resume`` continues). ``on_step``
        gets each step's number and, at log points, the record (loss terms, validation), else {}.

        SIGINT (Ctrl-C) or SIGTERM stops the run at the next step boundary: the step under way
        finishes, the checkpoint of that step is written (``--resume`` continues exactly) and
        Interrupted is raised, naming it."""
        with self.stopping_on_signals():
            self._loop(on_step, stop_at)
        return self.finish()

    def _loop(self, on_step: Callable[[int, dict], None] | None, stop_at: float | None) -> None:
        config = self.config
        self.net.train()
        running: dict[str, torch.Tensor] = {}
        counted = 0
        while self.step < config.iterations:
            reason = self._stop_reason(stop_at)
            if reason == "time":
                self.log(f"time budget reached at step {self.step}; checkpoint written")
                self.save()
                break
            if reason is not None:
                self._stop_for_signal(reason)
            losses = self.train_step()
            self.step += 1
            counted += 1
            for k, v in losses.items():  # summed on the device: no host synchronisation per step
                v = v.detach().float()
                running[k] = running[k] + v if k in running else v
            record = None
            if self.step % config.val_every == 0 or self.step == config.iterations:
                record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0],
                          **{k: float(v) / counted for k, v in running.items()},
                          "elapsed_s": round(self.elapsed(), 1)}
                running, counted = {}, 0
                if self.rank == 0 and self.val_data:
                    record.update(self.validate())
                    if self.objective.pick_best and (self.best is None or record["psnr_y"] > self.best["psnr_y"]):
                        self.best = {"step": self.step, "psnr_y": record["psnr_y"], "ssim_y": record["ssim_y"]}
                        export_safetensors(self.net.state_dict(), self.out / "best.safetensors")
                self.history.append(record)
                if self.rank == 0:
                    with open(self.out / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
            if self.step % config.checkpoint_every == 0 or self.step == config.iterations:
                self.save()
            if on_step is not None:
                on_step(self.step, record or {})

    def finish(self) -> dict:
        """Final weights (and best, if validated) as safetensors, plus a manifest entry."""
        if self.world_size > 1:
            params = [*self.net.parameters(), *self.objective.extra_parameters(),
                      *self.objective.adversary_parameters()]
            check_same_weights(params, self.world_size)  # a collective: also the barrier before rank 0 writes
        if self.rank != 0:
            return {}
        sha = export_safetensors(self.net.state_dict(), self.out / "final.safetensors")
        chosen = self.out / "final.safetensors"
        if self.best:  # the best validated weights, not necessarily the last
            chosen = self.out / "best.safetensors"
            sha = hashlib.sha256(chosen.read_bytes()).hexdigest()
        summary = {
            "checkpoint": str(chosen), "sha256": sha, "best": self.best, "last_validation": _last_validation(self.history),
            "steps": self.step,
            "wall_time_s": round(self.elapsed(), 1), "hardware": hardware(self.device, self.world_size),
            "precision": self.precision, "compiled": self.config.compile,
            "complete": self.step >= self.config.iterations,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        (self.out / "weights_entry.toml").write_text(manifest_entry(self.config, chosen.name, sha, summary))
        (self.out / "card.md").write_text(training_card(self.config, summary, self.history))
        return summary


def _no_buffer_sync() -> dict:
    """DDP's switch for not syncing buffers at every forward: ``forward_sync_buffers`` where
    torch has it (``broadcast_buffers`` is deprecated there), else ``broadcast_buffers``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def check_same_weights(parameters: list[torch.Tensor], world_size: int) -> None:
    """Under torchrun, every process must end with the same trained weights (a gap in gradient
    averaging would otherwise export rank 0's half of a diverged run): compare fingerprints
    (sum and absolute sum in float64) of ``parameters``; DerainError on every process if any differ."""
    import torch.distributed as dist

    with torch.no_grad():
        mine = torch.stack([sum(p.double().sum() for p in parameters), sum(p.double().abs().sum() for p in parameters)])
    everyone = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(everyone, mine)
    if any(not torch.equal(other, everyone[0]) for other in everyone):
        raise DerainError(f"the {world_size} processes ended with different weights (fingerprints "
                          f"{[t.tolist() for t in everyone]}): their gradients were not averaged; nothing exported")


def _last_validation(history: list[dict]) -> dict | None:
    scored = [h for h in history if "psnr_y" in h]
    return {k: scored[-1][k] for k in ("step", "psnr_y", "ssim_y")} if scored else None


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """On ``device``, images channels-last (the network's layout); a no-op for a batch cut there."""
    tensor = tensor.to(device, non_blocking=True)
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def hardware(device: torch.device, world_size: int) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{world_size} x {what}" if world_size > 1 else what


_NOT_LOSSES = ("step", "lr", "elapsed_s", "psnr_y", "ssim_y")


def _precision_row(config: TrainConfig, summary: dict) -> str:
    used = summary.get("precision", "fp32")
    what = "fp32" if used == "fp32" else f"{used} autocast (weights and optimizer fp32)"
    asked = f" (asked: {config.precision})" if config.precision != used else ""
    return f"{what}{asked}{', torch.compile' if config.compile else ''}"


def _validation(config: TrainConfig) -> str:
    if config.val:
        return config.val
    return f"held-out {config.val_split:.0%} of the pairs" if config.val_split else "none"


def training_card(config: TrainConfig, summary: dict, history: list[dict]) -> str:
    """A Markdown training card for docs/weights/: data, schedule, hardware, time, curve."""
    name = f"{config.method}.{config.tag}"
    lines = [
        f"# {name}", "",
        "| | |", "|---|---|",
        f"| data | `{config.data}` (validation: {_validation(config)}) |",
        f"| iterations | {summary['steps']:,}{'' if summary.get('complete', True) else f' of {config.iterations:,} planned'} (batch {config.batch_size}, {config.patch_size}x{config.patch_size} patches) |",
        f"| initialised from | {config.init or 'random'} |",
        *(f"| {key} | {value} |" for key, value in config.extra.items()),
        f"| optimizer | Adam, lr {config.lr}, {config.schedule} schedule, weight decay {config.weight_decay} |",
        f"| precision | {_precision_row(config, summary)} |",
        f"| seed | {config.seed} |",
        f"| hardware | {summary['hardware']} |",
        f"| wall time | {summary['wall_time_s'] / 3600:.2f} h |",
        f"| sha256 | `{summary['sha256']}` |",
    ]
    if summary["best"]:
        b = summary["best"]
        lines.append(f"| best validation | Y-PSNR {b['psnr_y']:.2f} dB, SSIM {b['ssim_y']:.4f} at step {b['step']:,} |")
    elif summary.get("last_validation"):
        v = summary["last_validation"]
        lines.append(f"| validation at the end (watched, weights not chosen by it) | Y-PSNR {v['psnr_y']:.2f} dB, "
                     f"SSIM {v['ssim_y']:.4f} at step {v['step']:,} |")
    if history:
        terms = {k: v for k, v in history[-1].items() if k not in _NOT_LOSSES}
        lines.append(f"| loss terms at the end | {', '.join(f'{k} {v:.4g}' for k, v in terms.items())} |")
    curve = [h for h in history if "psnr_y" in h]
    if curve:
        lines += ["", "Validation curve:", "", "| step | loss | Y-PSNR | SSIM |", "|---|---|---|---|"]
        lines += [f"| {h['step']:,} | {h.get('loss', float('nan')):.4f} | {h['psnr_y']:.2f} | {h['ssim_y']:.4f} |" for h in curve]
    return "\n".join(lines) + "\n"


def manifest_entry(config: TrainConfig, filename: str, sha: str, summary: dict) -> str:
    best, last = summary["best"], summary.get("last_validation")
    score = (f", validation Y-PSNR {best['psnr_y']:.2f} dB / SSIM {best['ssim_y']:.4f} at step {best['step']}" if best
             else f", last validation Y-PSNR {last['psnr_y']:.2f} dB / SSIM {last['ssim_y']:.4f} (weights of step "
             f"{summary['steps']})" if last else "")
    command = config.extra.get("command", "derain train")
    trained = (f"{command} on {config.data}: {summary['steps']} iterations, batch {config.batch_size}, "
               f"{config.patch_size}px patches, lr {config.lr} ({config.schedule})"
               f"{f', from {config.init}' if config.init else ''}, {summary['hardware']}"
               f"{'' if summary.get('precision', 'fp32') == 'fp32' else ', ' + summary['precision'] + ' autocast'}, "
               f"{summary['wall_time_s'] / 3600:.2f} h{score}")
    # json strings are valid TOML basic strings (quotes and backslashes escaped)
    return (f"[{config.method}.{config.tag}]\n"
            f'file = "{config.method}_{config.tag}.safetensors"  # copy {filename} here\n'
            f'sha256 = "{sha}"\nlicense = "MIT"\ntrained = {json.dumps(trained)}\n')
