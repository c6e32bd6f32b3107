"""Run the training plan (training_plan.toml); see docs/training.md.

The training ledger (every session, in the background, at the lowest priority; state committed
in training/ledger/):

    python benchmarks/run_plan.py start            # detached; measures the fastest process layout first
    python benchmarks/run_plan.py status           # what runs, each entry's step / total, CPU-hours, score
    python benchmarks/run_plan.py pause            # e.g. while measuring speed; `continue` resumes
    python benchmarks/run_plan.py stop             # checkpoint into the ledger, then exit
    git add training/ledger && git commit -m "training ledger: ..."

Within a time budget, runs in the user data directory (the earlier mode, and GPU sessions):

    python benchmarks/run_plan.py --minutes 30                      # CPU: as much as fits
    python benchmarks/run_plan.py --only lpnet.rain100l --minutes 5 --no-score
    python benchmarks/run_plan.py --stage .plan_stage               # pack data for a GPU machine
    python benchmarks/run_plan.py --data-root .plan_stage --device cuda --minutes 9 --export $OUT
    python benchmarks/run_plan.py --import /work/.device/.../plan_results.tar --score-only --minutes 20

Runs live in the user data directory ($DERAIN_DATA_DIR or ~/.local/share/derain) under
runs/plan/, so a later session on the same machine resumes them.
"""

from __future__ import annotations

import time

STARTED = time.time()  # the budget covers this process's imports, unpacking and importing too

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


LEDGER_COMMANDS = ("start", "status", "stop", "pause", "continue", "run")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in LEDGER_COMMANDS:
        return ledger_main(sys.argv[1:])
    return budget_main()


