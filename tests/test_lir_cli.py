"""LIR from the command line: `derain train --method lir-small --rainy A --clean B`, its errors,
and the semantic loss's VGG19 resolved through the weights manifest (fake Hub)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from derain_cli.cli import app
from derain_cli.errors import UsageError
from derain_cli.methods import get_method
from derain_cli.training.objectives.unpaired import VGG_ENTRY, semantic_network
from derain_cli.weights.manifest import split_name

from conftest import rainy_picture
from test_lir import _pictures, _vgg_state
from test_weights import REPO, REVISION, hub, manifest  # noqa: F401  (fixtures)

runner = CliRunner()


def _paired(folder):
    for sub, seed in (("rain", 0), ("norain", 1)):
        (folder / sub).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rainy_picture(72, 88, seed=seed + 10 * i)).save(folder / sub / f"{i}.png")
    return folder


def test_registered_with_unpaired_training():
    for name in ("lir", "lir-small"):
        spec = get_method(name)
        assert spec.training == "unpaired" and spec.size_multiple == 4 and spec.tileable
    assert get_method("lir-small").build().dim < get_method("lir").build().dim


def test_cli_trains_lir_small_on_unpaired_folders_and_remove_uses_it(tmp_path):
    rainy, clean = _pictures(tmp_path / "rainy", 3, True, 0), _pictures(tmp_path / "clean", 3, False, 1)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--method", "lir-small", "--rainy", str(rainy), "--clean", str(clean),
                                 "--no-semantic", "--val", str(_paired(tmp_path / "val")), "-o", str(out),
                                 "--iterations", "2", "--batch-size", "2", "--val-every", "1", "--tag", "mine",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    card = (out / "card.md").read_text()
    assert "(unpaired)" in card and "off (--no-semantic)" in card and "the last step's" in card
    assert "validation at the end (watched" in card and "best validation" not in card
    assert not (out / "best.safetensors").exists()
    entry = (out / "weights_entry.toml").read_text()
    assert "[lir-small.mine]" in entry and "copy final.safetensors" in entry  # the last weights, not the best
    picture = tmp_path / "photo.png"
    Image.fromarray(rainy_picture(60, 70)).save(picture)
    assert "saved as your model lir-small.mine" in result.output
    result = runner.invoke(app, ["remove", str(picture), "-m", "lir-small.mine", "-o", str(tmp_path / "clean_out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "clean_out" / "photo.png").is_file()


def test_split_unpaired_trains_on_disjoint_halves_of_pairs(tmp_path):
    from derain_cli.data.pairs import find_pairs
    from derain_cli.training.objectives.unpaired import unpaired_halves

    data = tmp_path / "pairs"
    for sub, seed in (("rain", 0), ("norain", 1)):
        (data / sub).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rainy_picture(72, 88, seed=seed + 10 * i)).save(data / sub / f"{i}.png")
    rainy, clean = unpaired_halves(find_pairs(data))
    assert len(rainy) == len(clean) == 3 and not {p.name for p in rainy} & {p.name for p in clean}
    assert all(p.parent.name == "rain" for p in rainy) and all(p.parent.name == "norain" for p in clean)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "--method", "lir-small", "--split-unpaired", "--no-semantic",
                                 "-o", str(out), "--iterations", "1", "--batch-size", "2", "--val-split", "0.2",
                                 "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    card = (out / "card.md").read_text()
    assert "--split-unpaired: rainy pictures of 2 pairs, clean pictures of 2 others" in card  # 6 pairs, 2 held out
    assert "2 rainy + 2 clean photos" in card


@pytest.mark.parametrize("args, message", [
    (["--method", "lpnet", "--rainy", "R", "--clean", "C"], "lpnet trains on pairs"),
    (["--method", "lir-small", "--rainy", "R"], "needs both --rainy DIR and --clean DIR"),
    (["--method", "lir-small"], "--rainy DIR --clean DIR"),
    (["DATA", "--method", "lir-small", "--rainy", "R", "--clean", "C"], "not both"),
    (["DATA", "--method", "msdn", "--split-unpaired"], "msdn trains on pairs"),
])
def test_cli_unpaired_mistakes_get_one_line(args, message, tmp_path):
    result = runner.invoke(app, ["train", *args, "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.output, result.output


def test_semantic_loss_without_vgg_weights_offers_no_semantic(manifest, tmp_path):  # noqa: F811
    manifest("")  # an installation that declares no vgg19.imagenet
    rainy, clean = _pictures(tmp_path / "rainy", 2, True, 0), _pictures(tmp_path / "clean", 2, False, 1)
    result = runner.invoke(app, ["train", "--method", "lir-small", "--rainy", str(rainy), "--clean", str(clean),
                                 "-o", str(tmp_path / "run"), "--iterations", "1"])
    assert result.exit_code == 2 and "--no-semantic" in result.output and "--vgg FILE" in result.output
    assert not (tmp_path / "run" / "last.pth").exists()


def _vgg_manifest(sha: str) -> str:
    return f"""
