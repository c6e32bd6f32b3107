"""The training ledger: the plan's runs, kept in the repository and advanced by every session.

Each plan entry (``training_plan.toml``) has a folder ``training/ledger/NAME/`` holding exactly
what resuming it needs and nothing else: ``last.pth`` (weights, optimizer, schedule position,
RNG, step, history: ``derain train``'s resumable checkpoint; patch sampling is a pure function
of (seed, step), so there is no sampler state), ``best.safetensors`` where the run keeps its best
validated weights (its final choice depends on them), ``log.jsonl`` and ``status.json`` (step,
total, CPU-hours, the machines and process layouts that ran it, the last test score).

The runner trains in a work folder outside the repository (the user cache directory by
default): ``derain train`` writes its run folder there, with whatever it derives (a distilled
run's ``teacher/`` cache of the teacher's outputs, exports, cards), and the runner copies the
resumable files into the ledger at every checkpoint. On another machine (a fresh clone) the
work folder is rebuilt from the ledger and the run continues bit for bit; derived data is
regenerated.

The background mode (``benchmarks/run_plan.py start``) runs :class:`LedgerRunner` detached at
the lowest CPU priority, one instance per checkout (a lock file), with the process layout
measured at start; see docs/training.md ("The training ledger").
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from planning.plan import PlanEntry, _option, beats_shipped, derain_argv, preparation

KEPT = ("last.pth", "best.safetensors", "log.jsonl")  # what exact resumption needs
STATUS = "status.json"
CHECKPOINT_S = 600  # a checkpoint reaches the ledger at least this often while training
SEGMENT_MIN = 60.0  # the child stops (checkpoint, export) this often: the run is scored in between
MEASURE_S = 20.0  # seconds of training steps timed per candidate layout
STOP_WAIT_S = 300  # how long a stop waits for the child's checkpoint before killing it
POLL_S = 1.0


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def machine() -> str:
    """This machine, for the ledger's stages: CPU model and how many cores this process may use."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {usable_cpus()} cores"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def planned_iterations(entry: PlanEntry) -> int:
    return int(_option(shlex.split(entry.command), "--iterations") or 0)


def batch_sizes(entry: PlanEntry) -> list[int]:
    """The per-step batch sizes the entry's objective splits over processes."""
    words = shlex.split(entry.command)
    batch = int(_option(words, "--batch-size") or 10)
    if "--teacher" in words and "{data}" in entry.command.split("--teacher")[0]:  # labelled pairs mixed in
        share = float(_option(words, "--pairs-share") or 0.25)
        paired = round(batch * share)
        return [batch - paired, paired]
    return [batch]


def checkpoint_step(path: Path) -> int:
    """The step a ``last.pth`` holds; -1 when there is none."""
    if not path.is_file():
        return -1
    from derain_cli.inference.checkpoints import load_training_state

    return int(load_training_state(path)["step"])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _log_upto(text: str, step: int) -> str:
    """log.jsonl lines of steps up to ``step`` (a record written after the last checkpoint is
    written again when the run continues from it)."""
    kept = []
    for line in text.splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    return "".join(line + "\n" for line in kept)


@dataclass(frozen=True)
class Layout:
    processes: int
    threads: int

    @property
    def label(self) -> str:
        return (f"{self.processes} process{'es' if self.processes > 1 else ''} x "
                f"{self.threads} thread{'s' if self.threads > 1 else ''}")

    @classmethod
    def parse(cls, text: str) -> Layout:
        """``PxT``, e.g. ``2x1``: P processes (torchrun when above 1) of T threads each."""
        processes, _, threads = text.lower().partition("x")
        return cls(int(processes), int(threads or 1))

    def wrap(self, argv: list[str]) -> tuple[list[str], dict]:
        """``argv`` (``python -m derain_cli ...``) under this layout, and its environment."""
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.processes > 1:
            argv = [argv[0], "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.processes}",
                    *argv[1:]]
        return argv, env


