"""Run the training plan (training_plan.toml) within a time budget; see docs/training.md.

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


def main() -> int:
    from derain_cli.plan import PlanRunner, export, import_runs, load_plan, report, select
    from derain_cli.plan_stage import is_staged, stage, unstage
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
