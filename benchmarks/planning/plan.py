"""The training plan (``training_plan.toml``): run as much of it as fits in a time budget.

Each entry is a ``derain train`` command at its paper's full schedule. ``run_plan`` walks the
entries in order, resumes runs that exist (they live in the user data directory, so a later
session on the same machine continues them), gives each the time left minus what scoring will
need, stops it cleanly (``--minutes``: the checkpoint is written) before the budget ends,
scores every run on its test set with ``derain benchmark`` and says which beat the shipped
checkpoint. Commands run as child processes, exactly as a person would type them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from derain_cli.errors import UsageError

STARTUP_S = 45  # a child's imports, data decoding and final export, beyond its --minutes
MIN_TRAINING_S = 60  # not worth starting a run with less
STOP_GRACE_S = 20  # a child past its time gets Ctrl-C this long before the budget ends


@dataclass(frozen=True)
class PlanEntry:
    name: str  # the checkpoint it produces, method.tag
    test: str  # test folder, relative to the data root
    command: str  # derain train ..., with {data} and {work}
    prepare: str = ""  # a command that makes the training data, run once when its -o is missing
    shipped: float | None = None  # the shipped checkpoint's Y-PSNR on ``test``
    target: float | None = None  # the published / authors' figure

    @property
    def method(self) -> str:
        return self.name.split(".", 1)[0]


def load_plan(path: Path) -> list[PlanEntry]:
    with open(path, "rb") as f:
        runs = tomllib.load(f).get("run", [])
    return [PlanEntry(**run) for run in runs]


def select(entries: list[PlanEntry], only: list[str] | None) -> list[PlanEntry]:
    if not only:
        return entries
    known = {e.name: e for e in entries}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise UsageError(f"not in the plan: {', '.join(unknown)} (plan: {', '.join(known)})")
    return [known[n] for n in only]


def derain_argv(command: str, data: Path, work: Path) -> list[str]:
    """A plan command as the argv of a child process (``derain`` -> this Python's derain_cli)."""
    words = shlex.split(command.format(data=data, work=work))
    if words[0] != "derain":
        raise UsageError(f"plan commands start with 'derain': {command}")
    return [sys.executable, "-m", "derain_cli", *words[1:]]


def preparation(entry: PlanEntry, data: Path, work: Path) -> list[str] | None:
    """The command that makes the entry's data (``prepare``), or None when it has none or its
    output folder already holds files (made once per work folder)."""
    if not entry.prepare:
        return None
    argv = derain_argv(entry.prepare, data, work)
    made = Path(_option(argv, "-o") or _option(argv, "--out") or "")
    return None if made.is_dir() and any(made.iterdir()) else argv


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@dataclass
class RunState:
    """What a run folder says about an entry's progress."""

    folder: Path

    @property
    def started(self) -> bool:
        return (self.folder / "last.pth").is_file()

    @property
    def summary(self) -> dict:
        path = self.folder / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def complete(self) -> bool:
        return bool(self.summary.get("complete"))


class PlanRunner:
    """Runs ``entries`` within ``minutes`` (see the module docstring); ``log`` gets progress."""

    def __init__(self, entries: list[PlanEntry], minutes: float, data_root: Path, work: Path,
                 device: str = "auto", score: bool = True, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.time, processes: int = 1) -> None:
        self.entries, self.data_root, self.work, self.processes = entries, data_root, work, processes
        self.device, self.score, self.log, self.clock = device, score, log, clock
        self.deadline = clock() + 60 * minutes

    def run_folder(self, entry: PlanEntry) -> Path:
        return self.work / entry.name

    def left(self) -> float:
        return self.deadline - self.clock()

    def _scoring_reserve(self, entry: PlanEntry) -> float:
        """Seconds to keep for scoring ``entry``: measured by the last scoring of its method,
        else a guess of 5 s per test image (a slow method on 2 CPU cores)."""
        if not self.score or not (self.data_root / entry.test).is_dir():
            return 0.0
        measured = self.run_folder(entry) / "score.json"
        if measured.is_file():  # a finished scoring's time, or twice an interrupted one's
            return 1.2 * json.loads(measured.read_text()).get("seconds", 0) + STOP_GRACE_S
        per_image = 0.3 if self.device.startswith("cuda") else 5.0
        return per_image * len(list((self.data_root / entry.test / "rain").iterdir())) + STOP_GRACE_S

    def _child(self, argv: list[str], timeout: float, env: dict | None = None) -> int:
        """Run a child for at most ``timeout`` s (never past the budget), then Ctrl-C it (a
        trainer keeps its last checkpoint) and, if it lingers, kill it."""
        self.log("$ " + shlex.join(argv[2:]).replace("derain_cli", "derain", 1))
        child = subprocess.Popen(argv, env=env)
        try:
            return child.wait(timeout=max(1.0, min(timeout, self.left() - STOP_GRACE_S)))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            try:
                return child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                return child.wait()

    def prepare(self, entry: PlanEntry) -> bool:
        argv = preparation(entry, self.data_root, self.work)
        return argv is None or self._child(argv, self.left()) == 0

    def train(self, entry: PlanEntry) -> None:
        state = RunState(self.run_folder(entry))
        if state.complete:
            self.log(f"{entry.name}: complete ({state.summary.get('steps')} iterations)")
            return
        seconds = self.left() - self._scoring_reserve(entry) - STARTUP_S
        if seconds < MIN_TRAINING_S:
            self.log(f"{entry.name}: not started, {max(0, self.left()):.0f} s left")
            return
        if not self.prepare(entry):
            self.log(f"{entry.name}: preparing the data failed")
            return
        seconds = self.left() - self._scoring_reserve(entry) - STARTUP_S
        argv = [*derain_argv(entry.command, self.data_root, self.work), "-o", str(state.folder),
                "--device", self.device, "--minutes", f"{seconds / 60:.3f}", "-q"]
        if state.started:
            argv.append("--resume")
        env = None
        if self.processes > 1:  # torchrun: one thread per process (docs/performance.md)
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.processes}", *argv[1:]]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self._child(argv, seconds + STARTUP_S, env)

    def score_run(self, entry: PlanEntry) -> dict | None:
        """Y-PSNR/SSIM of the run's checkpoint on its test set (cached per checkpoint sha256)."""
        summary = RunState(self.run_folder(entry)).summary
        test = self.data_root / entry.test
        if not summary or not test.is_dir():
            return None
        cached = self.run_folder(entry) / "score.json"
        if cached.is_file():
            score = json.loads(cached.read_text())
            if score.get("sha256") == summary["sha256"]:
                return score
        if not self.score or self.left() < self._scoring_reserve(entry) - STOP_GRACE_S:
            return None
        report = self.run_folder(entry) / "benchmark.json"
        report.unlink(missing_ok=True)
        started = self.clock()
        argv = [sys.executable, "-m", "derain_cli", "benchmark", str(test), "-m", entry.method,
                "-w", summary["checkpoint"], "--device", self.device, "--json", str(report)]
        if self._child(argv, self.left()) != 0 or not report.is_file():
            cached.write_text(json.dumps({"seconds": 2 * (self.clock() - started), "interrupted": True}))
            return None
        result = json.loads(report.read_text())
        mean = result["results"][0]
        score = {"psnr_y": mean["psnr"], "ssim_y": mean["ssim"], "sha256": summary["sha256"],
                 "steps": summary["steps"], "seconds": self.clock() - started}
        cached.write_text(json.dumps(score, indent=2))
        return score

    def run(self, train: bool = True) -> list[dict]:
        """Train (unless not ``train``), then score; one row per entry for ``report``."""
        for entry in self.entries if train else ():
            if self.left() < MIN_TRAINING_S:
                break
            self.train(entry)
        rows = []
        for entry in self.entries:
            state = RunState(self.run_folder(entry))
            score = self.score_run(entry) if state.summary else None
            rows.append({"entry": entry, "steps": state.summary.get("steps", 0), "score": score,
                         "planned": int(_option(shlex.split(entry.command), "--iterations") or 0)})
        return rows