class Ledger:
    """``root/NAME/``: an entry's resumable state (KEPT files) and ``status.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, name: str) -> Path:
        return self.root / name

    def status(self, name: str) -> dict:
        path = self.folder(name) / STATUS
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_status(self, name: str, status: dict) -> None:
        _write_json(self.folder(name) / STATUS, status)

    def restore(self, name: str, work: Path) -> int:
        """Make ``work`` (a run folder) continue from the ledger: its files are copied there,
        unless the work folder is further along (a run here stopped before its last copy; the
        next checkpoint brings the ledger up to it). Returns the step to continue from."""
        ledger = self.folder(name)
        mine, theirs = checkpoint_step(ledger / "last.pth"), checkpoint_step(work / "last.pth")
        if mine < 0 or theirs > mine:
            return max(mine, theirs)
        if theirs == mine and sha256_file(ledger / "last.pth") == sha256_file(work / "last.pth"):
            return mine
        work.mkdir(parents=True, exist_ok=True)
        for file in ("last.pth", "best.safetensors"):
            if (ledger / file).is_file():
                _copy_atomic(ledger / file, work / file)
            else:
                (work / file).unlink(missing_ok=True)
        log = ledger / "log.jsonl"
        (work / "log.jsonl").write_text(_log_upto(log.read_text(), mine) if log.is_file() else "")
        (work / "summary.json").unlink(missing_ok=True)  # it described the other run
        return mine

    def save(self, name: str, work: Path) -> int:
        """Copy ``work``'s resumable files into the ledger; returns the step saved (-1: none)."""
        step = checkpoint_step(work / "last.pth")
        if step < 0:
            return step
        ledger = self.folder(name)
        ledger.mkdir(parents=True, exist_ok=True)
        if (work / "best.safetensors").is_file():
            _copy_atomic(work / "best.safetensors", ledger / "best.safetensors")
        log = work / "log.jsonl"
        (ledger / "log.jsonl").write_text(_log_upto(log.read_text(), step) if log.is_file() else "")
        _copy_atomic(work / "last.pth", ledger / "last.pth")  # last: the step it holds is what status says
        return step

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) if self.root.is_dir() else 0


# -- processes -----------------------------------------------------------------------------