[{VGG_ENTRY}]
hub = {{ repo = "{REPO}", filename = "vgg19.safetensors", revision = "{REVISION}" }}
sha256 = "{sha}"
license = "BSD-3-Clause"
trained = "ImageNet (torchvision)"
"""


def test_vgg19_resolves_through_the_manifest_from_the_hub(manifest, hub, tmp_path, monkeypatch):  # noqa: F811
    path = tmp_path / "vgg19.safetensors"
    save_file(_vgg_state(), str(path))
    body = path.read_bytes()
    hub.publish("vgg19.safetensors", body)
    manifest(_vgg_manifest(hashlib.sha256(body).hexdigest()))
    assert split_name("vgg19") == ("vgg19", "imagenet")
    network, label = semantic_network()
    assert VGG_ENTRY in label and network(torch.rand(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    semantic_network()  # cached: offline is fine
    assert hub.requests == []


def test_vgg19_with_wrong_sha_or_offline_miss_is_refused_with_the_way_out(manifest, hub, tmp_path, monkeypatch):  # noqa: F811
    path = tmp_path / "vgg19.safetensors"
    save_file(_vgg_state(), str(path))
    hub.publish("vgg19.safetensors", path.read_bytes() + b"tampered")
    manifest(_vgg_manifest(hashlib.sha256(path.read_bytes()).hexdigest()))
    with pytest.raises(UsageError, match="refused.*--no-semantic"):
        semantic_network()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="offline.*--no-semantic"):
        semantic_network()


def test_vgg_file_of_another_network_is_named(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"features.0.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    with pytest.raises(UsageError, match="other.safetensors: not VGG19 weights"):
        semantic_network(path)
    network, label = semantic_network(_save(tmp_path / "vgg.pth"))
    assert label.endswith("vgg.pth")


def _save(path):
    torch.save(_vgg_state(), path)
    return path


@pytest.mark.slow
def test_unpaired_training_under_torchrun_keeps_processes_in_step(tmp_path):
    """Two CPU processes (gloo): each takes half of both streams' crops; the generators are
    averaged by DDP, the discriminators by hand. The Trainer's end-of-run check fails the run
    if any process holds other weights (as it would without the discriminators' averaging)."""
    import os
    import subprocess
    import sys

    rainy, clean = _pictures(tmp_path / "rainy", 3, True, 0), _pictures(tmp_path / "clean", 3, False, 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "derain_cli", "train", "--method", "lir-small", "--rainy", str(rainy), "--clean",
                          str(clean), "--no-semantic", "-o", str(tmp_path / "two"), "--iterations", "2",
                          "--batch-size", "4", "--val-every", "2", "--device", "cpu", "-q"],
                         env=env, timeout=300, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "two" / "final.safetensors").is_file()
    assert "2 x CPU" in (tmp_path / "two" / "card.md").read_text()


def test_crops_the_discriminators_cannot_take_are_refused(tmp_path):
    rainy, clean = _pictures(tmp_path / "rainy", 2, True, 0), _pictures(tmp_path / "clean", 2, False, 1)
    for size in ("48", "66"):
        result = runner.invoke(app, ["train", "--method", "lir-small", "--rainy", str(rainy), "--clean", str(clean),
                                     "--no-semantic", "-o", str(tmp_path / f"run{size}"), "--patch-size", size])
        assert result.exit_code == 2 and f"--patch-size {size} will not do" in result.output, result.output


def test_resume_refuses_a_changed_semantic_switch(tmp_path):
    from derain_cli.training.objectives.unpaired import UnpairedObjective

    rainy, clean = _pictures(tmp_path / "rainy", 2, True, 0), _pictures(tmp_path / "clean", 2, False, 1)
    plain = UnpairedObjective.from_folders(rainy, clean, 8, 1, batch_size=2, warn=lambda m: None)
    state = plain.state_dict()
    assert state["semantic"] is False
    state["semantic"] = True
    with pytest.raises(UsageError, match="started with the semantic loss"):
        plain.load_state_dict(state)


def test_paired_training_saves_your_model_but_never_a_shipped_name(tmp_path):
    data = _paired(tmp_path / "pairs")
    args = ["--iterations", "1", "--batch-size", "2", "--patch-size", "32", "--val-split", "0", "--device", "cpu"]
    mine = runner.invoke(app, ["train", str(data), "-m", "lpnet", "-o", str(tmp_path / "a"), "--tag", "mine", *args])
    assert mine.exit_code == 0 and "saved as your model lpnet.mine" in mine.output, mine.output
    again = runner.invoke(app, ["train", str(data), "-m", "lpnet", "-o", str(tmp_path / "b"), "--tag", "mine", "--seed", "1",
                                *args])  # other weights: the earlier model is kept aside, and said so
    assert "your earlier lpnet.mine is kept as lpnet.mine-" in " ".join(again.output.split()), again.output
    listed = runner.invoke(app, ["models", "list"])
    assert "lpnet.mine" in listed.output
    shipped = runner.invoke(app, ["train", str(data), "-m", "lpnet", "-o", str(tmp_path / "c"), "--tag", "rain100l",
                                  *args])
    assert shipped.exit_code == 0 and "not saved among your models" in shipped.output
    bad = runner.invoke(app, ["train", str(data), "-m", "lpnet", "-o", str(tmp_path / "d"), "--tag", "../x", *args])
    assert bad.exit_code == 2 and not (tmp_path / "d" / "last.pth").exists()


def _agree_or_not(rank, world_size, init, differ, outcomes):
    import torch.distributed as dist

    from derain_cli.training.trainer import check_same_weights
    from derain_cli.errors import DerainError

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    weights = [torch.ones(3, 3), torch.arange(4.0)]
    if differ and rank == 1:
        weights[1] = weights[1] + 1e-6
    try:
        check_same_weights(weights, world_size)
        outcomes.put((rank, "same"))
    except DerainError as err:
        outcomes.put((rank, str(err)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_processes_compare_weight_fingerprints(differ, tmp_path):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    outcomes = context.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [context.Process(target=_agree_or_not, args=(r, 2, init, differ, outcomes)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = dict(outcomes.get(timeout=5) for _ in range(2))
    if differ:
        assert all("ended with different weights" in results[r] for r in (0, 1))
    else:
        assert results == {0: "same", 1: "same"}