def beats_shipped(entry: PlanEntry, score: dict | None) -> bool:
    """Higher than the shipped checkpoint on its own test set; for a method with none shipped,
    at least its published figure."""
    if not score:
        return False
    if entry.shipped is not None:
        return score["psnr_y"] > entry.shipped
    return entry.target is not None and score["psnr_y"] >= entry.target


def report(rows: list[dict]) -> str:
    lines = ["| checkpoint | iterations | shipped | new | target | beats shipped |", "|---|---|---|---|---|---|"]
    for row in rows:
        e, s = row["entry"], row["score"]
        new = f"{s['psnr_y']:.2f} / {s['ssim_y']:.4f}" if s else "-"
        lines.append(f"| {e.name} | {row['steps']:,} / {row['planned']:,} | {e.shipped if e.shipped is not None else '-'} "
                     f"| {new} | {e.target if e.target is not None else '-'} | {'yes' if beats_shipped(e, s) else 'no'} |")
    return "\n".join(lines) + "\n"


def export(rows: list[dict], work: Path, out: Path) -> Path:
    """One archive (a GPU session brings back at most 8 files): every run's resumable state
    (``runs/NAME/``: last.pth, summary, log, card) and each winner's weights and card
    (``winners/NAME.safetensors``, ``winners/NAME.md``); plus the report beside it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan_report.md").write_text(report(rows))
    archive = out / "plan_results.tar"
    with tarfile.open(archive, "w") as tar:
        for row in rows:
            name, folder = row["entry"].name, work / row["entry"].name
            for file in ("last.pth", "summary.json", "log.jsonl", "card.md", "weights_entry.toml", "score.json",
                         "best.safetensors", "final.safetensors"):
                if (folder / file).is_file():
                    tar.add(folder / file, arcname=f"runs/{name}/{file}")
            if beats_shipped(row["entry"], row["score"]):
                tar.add(RunState(folder).summary["checkpoint"], arcname=f"winners/{name}.safetensors")
                tar.add(folder / "card.md", arcname=f"winners/{name}.md")
    return archive


def import_runs(archive: Path, work: Path) -> list[str]:
    """Unpack an ``export`` archive's runs into ``work``, except where the run here is at
    least as far along; returns the names imported."""
    imported = []
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as unpacked, tarfile.open(archive) as tar:
        tar.extractall(unpacked, members=[m for m in tar.getmembers() if m.name.startswith("runs/")], filter="data")
        runs = Path(unpacked) / "runs"
        for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
            target = work / folder.name
            if RunState(target).summary.get("steps", -1) >= RunState(folder).summary.get("steps", 0):
                continue
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(folder), target)
            summary = RunState(target).summary
            if summary:  # it names its checkpoint by path: the path here
                summary["checkpoint"] = str(target / Path(summary["checkpoint"]).name)
                (target / "summary.json").write_text(json.dumps(summary, indent=2))
            imported.append(folder.name)
    return imported