def _proc_stats() -> dict[int, list[str]]:
    """pid -> the fields of /proc/PID/stat after the name (state, ppid, pgrp, ...)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
    return stats


def process_tree(root: int, stats: dict[int, list[str]] | None = None) -> list[int]:
    """``root`` and its live descendants (torchrun starts each worker in a session of its own,
    so a process group does not reach them)."""
    stats = _proc_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system, reaped children included) of ``root``'s live process tree,
    from /proc; 0 where /proc is not there."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats = _proc_stats()
    # fields after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(sum(int(f) for f in stats[pid][11:15]) for pid in process_tree(root, stats) if pid in stats) / tick


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def signal_tree(root: int, signum: int) -> None:
    """``signum`` to ``root`` and every live descendant (children first for SIGSTOP: the
    workers; the parent last, so it never sees a worker stop before being stopped itself)."""
    for pid in reversed(process_tree(root)):
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


class Child:
    """A child process (in a session of its own: a terminal's Ctrl-C reaches the runner, which
    stops it cleanly), its output copied line by line to ``log``, its CPU time counted, signals
    sent to its whole process tree (torchrun's workers included)."""

    def __init__(self, argv: list[str], env: dict | None, log: Callable[[str], None], prefix: str = "  ") -> None:
        self.cpu_before = children_cpu_s()
        self.started = time.time()
        self.training_since: float | None = None  # when the trainer said "training ..."
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace")
        self.live_cpu = 0.0
        self.log = log
        self._reader = threading.Thread(target=self._read, args=(prefix,), daemon=True)
        self._reader.start()

    def _read(self, prefix: str) -> None:
        for line in self.proc.stdout:
            line = line.rstrip()
            if line.startswith("training ") and self.training_since is None:
                self.training_since = time.time()
            if line:
                self.log(prefix + line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        if self.proc.poll() is None:
            self.live_cpu = max(self.live_cpu, tree_cpu_s(self.pid))
            return True
        return False

    def signal(self, signum: int) -> None:
        signal_tree(self.pid, signum)

    def wait(self) -> int:
        rc = self.proc.wait()
        self._reader.join(timeout=5)
        return rc

    def cpu_s(self) -> float:
        """CPU seconds it used (after it ended: as the kernel accounted them)."""
        return max(self.live_cpu, children_cpu_s() - self.cpu_before)


# -- the runner ----------------------------------------------------------------------------

class LedgerRunner:
    """Advances ``entries`` in order, each from its ledger state, until stopped (``request_stop``:
    the child finishes its step, writes its checkpoint, and that reaches the ledger) or the plan
    is done. ``layout`` None: measured at the start of each entry (the fastest of 1 process x
    all cores and one one-thread process per core). ``runtime_state`` (a callable) receives
    what runs now, for ``status``."""

    def __init__(self, entries: list[PlanEntry], data_root: Path, work: Path, ledger: Ledger, *,
                 layout: Layout | None = None, device: str = "cpu", score: bool = True,
                 checkpoint_s: float = CHECKPOINT_S, segment_min: float = SEGMENT_MIN, measure_s: float = MEASURE_S,
                 winners: Path | None = None, log: Callable[[str], None] = print,
                 runtime_state: Callable[[dict], None] = lambda state: None) -> None:
        self.entries, self.data_root, self.work, self.ledger = entries, data_root, work, ledger
        self.layout, self.device, self.score = layout, device, score
        self.checkpoint_s, self.segment_min, self.measure_s = checkpoint_s, segment_min, measure_s
        self.winners = winners or ledger.root.parent / "winners"
        self.log, self.publish = log, runtime_state
        self.stop_requested = False
        self.paused = False
        self.child: Child | None = None
        self.state: dict = {"phase": "starting", "paused": False}
        self.overhead_cpu = 0.0  # seconds: layout measurement and teacher passes (not training)

    # -- control (from signal handlers: flags only; the supervising loop acts on them) -----
    def request_stop(self) -> None:
        self.stop_requested = True

    def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def _set(self, **state) -> None:
        self.state.update(state)
        self.publish(dict(self.state))

    # -- the plan ----------------------------------------------------------------------
    def complete(self, entry: PlanEntry) -> bool:
        return self.ledger.status(entry.name).get("step", 0) >= planned_iterations(entry)

    def run(self) -> None:
        for entry in self.entries:
            if self.stop_requested:
                break
            if self.complete(entry):
                continue
            try:
                self.run_entry(entry)
            finally:
                self.child = None
        self._set(phase="stopped" if self.stop_requested else "plan done", entry=None)

    def _env(self, env: dict) -> dict:
        # a finished segment saves the result as the user's model METHOD.TAG: here, a scratch
        # data folder (emptied after each segment), never the user's own models
        return {**env, "DERAIN_DATA_DIR": str(self.work / ".derain-data"), "PYTHONUNBUFFERED": "1"}

    def run_folder(self, entry: PlanEntry) -> Path:
        return self.work / entry.name

    def prepare(self, entry: PlanEntry) -> bool:
        """The entry's data-making command (``prepare``), once per work folder."""
        argv = preparation(entry, self.data_root, self.work)
        if argv is None:
            return True
        self._set(phase="preparing data", entry=entry.name)
        child = Child(argv, self._env(dict(os.environ)), self.log)
        return self._supervise(child, entry, None, {}) == 0

    def run_entry(self, entry: PlanEntry) -> None:
        folder = self.run_folder(entry)
        status = self.ledger.status(entry.name)
        if status.get("command", entry.command) != entry.command:
            self.log(f"{entry.name}: the plan's command changed since the ledger's run began; continuing it "
                     "(derain train refuses a change that resuming cannot honour)")
        step = self.ledger.restore(entry.name, folder)
        self.log(f"{entry.name}: {'a new run' if step < 0 else f'continuing from step {step:,}'} of "
                 f"{planned_iterations(entry):,} steps (ledger {self.ledger.folder(entry.name)}, work folder {folder})")
        if not self.prepare(entry):
            self.log(f"{entry.name}: preparing the data failed")
            return
        if "--teacher" in entry.command and not self.teacher_pass(entry):
            return
        seconds_per_step, layout = self._layout(entry)
        if layout is None:
            return
        segment = {"started": now_iso(), "machine": machine(), "layout": layout.label,
                   "from_step": max(step, 0), "to_step": max(step, 0), "cpu_hours": 0.0, "wall_hours": 0.0}
        status.setdefault("segments", []).append(segment)
        status.update(name=entry.name, command=entry.command, total=planned_iterations(entry))
        status["overhead_cpu_hours"] = round(status.get("overhead_cpu_hours", 0) + self.overhead_cpu / 3600, 4)
        self.overhead_cpu = 0.0
        base_cpu = sum(s["cpu_hours"] for s in status["segments"][:-1])
        base_wall = sum(s["wall_hours"] for s in status["segments"][:-1])
        account = {"status": status, "segment": segment, "base_cpu": base_cpu, "base_wall": base_wall, "cpu": 0.0,
                   "wall": 0.0}
        self._record(entry, folder, account)
        while not self.stop_requested:
            # checkpoints twice as often as the limit at the measured speed (the watchdog covers the rest);
            # unmeasured: the plan's own --checkpoint-every
            every = max(1, int(self.checkpoint_s / 2 / max(seconds_per_step, 1e-3))) if seconds_per_step else None
            argv = [*derain_argv(entry.command, self.data_root, self.work), "-o", str(folder), "--device",
                    self.device, *(["--checkpoint-every", str(every)] if every else []),
                    "--minutes", f"{self.segment_min:g}"]
            if (folder / "last.pth").is_file():
                argv.append("--resume")
            argv, env = layout.wrap(argv)
            self._set(phase="training", entry=entry.name, layout=layout.label, checkpoint_every=every)
            self.log("$ " + shlex.join(argv))
            child = Child(argv, self._env(env), self.log)
            rc = self._supervise(child, entry, folder, account)
            self._record(entry, folder, account)
            shutil.rmtree(self.work / ".derain-data" / "models", ignore_errors=True)
            if rc == 0:
                self._score(entry, folder, account)
                if self.complete(entry):
                    self.log(f"{entry.name}: complete ({account['status']['step']:,} iterations)")
                    return
            elif account.get("watchdog"):  # no checkpoint for too long: slower than measured
                seconds_per_step = account.pop("watchdog")
                self.log(f"{entry.name}: no checkpoint for {self.checkpoint_s / 60:.0f} min; continuing with "
                         f"checkpoints every {max(1, int(self.checkpoint_s / 2 / seconds_per_step))} steps")
            elif not self.stop_requested:
                self.log(f"{entry.name}: derain train failed (exit {rc}); going on with the next entry")
                return

    def _record(self, entry: PlanEntry, folder: Path, account: dict) -> None:
        """Copy the run's resumable files into the ledger and update its status."""
        step = self.ledger.save(entry.name, folder)
        status, segment = account["status"], account["segment"]
        if step >= 0:
            segment["to_step"] = step
            status["step"] = step
            status["checkpoint_sha256"] = sha256_file(self.ledger.folder(entry.name) / "last.pth")
        segment["ended"] = now_iso()
        segment["cpu_hours"] = round(account["cpu"] / 3600, 4)
        segment["wall_hours"] = round(account["wall"] / 3600, 4)
        status["cpu_hours"] = round(account["base_cpu"] + segment["cpu_hours"], 4)
        status["wall_hours"] = round(account["base_wall"] + segment["wall_hours"], 4)
        status["updated"] = now_iso()
        status.setdefault("step", 0)
        self.ledger.write_status(entry.name, status)

    def _supervise(self, child: Child, entry: PlanEntry, folder: Path | None, account: dict) -> int:
        """Wait for ``child``: copy each new checkpoint into the ledger, pass on stop and pause
        requests, and stop it (it checkpoints) when no checkpoint came for ``checkpoint_s``."""
        self.child = child
        last = folder / "last.pth" if folder else None
        seen = last.stat().st_mtime_ns if last and last.is_file() else None
        since = time.time()  # the last checkpoint, or the end of a pause
        sent_stop, deadline, paused, cpu0, wall0 = False, None, False, account.get("cpu", 0.0), account.get("wall", 0.0)
        steps_at = (checkpoint_step(last) if last else -1, time.time())
        while child.running():
            time.sleep(POLL_S)
            if self.paused != paused:
                paused = self.paused
                child.signal(signal.SIGSTOP if paused else signal.SIGCONT)
                since = time.time()
                self._set(paused=paused)
            if self.stop_requested and not sent_stop:
                child.signal(signal.SIGCONT)
                child.signal(signal.SIGTERM)
                sent_stop, deadline = True, time.time() + STOP_WAIT_S
                self._set(phase="stopping")
            if deadline and time.time() > deadline:
                child.signal(signal.SIGKILL)
            if account:
                account["cpu"] = cpu0 + child.live_cpu
                account["wall"] = wall0 + time.time() - child.started
            if last is not None and last.is_file() and last.stat().st_mtime_ns != seen:
                seen = last.stat().st_mtime_ns
                since = time.time()
                self._record(entry, folder, account)
                steps_at = (account["status"]["step"], since)
            trained_since = max(since, child.training_since or float("inf"))
            if (folder is not None and not paused and not sent_stop and child.training_since
                    and time.time() - trained_since > self.checkpoint_s):
                done = max(1, account["status"]["step"] - steps_at[0]) if steps_at[0] >= 0 else 1
                account["watchdog"] = max(self.checkpoint_s, time.time() - steps_at[1]) / done
                child.signal(signal.SIGTERM)
                sent_stop, deadline = True, time.time() + STOP_WAIT_S
        rc = child.wait()
        if account:
            account["cpu"] = cpu0 + child.cpu_s()
            account["wall"] = wall0 + time.time() - child.started
        if paused:
            self._set(paused=False)
        return rc

    # -- measuring the layout ------------------------------------------------------------
    def candidates(self, entry: PlanEntry) -> list[Layout]:
        cores = usable_cpus()
        layouts = [Layout(1, cores)]
        if cores > 1 and self.device == "cpu" and all(b % cores == 0 for b in batch_sizes(entry)):
            layouts.append(Layout(cores, 1))
        return layouts

    def _layout(self, entry: PlanEntry) -> tuple[float | None, Layout | None]:
        """(seconds per step, layout): the given layout (timed, unless ``measure_s`` is 0), else
        the fastest measured."""
        if self.layout and self.measure_s <= 0:
            return None, self.layout
        candidates = [self.layout] if self.layout else self.candidates(entry)
        timings = {}
        for layout in candidates:
            self._set(phase=f"measuring {layout.label}", entry=entry.name)
            seconds = self.measure(entry, layout)
            if self.stop_requested:
                return 0.0, None
            if seconds is not None:
                timings[layout] = seconds
        if not timings:
            self.log(f"{entry.name}: no layout trained (see the lines above); going on with the next entry")
            return 0.0, None
        best = min(timings, key=timings.get)
        table = ", ".join(f"{layout.label} {s:.3f} s/step" for layout, s in timings.items())
        self.log(f"{entry.name}: {table}: {best.label}")
        self._set(measured=table)
        return timings[best], best

    def _scratch(self, entry: PlanEntry) -> Path:
        """An empty scratch run folder; a distilled run's shares the teacher's outputs of its
        work folder (derived data: never in the ledger, regenerated where missing)."""
        scratch = self.work / ".measure" / entry.name
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        if "--teacher" in entry.command:
            teacher = self.run_folder(entry) / "teacher"
            teacher.mkdir(parents=True, exist_ok=True)
            (scratch / "teacher").symlink_to(teacher.resolve(), target_is_directory=True)
        return scratch

    def teacher_pass(self, entry: PlanEntry) -> bool:
        """A distilled entry: the teacher derains every photo it has not yet (derain train caches
        its outputs in the run folder's teacher/, which here is the work folder's), in a
        one-step run of its own, so that the layouts are timed on training alone."""
        from derain_cli.data.pairs import find_photos

        argv = derain_argv(entry.command, self.data_root, self.work)
        photos = len(find_photos(Path(_option(argv, "--photos"))))
        done = len(list((self.run_folder(entry) / "teacher" / "norain").glob("*.png")))
        if done >= photos:
            return True
        self._set(phase=f"teacher pass ({done} of {photos} photos cached)", entry=entry.name)
        scratch = self._scratch(entry)
        argv, env = Layout(1, usable_cpus()).wrap(
            [*argv, "-o", str(scratch), "--device", self.device, "--iterations", "1", "--val-split", "0"])
        self.log("$ " + shlex.join(argv))
        child = Child(argv, self._env(env), self.log)
        rc = self._supervise(child, entry, None, {})
        self.overhead_cpu += child.cpu_s()
        shutil.rmtree(scratch, ignore_errors=True)
        if rc != 0 and not self.stop_requested:
            self.log(f"{entry.name}: the teacher pass failed (exit {rc}); going on with the next entry")
        return rc == 0

    def measure(self, entry: PlanEntry, layout: Layout) -> float | None:
        """Seconds per training step of ``entry`` under ``layout`` on this machine now, from
        ``measure_s`` seconds of steps (start-up and the first steps not counted), in a scratch
        run folder (a distilled run shares the teacher's outputs of its work folder)."""
        scratch = self._scratch(entry)
        argv = [*derain_argv(entry.command, self.data_root, self.work), "-o", str(scratch), "--device", self.device,
                "--val-split", "0", "--val-every", "1", "--checkpoint-every", "1000000000", "-q"]
        argv, env = layout.wrap(argv)
        child = Child(argv, self._env(env), self.log, prefix=f"  [measuring {layout.label}] ")
        self.child = child
        records: list[dict] = []
        try:
            while child.running() and not self.stop_requested:
                time.sleep(POLL_S / 2)
                log = scratch / "log.jsonl"
                records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
                timed = records[2:]  # the first steps warm up
                if len(timed) >= 3 and timed[-1]["elapsed_s"] - timed[0]["elapsed_s"] >= self.measure_s:
                    break
        finally:
            child.signal(signal.SIGKILL)
            child.wait()
            self.overhead_cpu += child.cpu_s()
            self.child = None
            shutil.rmtree(scratch, ignore_errors=True)
        timed = records[2:]
        if len(timed) < 2 or timed[-1]["elapsed_s"] <= timed[0]["elapsed_s"]:
            if not self.stop_requested:
                self.log(f"{entry.name}: {layout.label} did not train (exit {child.proc.returncode})")
            return None
        return (timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]) / (timed[-1]["step"] - timed[0]["step"])

    # -- scoring and winners -----------------------------------------------------------
    def _score(self, entry: PlanEntry, folder: Path, account: dict) -> None:
        """Score the run's chosen weights (summary.json, written at each segment's end) on the
        entry's test set, once per checkpoint; a winner is exported for a person to ship."""
        status = account["status"]
        summary_path = folder / "summary.json"
        test = self.data_root / entry.test
        if not self.score or not summary_path.is_file() or not (test / "rain").is_dir():
            return
        summary = json.loads(summary_path.read_text())
        if (status.get("score") or {}).get("sha256") == summary["sha256"]:
            return
        self._set(phase="scoring", entry=entry.name)
        report = folder / "benchmark.json"
        report.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "derain_cli", "benchmark", str(test), "-m", entry.method, "-w",
                summary["checkpoint"], "--device", self.device, "--json", str(report)]
        self.log("$ " + shlex.join(argv))
        child = Child(argv, self._env(dict(os.environ)), self.log)
        rc = self._supervise(child, entry, None, {})
        status["overhead_cpu_hours"] = round(status.get("overhead_cpu_hours", 0) + child.cpu_s() / 3600, 4)
        if rc != 0 or not report.is_file():
            self.ledger.write_status(entry.name, status)
            return
        mean = json.loads(report.read_text())["results"][0]
        score = {"psnr_y": mean["psnr"], "ssim_y": mean["ssim"], "sha256": summary["sha256"],
                 "steps": summary["steps"], "scored": now_iso()}
        status["score"] = score
        status["beats_shipped"] = beats_shipped(entry, score)
        self.log(f"{entry.name}: {score['psnr_y']:.2f} dB / {score['ssim_y']:.4f} on {entry.test} at step "
                 f"{score['steps']:,} (shipped: {entry.shipped if entry.shipped is not None else '-'}, "
                 f"target: {entry.target if entry.target is not None else '-'})")
        if status["beats_shipped"]:
            where = export_winner(entry, folder, status, self.winners)
            status["winner"] = str(where)
            self.log(f"{entry.name}: BEATS THE SHIPPED CHECKPOINT: exported to {where}; see {where / 'SHIP.md'}")
        self.ledger.write_status(entry.name, status)


