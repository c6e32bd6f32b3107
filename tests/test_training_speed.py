"""The fast training path: device-side patches, mixed precision, time budgets, the training plan."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from derain_cli.data.pairs import PatchSampler, find_pairs, load_pair
from derain_cli.inference.precision import training_precision
from derain_cli.training.objectives.base import SupervisedObjective
from derain_cli.data.device_patches import DevicePatchSampler, PairBank
from derain_cli.training.trainer import Trainer, _learning_rate, split_pairs
from derain_cli.errors import UsageError
from derain_cli.methods import get_method

from test_training import config, make_dataset


def reference_patch(image: np.ndarray, corner, turn, p: int) -> np.ndarray:
    """What a draw means, written the plain way: crop, flip rows, flip columns, transpose."""
    if image.shape[0] > image.shape[1]:
        image = image.transpose(1, 0, 2)
    patch = image[corner[0] : corner[0] + p, corner[1] : corner[1] + p]
    if turn[1]:
        patch = patch[::-1]
    if turn[2]:
        patch = patch[:, ::-1]
    return patch.transpose(1, 0, 2) if turn[0] else patch


def test_device_patches_are_the_crops_and_turns_they_claim(tmp_path):
    pairs = find_pairs(make_dataset(tmp_path / "a", 3)) + find_pairs(make_dataset(tmp_path / "b", 2, size=(50, 36)))
    sampler = DevicePatchSampler.from_pairs(pairs, 16, 64, seed=5)
    loaded = [load_pair(p) for p in pairs]
    draws = sampler.draws(3)
    rainy, clean = sampler.batch(3)
    assert rainy.shape == (64, 3, 16, 16) and rainy.is_contiguous(memory_format=torch.channels_last)
    assert len({tuple(t) for t in draws["turn"].tolist()}) == 8 and len(set(draws["index"].tolist())) == 5  # all kinds drawn
    for k in range(64):
        i, corner, turn = int(draws["index"][k]), draws["corner"][k].tolist(), draws["turn"][k].tolist()
        for got, image in ((rainy[k], loaded[i][0]), (clean[k], loaded[i][1])):
            expected = reference_patch(image, corner, turn, 16).astype(np.float32) / 255
            assert np.array_equal(got.permute(1, 2, 0).numpy(), expected), k


def test_device_patches_are_a_function_of_step_and_shard_exactly(tmp_path):
    sampler = DevicePatchSampler.from_pairs(find_pairs(make_dataset(tmp_path, 4)), 16, 4, seed=3)
    a, _ = sampler.batch(7)
    assert torch.equal(a, sampler.batch(7)[0]) and not torch.equal(a, sampler.batch(8)[0])
    halves = [sampler.batch(7, rank=r, world_size=2)[0] for r in range(2)]
    assert torch.equal(torch.cat(halves), a)


def test_bank_refuses_small_pictures_and_keeps_uint8(tmp_path):
    pairs = find_pairs(make_dataset(tmp_path, 2))
    bank = PairBank.load(pairs, 32)
    assert bank.rainy.dtype == torch.uint8 and bank.nbytes == 2 * 2 * 40 * 48 * 3
    with pytest.raises(Exception, match="smaller than the 64px patch"):
        PairBank.load(pairs, 64)


def _losses(tmp_path, out, sampler="device", precision="fp32", steps=8, **kw) -> list[float]:
    pairs = find_pairs(tmp_path / "data")
    cfg = config(tmp_path, out, steps, val_every=1, checkpoint_every=100, sampler=sampler, precision=precision, **kw)
    objective = SupervisedObjective.from_pairs(pairs, cfg.patch_size, cfg.batch_size, cfg.seed, sampler=sampler)
    trainer = Trainer(get_method(cfg.method), cfg, objective, [], log=lambda m: None)
    trainer.train()
    return [h["loss"] for h in trainer.history]


def test_device_sampling_follows_the_reference_loss_curve(tmp_path):
    """Same data, same start, patches drawn differently: the curves agree within noise."""
    make_dataset(tmp_path / "data")
    fast, reference = (_losses(tmp_path, s, sampler=s, steps=12, lr=3e-3) for s in ("device", "host"))
    assert fast[-1] < fast[0] and reference[-1] < reference[0]
    assert np.mean(fast[-4:]) == pytest.approx(np.mean(reference[-4:]), rel=0.15)


@pytest.mark.parametrize("method", ["lpnet", "prenet"])
def test_bf16_autocast_follows_the_fp32_loss_curve(tmp_path, method):
    """bf16 on this CPU is emulated (slow) but numerically what a GPU computes."""
    make_dataset(tmp_path / "data", size=(24, 24))
    kw = dict(method=method, batch_size=2, patch_size=16)
    fp32 = _losses(tmp_path, "fp32", precision="fp32", steps=3, **kw)
    bf16 = _losses(tmp_path, "bf16", precision="bf16", steps=3, **kw)
    assert np.allclose(bf16, fp32, rtol=0.03), (fp32, bf16)


def test_precision_choice(monkeypatch):
    import derain_cli.inference.precision as amp

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    warnings = []
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert training_precision("auto", cpu, True) == "fp32"  # emulated bf16 is ~10x slower
    assert training_precision("auto", cuda, True) == "bf16" and training_precision("auto", cuda, False) == "fp32"
    assert training_precision("bf16", cpu, True, warn=warnings.append) == "bf16" and "10x slower" in warnings[0]
    with pytest.raises(UsageError, match="CUDA only"):
        training_precision("fp16", cpu, True)
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert training_precision("auto", cpu, True) == "bf16" and training_precision("auto", cpu, False) == "fp32"


def test_multistep_schedule_and_its_errors(tmp_path):
    cfg = config(tmp_path, "x", 100, schedule="multistep:0.3,0.5,0.8:0.2")
    rates = [_learning_rate(cfg, s) for s in (0, 29, 30, 50, 79, 80, 99)]
    assert rates == pytest.approx([1e-3, 1e-3, 2e-4, 4e-5, 4e-5, 8e-6, 8e-6])
    with pytest.raises(UsageError, match="multistep"):
        Trainer(get_method("lpnet"), config(tmp_path, "y", 2, schedule="multistep:1.5:0.1"), None, [])


def test_resume_with_device_patches_and_a_time_budget_is_exact(tmp_path):
    """A run stopped by its time budget and resumed ends where an uninterrupted one ends."""
    pairs = find_pairs(make_dataset(tmp_path / "data"))
    train, val = split_pairs(pairs, 0.34)
    spec = get_method("lpnet")

    def trainer(out):
        cfg = config(tmp_path, out, 6, sampler="device")
        objective = SupervisedObjective.from_pairs(train, cfg.patch_size, cfg.batch_size, cfg.seed, sampler="device")
        return Trainer(spec, cfg, objective, val, log=lambda m: None)

    straight = trainer("straight")
    straight.train()
    stopped = trainer("stopped")
    clock = iter([None, None, None, "time"])  # the budget ends before the fourth step
    stopped._stop_reason = lambda stop_at: next(clock)
    summary = stopped.train(stop_at=0.0)
    assert summary["steps"] == 3 and not summary["complete"]
    assert "of 6 planned" in (tmp_path / "stopped" / "card.md").read_text()
    resumed = trainer("stopped")
    resumed.resume()
    assert resumed.step == 3 and resumed.train()["complete"]
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k


def test_train_cli_precision_and_minutes(tmp_path):
    from typer.testing import CliRunner

    from derain_cli.cli import app
    from derain_cli.inference.device import cpu_has_native_bf16

    make_dataset(tmp_path / "data")
    args = ["train", str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--iterations", "100000", "--batch-size", "2",
            "--patch-size", "16", "--val-every", "1000", "--val-split", "0.34", "--device", "cpu", "--minutes", "0.05"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    auto = "bf16" if cpu_has_native_bf16() else "fp32"  # lpnet's bf16 training is measured safe
    assert 0 < summary["steps"] < 100000 and summary["precision"] == auto and not summary["complete"]
    state = torch.load(tmp_path / "run/last.pth", weights_only=True)
    assert state["step"] == summary["steps"] and state["config"]["sampler"] == "device"
    ran = "fp32" if auto == "fp32" else "bf16 autocast (weights and optimizer fp32)"
    assert f"| precision | {ran} (asked: auto) |" in (tmp_path / "run/card.md").read_text()
    refused = CliRunner().invoke(app, [*args[:3], str(tmp_path / "run2"), *args[4:], "--precision", "fp16"])
    assert refused.exit_code == 2 and "CUDA only" in refused.output


# -- the training plan ---------------------------------------------------------------------

def test_the_repository_plan_lists_every_shipped_checkpoint():
    from planning.plan import load_plan
    from derain_cli.weights.manifest import load_manifest

    root = Path(__file__).resolve().parents[1]
    plan = load_plan(root / "training_plan.toml")
    # lpnet.real: finetune-real; the authors' weights (prenet.authors-*, spanet.spa) are theirs, not trained here
    shipped = {name for name in load_manifest()
               if not name.endswith(".real") and ".authors-" not in name and name != "spanet.spa"}
    assert shipped <= {e.name for e in plan} and "prenet.rain100l" in {e.name for e in plan}
    # by value per CPU-hour: the distilled real-rain default, then the synthetic-rain default
    assert [e.name for e in plan[:2]] == ["lpnet.real", "lpnet.rain100l"]
    assert "--teacher spanet.spa --photos {data}/real/internet --init lpnet.rain100l" in plan[0].command
    for entry in plan:
        assert entry.command.startswith("derain train ") and f"-m {entry.method} " in entry.command
        assert f"--tag {entry.name.split('.')[1]} " in entry.command and "--iterations" in entry.command


def _tiny_plan(tmp_path: Path) -> Path:
    make_dataset(tmp_path / "data" / "pairs")
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[[run]]\nname = "lpnet.tiny"\ntest = "pairs"\nshipped = 1.0\n'
        'command = "derain train {data}/pairs -m lpnet --tag tiny --val-split 0.34 --iterations 1000000 '
        '--batch-size 2 --patch-size 16 --val-every 1000000 --checkpoint-every 1000000"\n')
    return plan


def test_plan_runner_stops_at_its_budget_and_resumes(tmp_path, monkeypatch):
    import planning.plan as plan_module
    from planning.plan import PlanRunner, export, import_runs, load_plan, report

    monkeypatch.setattr(plan_module, "STARTUP_S", 10)
    monkeypatch.setattr(plan_module, "MIN_TRAINING_S", 5)
    monkeypatch.setattr(plan_module, "STOP_GRACE_S", 2)
    entries = load_plan(_tiny_plan(tmp_path))
    work = tmp_path / "work"
    started = time.time()
    rows = PlanRunner(entries, 0.4, tmp_path / "data", work, device="cpu", score=False, log=lambda m: None).run()
    took = time.time() - started
    assert took < 24 + 10, took  # the budget, with a little slack for the child's exit
    first = rows[0]["steps"]  # how many depends on how busy the machine is
    assert first < 1_000_000 and (work / "lpnet.tiny" / "last.pth").is_file()

    said = []
    rows = PlanRunner(entries, 0.4, tmp_path / "data", work, device="cpu", score=False, log=said.append).run()
    assert rows[0]["steps"] >= first and said[0].endswith("--resume")  # resumed, not restarted
    assert rows[0]["score"] is None and "| no |" in report(rows)

    # scoring only: derain benchmark on the entry's test set, compared with the shipped 1.0 dB
    rows = PlanRunner(entries, 2, tmp_path / "data", work, device="cpu", log=lambda m: None).run(train=False)
    assert rows[0]["score"]["psnr_y"] > 1.0 and rows[0]["score"]["steps"] == rows[0]["steps"]
    assert "| yes |" in report(rows)
    archive = export(rows, work, tmp_path / "out")
    assert (tmp_path / "out" / "plan_report.md").is_file()
    with tarfile.open(archive) as tar:
        assert {"winners/lpnet.tiny.safetensors", "winners/lpnet.tiny.md", "runs/lpnet.tiny/last.pth"} <= set(tar.getnames())
    elsewhere = tmp_path / "elsewhere"
    assert import_runs(archive, elsewhere) == ["lpnet.tiny"]
    summary = json.loads((elsewhere / "lpnet.tiny" / "summary.json").read_text())
    assert summary["steps"] == rows[0]["steps"] and Path(summary["checkpoint"]).is_file()
    assert import_runs(archive, elsewhere) == []  # nothing newer


def test_staged_data_unpacks_bit_for_bit(tmp_path):
    from planning.stage import stage, unstage

    make_dataset(tmp_path / "data" / "set", 3)
    stage(tmp_path / "data", ["set"], tmp_path / "staged")
    unstage(tmp_path / "staged", tmp_path / "back")
    for a, b in zip(find_pairs(tmp_path / "data" / "set"), find_pairs(tmp_path / "back" / "set")):
        for x, y in zip(load_pair(a), load_pair(b)):
            assert np.array_equal(x, y)
