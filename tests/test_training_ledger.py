"""The training ledger (issue 23): resumption from the ledger on a fresh clone is exact, one
runner per checkout, a clean stop at SIGTERM, status, the layout measured at start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from planning.plan import load_plan
from planning.ledger import KEPT, STATUS, Layout, Ledger, LedgerRunner, RunnerLock, status_report

from test_training import make_dataset

ROOT = Path(__file__).resolve().parents[1]
RUN_PLAN = ROOT / "benchmarks" / "run_plan.py"


def tiny_plan(tmp_path: Path, iterations: int, name: str = "plan.toml") -> Path:
    if not (tmp_path / "data" / "pairs").is_dir():
        make_dataset(tmp_path / "data" / "pairs")
    plan = tmp_path / name
    plan.write_text(
        '[[run]]\nname = "lpnet.tiny"\ntest = "pairs"\nshipped = 1.0\n'
        'command = "derain train {data}/pairs -m lpnet --tag tiny --val-split 0.34 --iterations '
        f'{iterations} --batch-size 2 --patch-size 16 --val-every 2 --checkpoint-every 1 --precision fp32"\n')
    return plan


def run_ledger(tmp_path: Path, plan: Path, ledger: Path, work: Path, said: list | None = None, **kw) -> LedgerRunner:
    runner = LedgerRunner(load_plan(plan), tmp_path / "data", work, Ledger(ledger), layout=Layout(1, 1),
                          measure_s=0, score=False, log=(said.append if said is not None else lambda m: None), **kw)
    runner.run()
    return runner


def weights(folder: Path) -> dict:
    state = torch.load(folder / "last.pth", map_location="cpu", weights_only=True)
    return {"step": state["step"], "model": state["model"], "optimizer": state["optimizer"]["state"],
            "rng": state["rng"]}


def assert_same(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert torch.equal(a["rng"], b["rng"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, moments in a["optimizer"].items():
        for key, value in moments.items():
            assert torch.equal(value, b["optimizer"][index][key]), (index, key)


def test_a_run_resumed_from_the_ledger_on_a_fresh_clone_is_exact(tmp_path):
    """4 steps straight against 2, the ledger folder copied elsewhere (a fresh clone: another
    ledger path, an empty work folder), 2 more: the same weights, optimizer moments and RNG."""
    straight = run_ledger(tmp_path, tiny_plan(tmp_path, 4, "four.toml"), tmp_path / "a" / "ledger", tmp_path / "a" / "work")
    run_ledger(tmp_path, tiny_plan(tmp_path, 2, "two.toml"), tmp_path / "b" / "ledger", tmp_path / "b" / "work")
    half = tmp_path / "b" / "ledger" / "lpnet.tiny"
    assert sorted(p.name for p in half.iterdir()) == sorted([*KEPT, STATUS])  # nothing derived, nothing big
    assert json.loads((half / STATUS).read_text())["step"] == 2
    clone = tmp_path / "clone" / "training" / "ledger"
    shutil.copytree(tmp_path / "b" / "ledger", clone)
    said = []
    run_ledger(tmp_path, tiny_plan(tmp_path, 4, "four.toml"), clone, tmp_path / "clone" / "work", said)
    assert any("continuing from step 2 of 4" in line for line in said)
    assert_same(weights(tmp_path / "a" / "ledger" / "lpnet.tiny"), weights(clone / "lpnet.tiny"))
    status = json.loads((clone / "lpnet.tiny" / STATUS).read_text())
    assert status["step"] == 4 and [(s["from_step"], s["to_step"]) for s in status["segments"]] == [(0, 2), (2, 4)]
    assert status["cpu_hours"] > 0 and all(s["layout"] == "1 process x 1 thread" for s in status["segments"])
    assert straight.state["phase"] == "plan done"
    # the log goes on where the ledger's stopped: one record per validation step, none twice
    steps = [json.loads(line)["step"] for line in (clone / "lpnet.tiny" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_a_winner_is_scored_exported_and_carded(tmp_path):
    runner = LedgerRunner(load_plan(tiny_plan(tmp_path, 2)), tmp_path / "data", tmp_path / "work",
                          Ledger(tmp_path / "ledger"), layout=Layout(1, 1), measure_s=0, log=lambda m: None)
    runner.run()
    status = Ledger(tmp_path / "ledger").status("lpnet.tiny")
    assert status["score"]["psnr_y"] > 1.0 and status["beats_shipped"]  # the plan says shipped = 1.0 dB
    winner = tmp_path / "winners" / "lpnet.tiny"
    assert {p.name for p in winner.iterdir()} == {"lpnet_tiny.safetensors", "card.md", "weights_entry.toml", "SHIP.md"}
    card = (winner / "card.md").read_text()
    assert "Stages" in card and "CPU-hours" in card and "1 process x 1 thread" in card
    assert status["score"]["sha256"] in (winner / "weights_entry.toml").read_text()
    report = status_report(load_plan(tiny_plan(tmp_path, 2)), Ledger(tmp_path / "ledger"), tmp_path / "run")
    assert "| lpnet.tiny | 2 / 2 |" in report and "complete; BEATS SHIPPED" in report


def test_the_layout_is_measured(tmp_path):
    runner = LedgerRunner(load_plan(tiny_plan(tmp_path, 1000)), tmp_path / "data", tmp_path / "work",
                          Ledger(tmp_path / "ledger"), measure_s=1.0, log=lambda m: None)
    entry = runner.entries[0]
    candidates = runner.candidates(entry)
    assert candidates[0] == Layout(1, os.cpu_count() if not hasattr(os, "sched_getaffinity") else len(os.sched_getaffinity(0)))
    seconds, layout = runner._layout(entry)
    assert layout in candidates and 0 < seconds < 5
    assert all(layout.label in runner.state["measured"] for layout in candidates)
    assert not (tmp_path / "work" / ".measure" / "lpnet.tiny").exists()  # scratch removed
    assert runner.overhead_cpu > 0  # measuring is recorded apart from training


def test_the_lock_is_single_and_a_stale_one_is_taken_over(tmp_path):
    first, second = RunnerLock(tmp_path), RunnerLock(tmp_path)
    assert first.acquire() and not second.acquire() and second.held() and second.pid() == os.getpid()
    first.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "runner.pid").write_text(f"{dead.pid}\n")  # a runner that died without cleaning up
    assert not second.held()
    assert "stale pid file" in status_report([], Ledger(tmp_path / "ledger"), tmp_path)
    assert second.acquire() and second.pid() == os.getpid()
    second.release()


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its reaper)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_PLAN), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_start_twice_status_and_stop_at_sigterm_keep_an_exact_run(tmp_path):
    """The real background runner: started once (a second start says it runs), status shows
    the entry, stop (SIGTERM) writes the step reached into the ledger; continued from a copy of
    that ledger, it ends where a straight run of as many steps ends."""
    plan = tiny_plan(tmp_path, 1_000_000)
    common = ["--plan", str(plan), "--data-root", str(tmp_path / "data"), "--ledger", str(tmp_path / "ledger"),
              "--runtime", str(tmp_path / "run"), "--work", str(tmp_path / "work"), "--layout", "1x1",
              "--measure-seconds", "0", "--no-score"]
    started = _cli("start", *common)
    assert started.returncode == 0 and "started the ledger runner" in started.stdout, started.stdout + started.stderr
    pid = RunnerLock(tmp_path / "run").pid()
    try:
        again = _cli("start", *common)
        assert "already running" in again.stdout and f"pid {pid}" in again.stdout
        assert int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16]) == 19  # nice 19
        status_path = tmp_path / "ledger" / "lpnet.tiny" / STATUS
        deadline = time.time() + 90
        while time.time() < deadline and json.loads(status_path.read_text() if status_path.is_file() else "{}").get("step", 0) < 3:
            time.sleep(0.5)
        status = _cli("status", *common)
        assert "runner: running (pid" in status.stdout and "| lpnet.tiny |" in status.stdout and "training" in status.stdout
        stopped = _cli("stop", *common)
    finally:
        if RunnerLock(tmp_path / "run").held():
            os.kill(pid, signal.SIGKILL)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not RunnerLock(tmp_path / "run").held()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid)
    log = (tmp_path / "run" / "runner.log").read_text()
    assert "terminated (SIGTERM) at step" in log
    step = json.loads((tmp_path / "ledger" / "lpnet.tiny" / STATUS).read_text())["step"]
    assert step >= 3 and torch.load(tmp_path / "ledger" / "lpnet.tiny" / "last.pth", weights_only=True)["step"] == step
    assert "runner: not running" in _cli("status", *common).stdout

    # a fresh clone continues to step + 2 exactly as a straight run of step + 2 (constant rate)
    clone = tmp_path / "clone"
    shutil.copytree(tmp_path / "ledger", clone / "ledger")
    run_ledger(tmp_path, tiny_plan(tmp_path, step + 2, "more.toml"), clone / "ledger", clone / "work")
    run_ledger(tmp_path, tiny_plan(tmp_path, step + 2, "more.toml"), tmp_path / "straight" / "ledger",
               tmp_path / "straight" / "work")
    assert_same(weights(tmp_path / "straight" / "ledger" / "lpnet.tiny"), weights(clone / "ledger" / "lpnet.tiny"))


@pytest.mark.parametrize("command", ["stop", "pause"])
def test_commands_without_a_runner_say_so(tmp_path, command):
    out = _cli(command, "--runtime", str(tmp_path / "run"), "--ledger", str(tmp_path / "ledger"))
    assert "not running" in out.stdout and out.returncode == (0 if command == "stop" else 1)


def test_a_distilled_entry_keeps_the_teachers_outputs_out_of_the_ledger(tmp_path):
    make_dataset(tmp_path / "data" / "pairs")
    shutil.copytree(tmp_path / "data" / "pairs" / "rain", tmp_path / "data" / "photos")

    def plan(iterations: int) -> Path:
        path = tmp_path / f"distill{iterations}.toml"
        path.write_text(
            '[[run]]\nname = "lpnet.tiny"\ntest = "pairs"\n'
            'command = "derain train {data}/pairs -m lpnet --tag tiny --teacher spanet.spa --photos {data}/photos '
            f'--pairs-share 0.5 --max-side 64 --val-split 0.34 --iterations {iterations} --batch-size 2 '
            '--patch-size 16 --val-every 2 --checkpoint-every 1 --precision fp32"\n')
        return path

    said = []
    run_ledger(tmp_path, plan(2), tmp_path / "ledger", tmp_path / "work", said)
    assert len(list((tmp_path / "work" / "lpnet.tiny" / "teacher" / "norain").glob("*.png"))) == 6
    names = {p.name for p in (tmp_path / "ledger" / "lpnet.tiny").iterdir()}
    assert names == {"last.pth", "log.jsonl", STATUS}  # no teacher/, no exports (distillation keeps its last weights)
    assert any("teacher pass (0 of 6 photos cached)" in line or "teacher spanet.spa" in line for line in said)
    # a fresh clone: the work folder is gone; the teacher's outputs are made again, the run continues
    shutil.rmtree(tmp_path / "work")
    said = []
    run_ledger(tmp_path, plan(4), tmp_path / "ledger", tmp_path / "work", said)
    assert any("continuing from step 2 of 4" in line for line in said)
    assert Ledger(tmp_path / "ledger").status("lpnet.tiny")["step"] == 4


def test_signals_reach_workers_in_sessions_of_their_own(tmp_path):
    """torchrun starts each worker in a session of its own: pause and stop go to the whole tree."""
    from planning.ledger import process_tree, signal_tree

    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
            "start_new_session=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 20
    while time.time() < deadline and len(process_tree(parent.pid)) < 2:
        time.sleep(0.1)
    tree = process_tree(parent.pid)
    assert len(tree) == 2 and os.getpgid(tree[1]) != os.getpgid(parent.pid)
    signal_tree(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline and _alive(tree[1]):
        time.sleep(0.1)
    assert not _alive(tree[1])