def export_winner(entry: PlanEntry, folder: Path, status: dict, winners: Path) -> Path:
    """``winners/NAME/``: the weights under the manifest's file name, the card (every stage,
    CPU-hours, machines), the weights.toml entry and SHIP.md, the steps that ship it."""
    from derain_cli.weights.manifest import load_manifest

    summary = json.loads((folder / "summary.json").read_text())
    out = winners / entry.name
    out.mkdir(parents=True, exist_ok=True)
    shipped = load_manifest().get(entry.name)
    filename = (shipped.file if shipped and shipped.file else None) or f"{entry.name.replace('.', '_')}.safetensors"
    shutil.copyfile(summary["checkpoint"], out / filename)
    card = winner_card(entry, folder, status, summary)
    (out / "card.md").write_text(card)
    score = status["score"]
    trained = (f"derain train (training ledger, training_plan.toml) on {entry.command.split()[2]}: "
               f"{summary['steps']:,} of {planned_iterations(entry):,} iterations, {status['cpu_hours']:.2f} CPU-hours "
               f"over {len(status['segments'])} stages; {entry.test} {score['psnr_y']:.2f} dB; "
               f"see docs/weights/{entry.name}.md")
    (out / "weights_entry.toml").write_text(
        f"[{entry.name}]\nfile = \"{filename}\"\nsha256 = \"{summary['sha256']}\"\nlicense = \"MIT\"\n"
        f"trained = {json.dumps(trained)}\n")
    bundled = "derain_cli/weights/files/" + filename
    (out / "SHIP.md").write_text(
        f"# Ship {entry.name}\n\n"
        f"{entry.test}: {score['psnr_y']:.2f} dB / {score['ssim_y']:.4f} (shipped: {entry.shipped}, "
        f"target: {entry.target}) at step {summary['steps']:,}, sha256 `{summary['sha256']}`.\n\n"
        "```bash\n"
        f"cp training/winners/{entry.name}/{filename} {bundled}   # or upload where weights.toml points\n"
        f"cp training/winners/{entry.name}/card.md docs/weights/{entry.name}.md\n"
        f"# weights.toml: replace [{entry.name}] by training/winners/{entry.name}/weights_entry.toml\n"
        f"# training_plan.toml: shipped = {score['psnr_y']:.2f} for {entry.name}; docs/weights.md: its row\n"
        f"git add {bundled} docs/weights/{entry.name}.md weights.toml training_plan.toml docs/weights.md "
        f"&& git commit -m 'Ship {entry.name} from the training ledger: {score['psnr_y']:.2f} dB'\n"
        "```\n")
    return out


