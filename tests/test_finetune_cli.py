"""`derain finetune-real` end to end on tiny photos, and the user's models it produces."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from derain_cli.cli import app

from test_adaptation import make_photos

runner = CliRunner()
TINY = ["--batch-size", "2", "--patch-size", "32", "--iterations", "2", "--checkpoint-every", "1", "--device", "cpu", "-q",
        "--no-guard", "-a", "sirr"]  # two steps of mechanics, not a result: the harm guard has its own tests (test_harm.py)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DERAIN_DATA_DIR", str(tmp_path / "data"))


def test_adapts_lists_uses_and_removes_a_model(tmp_path):
    photos = make_photos(tmp_path / "my rainy photos", n=3, size=(48, 56))
    result = runner.invoke(app, ["finetune-real", str(photos), "-m", "lpnet", *TINY])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "data/models/lpnet.my_rainy_photos"
    assert "saved as lpnet.my_rainy_photos" in result.output
    card = (folder / "card.md").read_text()
    for expected in ("initialised from | lpnet.real", "3 unlabeled photos", "synthesised", "SIRR", "sha256",
                     "hardware", "wall time", "loss terms at the end | loss"):
        assert expected in card, expected
    pairs = tmp_path / "data/runs/finetune-real/lpnet.my_rainy_photos/pairs"
    assert len(list((pairs / "rain").glob("*.png"))) == 6  # light + heavy for each photo

    listed = runner.invoke(app, ["models", "list"])
    assert "lpnet.my_rainy_photos" in listed.output and "yours" in listed.output

    out = tmp_path / "clean.png"
    used = runner.invoke(app, ["remove", str(photos / "photo0.png"), "-m", "lpnet.my_rainy_photos", "-o", str(out)])
    assert used.exit_code == 0, used.output
    assert np.asarray(Image.open(out)).shape == (48, 56, 3)

    again = runner.invoke(app, ["finetune-real", str(photos), "-m", "lpnet", *TINY])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, ["finetune-real", str(photos), "-m", "lpnet", *TINY[:4], "--iterations", "3",
                                  *TINY[6:], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "| iterations | 3 " in (folder / "card.md").read_text()

    refused = runner.invoke(app, ["models", "remove", "lpnet.rain100l"])
    assert refused.exit_code == 2 and "shipped with derain" in refused.output
    removed = runner.invoke(app, ["models", "remove", "lpnet.my_rainy_photos"])
    assert removed.exit_code == 0 and not folder.exists()
    gone = runner.invoke(app, ["remove", str(photos / "photo0.png"), "-m", "lpnet.my_rainy_photos", "-o", str(out)])
    assert gone.exit_code == 2 and "no checkpoint 'lpnet.my_rainy_photos'" in gone.output  # a name no longer known


def test_moments_with_given_pairs_and_a_tag(tmp_path):
    from test_training import make_dataset

    photos = make_photos(tmp_path / "photos", n=3)
    pairs = make_dataset(tmp_path / "pairs", 3)
    result = runner.invoke(app, ["finetune-real", str(photos), "-m", "msdn", "--pairs", str(pairs),
                                 "--tag", "street", *TINY[:-1], "moments"])  # TINY ends with "-a", "sirr"
    assert result.exit_code == 0, result.output
    card = (tmp_path / "data/models/msdn.street/card.md").read_text()
    assert "given with --pairs" in card and "`transform`" in card


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", [], "no images"),
        ("small", ["--patch-size", "64"], "no usable photo of 3 (3 smaller than the 64px patch)"),
        ("photos", ["-m", "lpnt"], "unknown method 'lpnt'. Did you mean 'lpnet'?"),
        ("photos", ["-a", "gmm"], "--algorithm must be one of distill, sirr, supervised, moments"),
        ("photos", ["--tag", "rain100l"], "lpnet.rain100l is a checkpoint shipped with derain"),
        ("missing", [], "not a folder"),
    ],
)
def test_bad_input_gets_one_clear_line(tmp_path, setup, args, message):
    folder = tmp_path / setup
    if setup == "small":
        make_photos(folder, n=3, size=(40, 40))
    elif setup == "photos":
        make_photos(folder, n=3)
    elif setup == "empty":
        folder.mkdir()
    result = runner.invoke(app, ["finetune-real", str(folder), *TINY, *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_the_default_distils_spanet_into_the_start_on_your_photos(tmp_path):
    photos = make_photos(tmp_path / "mine", n=2, size=(48, 56))
    args = [a for a in TINY if a not in ("-a", "sirr")]
    result = runner.invoke(app, ["finetune-real", str(photos), *args])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "data/models/lpnet.mine/card.md").read_text()
    assert "finetune-real --algorithm distill" in card and "spanet.spa (sha256 102c9975" in card
    assert "initialised from | lpnet.real" in card and "Harm check on 2 of the photos" in card
    assert len(list((tmp_path / "data/runs/finetune-real/lpnet.mine/teacher/norain").glob("*.png"))) == 2


def test_fewer_photos_than_the_batch_run(tmp_path):
    photos = make_photos(tmp_path / "one", n=1)
    result = runner.invoke(app, ["finetune-real", str(photos), *TINY, "--batch-size", "4"])
    assert result.exit_code == 0, result.output


def test_unreadable_photos_are_named_and_skipped(tmp_path):
    photos = make_photos(tmp_path / "photos", n=3)
    (photos / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    result = runner.invoke(app, ["finetune-real", str(photos), *(a for a in TINY if a != "-q")])
    assert result.exit_code == 0, result.output
    assert "warning: skipping" in result.output and "truncated.jpg" in result.output


def test_ctrl_c_exits_130_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from derain_cli.training.trainer import Trainer

    photos = make_photos(tmp_path / "photos", n=3)
    original = Trainer.train

    def interrupted(self, on_step=None):
        def stop_after_first(step, record):
            if step == 2:
                raise KeyboardInterrupt
        return original(self, on_step=stop_after_first)

    monkeypatch.setattr(Trainer, "train", interrupted)
    result = runner.invoke(app, ["finetune-real", str(photos), *TINY[:4], "--iterations", "5", *TINY[6:]])
    assert result.exit_code == 130, result.output
    assert "--resume" in result.output
    run = tmp_path / "data/runs/finetune-real/lpnet.photos"
    assert (run / "last.pth").is_file() and not (tmp_path / "data/models/lpnet.photos").exists()
    monkeypatch.setattr(Trainer, "train", original)
    resumed = runner.invoke(app, ["finetune-real", str(photos), *TINY[:4], "--iterations", "5", *TINY[6:], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "data/models/lpnet.photos/weights.safetensors").is_file()


def test_sigint_before_the_first_checkpoint_writes_one_and_says_where(tmp_path, monkeypatch):
    import os
    import signal

    from derain_cli.training.trainer import Trainer

    photos = make_photos(tmp_path / "photos", n=3)
    original = Trainer.train

    def interrupted(self, on_step=None):
        def ctrl_c(step, record):
            if step == 1:
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, on_step=ctrl_c)

    monkeypatch.setattr(Trainer, "train", interrupted)
    args = ["finetune-real", str(photos), *TINY[:4], "--iterations", "3", "--checkpoint-every", "100", *TINY[8:]]
    old_mask = os.umask(0o022)
    try:
        result = runner.invoke(app, args)
    finally:
        os.umask(old_mask)
    last = tmp_path / "data/runs/finetune-real/lpnet.photos/last.pth"
    assert result.exit_code == 130, result.output
    assert (f"interrupted (Ctrl-C) at step 1: checkpoint written to {last}; the same command with --resume "
            "continues from it") in " ".join(result.output.split())
    assert last.stat().st_mode & 0o777 == 0o644
    monkeypatch.setattr(Trainer, "train", original)
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "| iterations | 3 " in (tmp_path / "data/models/lpnet.photos/card.md").read_text()


@pytest.mark.parametrize(("option", "value"), [
    ("--iterations", "0"), ("--batch-size", "0"), ("--patch-size", "-8"), ("--lr", "0"), ("--val-every", "0"),
    ("--checkpoint-every", "-1"), ("--max-side", "0"), ("--mixture-weight", "-1"),
])
def test_nonsense_values_are_refused_at_parse_time(tmp_path, option, value):
    result = runner.invoke(app, ["finetune-real", str(tmp_path / "nowhere"), option, value])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output, result.output


def test_a_restarted_run_keeps_the_earlier_model(tmp_path):
    from derain_cli.weights.user import user_entries

    photos = make_photos(tmp_path / "photos", n=3)
    assert runner.invoke(app, ["finetune-real", str(photos), *TINY]).exit_code == 0
    again = runner.invoke(app, ["finetune-real", str(photos), *TINY, "--restart", "--seed", "1"])
    assert again.exit_code == 0, again.output
    kept = [name for name in user_entries() if name.startswith("lpnet.photos-")]
    assert len(kept) == 1 and f"your earlier lpnet.photos is kept as {kept[0]}" in " ".join(again.output.split())


def test_model_names_cannot_reach_outside_the_models_folder(tmp_path):
    precious = tmp_path / "data" / "precious.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("keep me")
    (tmp_path / "data/models/lpnet.mine").mkdir(parents=True)
    result = runner.invoke(app, ["models", "remove", "lpnet.mine/../.."])
    assert result.exit_code == 2 and "only letters, digits" in result.output
    assert precious.is_file() and (tmp_path / "data/models/lpnet.mine").is_dir()


def test_a_broken_model_of_yours_breaks_nothing_else(tmp_path, write_picture):
    broken = tmp_path / "data/models/lpnet.broken"
    broken.mkdir(parents=True)
    (broken / "entry.toml").write_text("sha256 = 12")
    (tmp_path / "data/models/.lpnet.x.staging").mkdir()  # a leftover of a killed install
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "lpnet.broken" not in listed.output and "staging" not in listed.output
    src = write_picture()
    assert runner.invoke(app, ["remove", str(src), "-o", str(tmp_path / "out.png")]).exit_code == 0
    named = runner.invoke(app, ["remove", str(src), "-m", "lpnet.broken", "-o", str(tmp_path / "o2.png")])
    assert named.exit_code == 3 and "lpnet.broken/entry.toml: unusable" in " ".join(named.output.split())
    assert runner.invoke(app, ["models", "remove", "lpnet.broken"]).exit_code == 0 and not broken.exists()


def test_resume_with_other_settings_is_refused(tmp_path):
    photos = make_photos(tmp_path / "photos", n=3)
    assert runner.invoke(app, ["finetune-real", str(photos), *TINY]).exit_code == 0
    other = runner.invoke(app, ["finetune-real", str(photos), *TINY, "-a", "moments", "--resume"])
    assert other.exit_code == 2 and "objective (sirr -> moments)" in other.output
    faster = runner.invoke(app, ["finetune-real", str(photos), *TINY, "--lr", "0.01", "--resume"])
    assert faster.exit_code == 2 and "lr (0.001 -> 0.01)" in " ".join(faster.output.split())


def test_synthesised_pairs_are_reused_only_for_the_same_photos_and_start(tmp_path, monkeypatch):
    import safetensors.torch

    import derain_cli.data.synth as synth
    from derain_cli.weights.resolve import resolve

    photos = make_photos(tmp_path / "photos", n=3)
    assert runner.invoke(app, ["finetune-real", str(photos), *TINY]).exit_code == 0
    run = tmp_path / "data/runs/finetune-real/lpnet.photos"
    calls = []
    original = synth.add_rain
    monkeypatch.setattr(synth, "add_rain", lambda *a: calls.append(1) or original(*a))

    (run / "last.pth").unlink()  # a run stopped before its first checkpoint
    assert runner.invoke(app, ["finetune-real", str(photos), *TINY]).exit_code == 0
    assert runner.invoke(app, ["finetune-real", str(photos), *TINY, "--restart"]).exit_code == 0
    assert calls == []  # same photos, start and seed: the pairs were not made again

    state = safetensors.torch.load_file(resolve("lpnet.rain100l").path)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(state, other)
    changed = runner.invoke(app, ["finetune-real", str(photos), *TINY, "--restart", "-w", str(other)])
    assert changed.exit_code == 0, changed.output
    assert len(calls) == 6  # other starting weights: new derained photos, new pairs

    def restart():
        assert runner.invoke(app, ["finetune-real", str(photos), *TINY, "--restart"]).exit_code == 0
        return len(calls)

    assert restart() == 12 and restart() == 12  # back to lpnet.rain100l: made once, then reused
    edited = np.asarray(Image.open(photos / "photo0.png"))
    Image.fromarray(255 - edited).save(photos / "photo0.png")  # same name, other pixels
    assert restart() == 18