def ledger_main(argv: list[str]) -> int:
    """start / status / stop / pause / continue the ledger runner; ``run``: in the foreground
    (what ``start`` runs detached)."""
    import json
    import os
    import signal
    import subprocess

    from planning.plan import load_plan, select
    from planning.ledger import (CHECKPOINT_S, MEASURE_S, SEGMENT_MIN, STOP_WAIT_S, Layout, Ledger,
                                        LedgerRunner, RunnerLock, now_iso, status_report)
    from derain_cli.weights.resolve import cache_dir

    parser = argparse.ArgumentParser(prog="run_plan.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=LEDGER_COMMANDS)
    parser.add_argument("--plan", type=Path, default=ROOT / "training_plan.toml")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="plan entries to advance (default: all, in order)")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--ledger", type=Path, default=ROOT / "training" / "ledger", help="the committed run state")
    parser.add_argument("--runtime", type=Path, default=ROOT / "training" / "run",
                        help="lock, pid, state and log of the runner (git-ignored)")
    parser.add_argument("--work", type=Path, default=None,
                        help="run folders with derived data (teacher caches, exports); default: user cache dir ledger/")
    parser.add_argument("--layout", type=Layout.parse, default=None, metavar="PxT",
                        help="P processes x T threads (e.g. 2x1) instead of measuring the fastest at start")
    parser.add_argument("--measure-seconds", type=float, default=MEASURE_S,
                        help="seconds of steps timed per candidate layout (0 with --layout: not timed)")
    parser.add_argument("--checkpoint-minutes", type=float, default=CHECKPOINT_S / 60,
                        help="a checkpoint reaches the ledger at least this often")
    parser.add_argument("--segment-minutes", type=float, default=SEGMENT_MIN,
                        help="derain train stops (exports, is scored) and resumes this often")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-score", action="store_true", help="never score on the test sets")
    parser.add_argument("--wait", type=float, default=STOP_WAIT_S + 60, help="stop: seconds to wait for the checkpoint")
    args = parser.parse_args(argv)
    lock = RunnerLock(args.runtime)
    entries = select(load_plan(args.plan), args.only)
    ledger = Ledger(args.ledger)

    if args.command == "status":
        print(status_report(entries, ledger, args.runtime), end="")
        return 0
    if args.command in ("stop", "pause", "continue"):
        pid = lock.pid()
        if not lock.held() or pid is None:
            print("the ledger runner is not running" + (f" (stale pid file of process {pid} removed)" if pid else ""))
            lock.pid_path.unlink(missing_ok=True)
            return 0 if args.command == "stop" else 1
        if args.command != "stop":
            os.kill(pid, signal.SIGUSR1 if args.command == "pause" else signal.SIGUSR2)
            print(f"{'paused' if args.command == 'pause' else 'continued'} the ledger runner (pid {pid})")
            return 0
        os.kill(pid, signal.SIGTERM)
        print(f"stopping the ledger runner (pid {pid}): the step under way finishes and its checkpoint goes to "
              f"{args.ledger} ...", flush=True)
        deadline = time.time() + args.wait
        while lock.held() and time.time() < deadline:
            time.sleep(0.5)
        if lock.held():
            print(f"still running after {args.wait:.0f} s; see {args.runtime / 'runner.log'}")
            return 1
        print(status_report(entries, ledger, args.runtime), end="")
        print(f"stopped. Commit its state: git add {args.ledger.relative_to(ROOT) if args.ledger.is_relative_to(ROOT) else args.ledger}"
              " && git commit -m 'training ledger: ...'")
        return 0
    if args.command == "start":
        if lock.held():
            print(f"the ledger runner is already running (pid {lock.pid()}); `status` says where it stands")
            return 0
        args.runtime.mkdir(parents=True, exist_ok=True)
        log = open(args.runtime / "runner.log", "a")
        forwarded = [a for a in argv if a != "start"]
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "run", *forwarded], cwd=ROOT,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline and child.poll() is None and not (lock.held() and lock.pid() == child.pid):
            time.sleep(0.2)
        if lock.held() and lock.pid() == child.pid:
            print(f"started the ledger runner (pid {child.pid}, nice 19) on {', '.join(e.name for e in entries)}; "
                  f"log {args.runtime / 'runner.log'}; `status`, `pause`, `stop`")
            return 0
        if lock.held():
            print(f"the ledger runner is already running (pid {lock.pid()})")
            return 0
        print(f"the ledger runner did not start; see {args.runtime / 'runner.log'}")
        return 1

    # run: the runner itself (in the foreground, or detached by start)
    if not lock.acquire():
        print(f"the ledger runner is already running (pid {lock.pid()})", flush=True)
        return 0
    try:
        os.nice(19)
    except OSError:
        pass
    state_path = args.runtime / "state.json"
    started = now_iso()

    def publish(state: dict) -> None:
        tmp = state_path.with_name(".state.json.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "started": started, **state}, indent=2))
        os.replace(tmp, state_path)

    def log(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)

    runner = LedgerRunner(entries, args.data_root, args.work or cache_dir() / "ledger", ledger, layout=args.layout,
                          device=args.device, score=not args.no_score, checkpoint_s=60 * args.checkpoint_minutes,
                          segment_min=args.segment_minutes, measure_s=args.measure_seconds,
                          winners=args.ledger.parent / "winners", log=log, runtime_state=publish)
    signal.signal(signal.SIGTERM, lambda s, f: runner.request_stop())
    signal.signal(signal.SIGINT, lambda s, f: runner.request_stop())
    signal.signal(signal.SIGUSR1, lambda s, f: runner.set_paused(True))
    signal.signal(signal.SIGUSR2, lambda s, f: runner.set_paused(False))
    log(f"ledger runner pid {os.getpid()} (nice {os.nice(0)}) on {', '.join(e.name for e in entries)}; "
        f"ledger {args.ledger}")
    try:
        runner.run()
    finally:
        log(f"ledger runner stopped ({runner.state.get('phase')}); ledger {args.ledger} "
            f"({ledger.size() / 2**20:.2f} MiB)")
        lock.release()
    return 0


def budget_main() -> int:
    from planning.plan import PlanRunner, export, import_runs, load_plan, report, select
    from planning.stage import is_staged, stage, unstage
    from derain_cli.weights.user import runs_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, default=ROOT / "training_plan.toml")
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget, scoring included")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--processes", type=int, default=1,
                        help="train under torchrun with N one-thread processes (faster on a shared 2-core CPU)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="plan entries to run (default: all, in order)")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data",
                        help="shared data, or a --stage folder (unpacked into the work folder)")
    parser.add_argument("--work", type=Path, default=None, help="runs folder (default: user data dir runs/plan)")
    parser.add_argument("--no-score", action="store_true", help="train only (no test sets here)")
    parser.add_argument("--score-only", action="store_true", help="score the runs there are, train nothing")
    parser.add_argument("--export", type=Path, help="write plan_results.tar + plan_report.md here (e.g. $OUT)")
    parser.add_argument("--import", dest="archive", type=Path, help="unpack an exported plan_results.tar first")
    parser.add_argument("--stage", type=Path, help="pack rain100l/train into this folder for a GPU machine, then exit")
    args = parser.parse_args()

    if args.stage:
        size = stage(args.data_root, ["rain100l/train"], args.stage)
        print(f"staged {args.data_root / 'rain100l/train'} into {args.stage}: {size / 2**20:.1f} MiB")
        return 0
    work = args.work or runs_dir() / "plan"
    work.mkdir(parents=True, exist_ok=True)
    data_root = args.data_root
    if is_staged(data_root):
        unpacked = work / "data"
        if not is_staged(unpacked):
            print(f"unpacking {data_root} into {unpacked}")
            unstage(data_root, unpacked)
        data_root = unpacked
    if args.archive:
        print(f"imported runs: {', '.join(import_runs(args.archive, work)) or 'none newer than here'}")
    entries = select(load_plan(args.plan), args.only)
    minutes = args.minutes - (time.time() - STARTED) / 60
    runner = PlanRunner(entries, minutes, data_root, work, device=args.device, score=not args.no_score,
                        processes=args.processes)
    rows = runner.run(train=not args.score_only)
    print(report(rows))
    if args.export:
        print(f"exported {export(rows, work, args.export)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