def winner_card(entry: PlanEntry, folder: Path, status: dict, summary: dict) -> str:
    """The shipped checkpoint's card: the trainer's card of the run plus every ledger stage."""
    trainer_card = (folder / "card.md").read_text() if (folder / "card.md").is_file() else f"# {entry.name}\n"
    score = status["score"]
    lines = [trainer_card.rstrip(), "",
             f"Trained by the training ledger (`training/ledger/{entry.name}/`, `benchmarks/run_plan.py start`) "
             f"with the plan's command:", "", "```bash", entry.command, "```", "",
             f"Test set `{entry.test}`: **{score['psnr_y']:.2f} / {score['ssim_y']:.4f}** (Y-PSNR / SSIM) at step "
             f"{score['steps']:,}; the checkpoint shipped before: {entry.shipped}; published: {entry.target}.", "",
             "Stages (one per session that advanced it):", "",
             "| started | machine | processes | steps | CPU-hours | wall hours |", "|---|---|---|---|---|---|"]
    for s in status["segments"]:
        lines.append(f"| {s['started']} | {s['machine']} | {s['layout']} | {s['from_step']:,} -> {s['to_step']:,} "
                     f"| {s['cpu_hours']:.2f} | {s['wall_hours']:.2f} |")
    lines.append(f"| **all** | | | {summary['steps']:,} of {planned_iterations(entry):,} | "
                 f"**{status['cpu_hours']:.2f}** | {status['wall_hours']:.2f} |")
    return "\n".join(lines) + "\n"


