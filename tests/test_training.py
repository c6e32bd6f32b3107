"""The training engine: data checks, exact resume, export, and DistributedDataParallel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from derain_cli.data.pairs import DatasetError, PatchSampler, find_pairs
from derain_cli.training.objectives.base import SupervisedObjective
from derain_cli.training.trainer import TrainConfig, Trainer, split_pairs
from derain_cli.methods import get_method

from conftest import rainy_picture


def make_dataset(root: Path, n: int = 6, layout: str = "folders", size=(40, 48)) -> Path:
    for i in range(n):
        rainy = rainy_picture(*size, seed=i)
        clean = np.clip(rainy.astype(np.int16) - 30, 0, 255).astype(np.uint8)
        if layout == "folders":
            paths = (root / "rain" / f"im{i}.png", root / "norain" / f"im{i}.png")
        else:
            paths = (root / f"rain-{i}.png", root / f"norain-{i}.png")
        for path, array in zip(paths, (rainy, clean)):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    return root


def config(tmp_path: Path, out: str, iterations: int, **kw) -> TrainConfig:
    base = dict(method="lpnet", data=str(tmp_path / "data"), out=str(tmp_path / out), iterations=iterations,
                batch_size=4, patch_size=32, lr=1e-3, val_every=2, checkpoint_every=2, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def supervised(pairs, cfg: TrainConfig) -> SupervisedObjective:
    return SupervisedObjective.from_pairs(pairs, cfg.patch_size, cfg.batch_size, cfg.seed)


def make_trainer(spec, cfg: TrainConfig, train, val) -> Trainer:
    return Trainer(spec, cfg, supervised(train, cfg), val, log=lambda m: None)


def test_layouts_and_clear_errors(tmp_path):
    assert len(find_pairs(make_dataset(tmp_path / "a", 3))) == 3
    assert len(find_pairs(make_dataset(tmp_path / "b", 3, layout="flat"))) == 3
    (tmp_path / "a/rain/lonely.png").write_bytes((tmp_path / "a/rain/im0.png").read_bytes())
    with pytest.raises(DatasetError, match="without a partner: lonely"):
        find_pairs(tmp_path / "a")
    (tmp_path / "a/rain/lonely.png").unlink()
    Image.fromarray(rainy_picture(20, 20)).save(tmp_path / "a/norain/im1.png")
    with pytest.raises(DatasetError, match="im1.png is 48x40 but .*im1.png is 20x20"):
        PatchSampler(find_pairs(tmp_path / "a"), 16, 2)
    (tmp_path / "a/norain/im1.png").write_bytes(b"broken")
    with pytest.raises(DatasetError, match="im1.png"):
        PatchSampler(find_pairs(tmp_path / "a"), 16, 2)
    with pytest.raises(DatasetError, match="no paired layout"):
        find_pairs(tmp_path / "a/rain")


def test_sampler_is_a_function_of_step_and_shards_exactly(tmp_path):
    sampler = PatchSampler(find_pairs(make_dataset(tmp_path, 4)), 16, 4, seed=3)
    a, _ = sampler.batch(7)
    assert torch.equal(a, sampler.batch(7)[0]) and not torch.equal(a, sampler.batch(8)[0])
    halves = [sampler.batch(7, rank=r, world_size=2)[0] for r in range(2)]
    assert torch.equal(torch.cat(halves), a)


def test_resume_after_a_crash_ends_with_the_same_weights(tmp_path, monkeypatch):
    pairs = find_pairs(make_dataset(tmp_path / "data"))
    train, val = split_pairs(pairs, 0.34)
    spec = get_method("lpnet")
    straight = make_trainer(spec, config(tmp_path, "straight", 6), train, val)
    straight.train()

    crashing = make_trainer(spec, config(tmp_path, "crashed", 6), train, val)
    original = crashing.objective.sampler.batch

    def crash_at_step_5(step, *args):
        if step == 4:  # the fifth iteration: the checkpoint of step 4 is on disk
            raise KeyboardInterrupt("killed")
        return original(step, *args)

    monkeypatch.setattr(crashing.objective.sampler, "batch", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    resumed = make_trainer(spec, config(tmp_path, "crashed", 6), train, val)
    resumed.resume()
    assert resumed.step == 4
    summary = resumed.train()
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert summary["steps"] == 6 and len(summary["sha256"]) == 64
    out = tmp_path / "crashed"
    assert set(load_file(str(out / "best.safetensors"))) == set(straight.net.state_dict())
    assert 'sha256 = "' in (out / "weights_entry.toml").read_text()
    assert "| iterations | 6 " in (out / "card.md").read_text()
    assert not list(out.glob(".*tmp"))


def test_training_reduces_the_loss(tmp_path):
    pairs = find_pairs(make_dataset(tmp_path / "data"))
    trainer = make_trainer(get_method("lpnet"), config(tmp_path, "run", 30, val_every=10, lr=3e-3), pairs, pairs[:2])
    before = trainer.validate()["psnr_y"]
    trainer.train()
    assert trainer.best["psnr_y"] > before + 1.0


def test_train_cli_refuses_to_clobber_a_run_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from derain_cli.cli import app

    make_dataset(tmp_path / "data")
    args = ["train", str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--iterations", "2", "--batch-size", "2",
            "--patch-size", "16", "--val-every", "1", "--val-split", "0.34", "--device", "cpu", "--tag", "tiny"]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    assert runner.invoke(app, [*args[:4], "--iterations", "3", *args[6:], "--resume"]).exit_code == 0
    assert "[lpnet.tiny]" in (tmp_path / "run/weights_entry.toml").read_text()


@pytest.mark.slow
def test_distributed_training_matches_one_process(tmp_path):
    """torchrun with two CPU processes (gloo) ends where one process with the full batch ends."""
    pairs_root = make_dataset(tmp_path / "data")
    common = ["--iterations", "3", "--batch-size", "4", "--patch-size", "32", "--val-every", "3", "--precision", "fp32",
              "--val-split", "0.34", "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "derain_cli", "train", str(pairs_root), "-o", str(tmp_path / "one"), *common],
                   check=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "derain_cli", "train", str(pairs_root), "-o", str(tmp_path / "two"), *common],
                   check=True, env=env, timeout=300)
    one, two = (load_file(str(tmp_path / d / "final.safetensors")) for d in ("one", "two"))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k


def test_init_starts_from_given_weights_and_refuses_other_methods(tmp_path):
    from conftest import make_checkpoint
    from derain_cli.errors import UsageError, WeightsError

    pairs = find_pairs(make_dataset(tmp_path / "data", 3))
    start = make_checkpoint("lpnet", tmp_path / "start.safetensors", seed=7)
    trainer = make_trainer(get_method("lpnet"), config(tmp_path, "run", 2, init=str(start)), pairs, [])
    expected = load_file(str(start))
    assert all(torch.equal(v, expected[k]) for k, v in trainer.net.state_dict().items())
    trainer.train()
    assert "initialised from" in (tmp_path / "run" / "card.md").read_text()

    with pytest.raises(UsageError, match="not a lpnet checkpoint"):
        make_trainer(get_method("lpnet"), config(tmp_path, "r2", 2, init="jorder.rain100l"), pairs, [])
    wrong = make_checkpoint("ddn", tmp_path / "ddn.safetensors")
    with pytest.raises(WeightsError, match="these weights fit ddn, not lpnet"):
        make_trainer(get_method("lpnet"), config(tmp_path, "r3", 2, init=str(wrong)), pairs, [])


# --- Ctrl-C / SIGTERM: a checkpoint of the step reached, exact resume (issue 24) ------------------

def send(signum):
    """An on_step callback sending ``signum`` to this process once, after the step it names."""
    import signal

    def on_step(step, record, at=[2]):
        if step == at[0]:
            os.kill(os.getpid(), signum)
    return on_step


def test_a_signal_writes_the_checkpoint_of_the_step_reached_and_resume_is_exact(tmp_path):
    import signal

    from derain_cli.errors import Interrupted

    pairs = find_pairs(make_dataset(tmp_path / "data"))
    train, val = split_pairs(pairs, 0.34)
    spec = get_method("lpnet")
    straight = make_trainer(spec, config(tmp_path, "straight", 5, checkpoint_every=1000), train, val)
    straight.train()

    stopped = make_trainer(spec, config(tmp_path, "stopped", 5, checkpoint_every=1000), train, val)
    with pytest.raises(Interrupted) as caught:
        stopped.train(on_step=send(signal.SIGINT))  # before the first periodic checkpoint
    assert caught.value.exit_code == 130 and caught.value.step == 2
    assert caught.value.checkpoint == tmp_path / "stopped/last.pth" and caught.value.checkpoint.is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    resumed = make_trainer(spec, config(tmp_path, "stopped", 5, checkpoint_every=1000), train, val)
    resumed.resume()
    assert resumed.step == 2
    resumed.train()
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path):
    import signal

    from derain_cli.errors import Interrupted

    pairs = find_pairs(make_dataset(tmp_path / "data", 3))
    trainer = make_trainer(get_method("lpnet"), config(tmp_path, "run", 5, checkpoint_every=1000), pairs, [])

    def twice(step, record):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as caught:
        trainer.train(on_step=twice)
    assert caught.value.exit_code == 143 and caught.value.checkpoint is None
    assert not (tmp_path / "run/last.pth").exists()


def tiny_train_args(tmp_path, out="run", *more):
    return ["train", str(tmp_path / "data"), "-o", str(tmp_path / out), "--iterations", "3", "--batch-size", "2",
            "--patch-size", "16", "--val-every", "1", "--val-split", "0.34", "--device", "cpu", "--tag", "tiny", "-q",
            *more]


def test_train_cli_sigterm_before_the_first_checkpoint_exits_143_and_resumes_exactly(tmp_path, monkeypatch):
    import signal

    from typer.testing import CliRunner

    from derain_cli.cli import app

    make_dataset(tmp_path / "data")
    runner = CliRunner()
    assert runner.invoke(app, tiny_train_args(tmp_path, "straight", "--tag", "straight")).exit_code == 0

    original = Trainer.train
    monkeypatch.setattr(Trainer, "train", lambda self, on_step=None, stop_at=None:
                        original(self, on_step=send(signal.SIGTERM), stop_at=stop_at))
    old_mask = os.umask(0o022)
    try:
        stopped = runner.invoke(app, tiny_train_args(tmp_path))
    finally:
        os.umask(old_mask)
    last = tmp_path / "run/last.pth"
    assert stopped.exit_code == 143, stopped.output
    assert (f"terminated (SIGTERM) at step 2: checkpoint written to {last}; the same command with --resume "
            "continues from it") in " ".join(stopped.output.split())
    assert last.stat().st_mode & 0o777 == 0o644  # as the umask says, not mkstemp's 0600
    monkeypatch.setattr(Trainer, "train", original)
    resumed = runner.invoke(app, [*tiny_train_args(tmp_path), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    one, two = (load_file(str(tmp_path / d / "final.safetensors")) for d in ("straight", "run"))
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_train_cli_signal_before_training_says_nothing_to_resume(tmp_path, monkeypatch):
    import signal

    from typer.testing import CliRunner

    from derain_cli.cli import app

    make_dataset(tmp_path / "data", 3)
    monkeypatch.setattr(Trainer, "__init__", lambda self, *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    result = CliRunner().invoke(app, tiny_train_args(tmp_path))
    assert result.exit_code == 143
    assert ("terminated (SIGTERM) before any checkpoint was written: nothing to resume; run the same command "
            "again") in " ".join(result.output.split())
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--iterations", "-5", "Invalid value for '--iterations'"),
    ("--iterations", "0", "Invalid value for '--iterations'"),
    ("--batch-size", "0", "Invalid value for '--batch-size'"),
    ("--patch-size", "-1", "Invalid value for '--patch-size'"),
    ("--lr", "0", "Invalid value for '--lr': must be above 0, got 0"),
    ("--lr", "-1e-3", "Invalid value for '--lr': must be above 0, got -0.001"),
    ("--val-every", "0", "Invalid value for '--val-every'"),
    ("--checkpoint-every", "0", "Invalid value for '--checkpoint-every'"),
    ("--minutes", "0", "Invalid value for '--minutes': must be above 0"),
    ("--weight-decay", "-1", "Invalid value for '--weight-decay'"),
    ("--val-split", "-0.1", "Invalid value for '--val-split'"),
])
def test_train_refuses_nonsense_values_before_reading_anything(tmp_path, option, value, message):
    from typer.testing import CliRunner

    from derain_cli.cli import app

    result = CliRunner().invoke(app, ["train", str(tmp_path / "nowhere"), option, value])
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split()), result.output
    assert not (tmp_path / "nowhere").exists()


def test_a_second_run_with_the_same_tag_keeps_the_first_model(tmp_path):
    from typer.testing import CliRunner

    from derain_cli.cli import app
    from derain_cli.weights.user import models_dir, user_entries

    make_dataset(tmp_path / "data")
    runner = CliRunner()
    old_mask = os.umask(0o022)
    try:
        first = runner.invoke(app, [*(a for a in tiny_train_args(tmp_path, "one") if a != "-q"), "--val-split", "0.15"])
        second = runner.invoke(app, tiny_train_args(tmp_path, "two", "--seed", "1"))
    finally:
        os.umask(old_mask)
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert "1 pair for validation" in " ".join(first.output.split())
    kept = [name for name in user_entries() if name.startswith("lpnet.tiny-")]
    assert len(kept) == 1, list(user_entries())
    assert (f"your earlier lpnet.tiny is kept as {kept[0]} (-m {kept[0]}; `derain models remove {kept[0]}` "
            "deletes it)") in " ".join(second.output.split())
    first_weights = load_file(str(tmp_path / "one/best.safetensors"))
    aside = load_file(str(models_dir() / kept[0] / "weights.safetensors"))
    assert all(torch.equal(first_weights[k], aside[k]) for k in first_weights)
    folder = models_dir() / "lpnet.tiny"
    assert folder.stat().st_mode & 0o777 == 0o755 and (folder / "weights.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("signum", "code", "what"), [(2, 130, "interrupted (Ctrl-C)"), (15, 143, "terminated (SIGTERM)")])
def test_a_real_train_process_stopped_by_a_signal_keeps_a_resumable_checkpoint(tmp_path, signum, code, what):
    """The fault campaign's case: SIGINT / SIGTERM to `derain train` before its first periodic checkpoint."""
    make_dataset(tmp_path / "data", 3)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "derain_cli", "train", str(tmp_path / "data"), "-o", str(run), "--iterations", "100000",
            "--batch-size", "2", "--patch-size", "16", "--val-split", "0", "--device", "cpu", "--tag", "sig"]
    child = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in child.stderr:  # the line saying training starts comes just before the loop
        lines.append(line)
        if line.startswith("training lpnet"):
            break
    child.send_signal(signum)
    _, rest = child.communicate(timeout=120)
    output = " ".join("".join(lines + [rest]).split())
    assert child.returncode == code, output
    assert f"{what} at step " in output and f"checkpoint written to {run / 'last.pth'}; the same command with --resume continues from it" in output
    step = int(output.split(f"{what} at step ")[1].split(":")[0])
    assert torch.load(run / "last.pth", weights_only=True)["step"] == step