# -- one instance per checkout ---------------------------------------------------------------

class RunnerLock:
    """``runtime/runner.lock`` (flock, held while the runner lives: released by the kernel when
    it dies, so a lock left by a dead process is simply taken over) and ``runner.pid``."""

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.path = runtime / "runner.lock"
        self.pid_path = runtime / "runner.pid"
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.runtime.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        self.pid_path.write_text(f"{os.getpid()}\n")
        return True

    def release(self) -> None:
        if self._fd is not None:
            self.pid_path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def held(self) -> bool:
        """Whether a live runner holds the lock (any process, this one included)."""
        if self._fd is not None:
            return True
        if not self.path.is_file():
            return False
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def status_report(entries: list[PlanEntry], ledger: Ledger, runtime: Path) -> str:
    """What ``run_plan.py status`` prints: the runner's state and every entry's place."""
    lock = RunnerLock(runtime)
    state_path = runtime / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if lock.held():
        head = (f"runner: running (pid {lock.pid()}, started {state.get('started', '?')}, priority nice 19); "
                f"{state.get('phase', '?')}{' (PAUSED)' if state.get('paused') else ''}"
                f"{' ' + state['entry'] if state.get('entry') else ''}"
                f"{', ' + state['layout'] if state.get('layout') else ''}")
        if state.get("measured"):
            head += f"\n  measured at start: {state['measured']}"
    else:
        stale = lock.pid()
        head = "runner: not running" + (f" (stale pid file of process {stale}, which is gone)" if stale else "")
    lines = [head, f"ledger: {ledger.root} ({ledger.size() / 2**20:.2f} MiB)", "",
             "| entry | step / total | CPU-hours | last checkpoint | test score (shipped, target) | state |",
             "|---|---|---|---|---|---|"]
    for entry in entries:
        s = ledger.status(entry.name)
        total = planned_iterations(entry)
        step = s.get("step", 0)
        score = s.get("score")
        shown = (f"{score['psnr_y']:.2f} at {score['steps']:,}" if score else "-") + \
            f" ({entry.shipped if entry.shipped is not None else '-'}, {entry.target if entry.target is not None else '-'})"
        if lock.held() and state.get("entry") == entry.name:
            what = state.get("phase", "running") + (" (paused)" if state.get("paused") else "")
        elif step >= total:
            what = "complete"
        else:
            what = "waiting" if not s else "stopped"
        if s.get("beats_shipped"):
            what += "; BEATS SHIPPED: " + s.get("winner", "")
        lines.append(f"| {entry.name} | {step:,} / {total:,} | {s.get('cpu_hours', 0):.3f} | "
                     f"{s.get('updated', '-')} | {shown} | {what} |")
    return "\n".join(lines) + "\n"
