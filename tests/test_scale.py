"""Batches at scale: every entry accounted for, shards, the decode/encode pipeline, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import derain_cli.media.batch as batch
import derain_cli.inference.device as device
from derain_cli.media.batch import OutputOptions, Shard, collect_inputs, plan_jobs, run_jobs
from derain_cli.cli import app
from derain_cli.inference.engine import InferenceEngine
from derain_cli.errors import UsageError
from derain_cli.media.images import remove_stale_temporaries
from derain_cli.methods import get_method

from conftest import rainy_picture

runner = CliRunner()


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def save(path: Path, seed: int = 0, size: tuple[int, int] = (20, 24), **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rainy_picture(*size, seed=seed)).save(path, **options)
    return path


def animated(path: Path, fmt: str) -> Path:
    frames = [Image.fromarray(rainy_picture(16, 16, seed=k)) for k in range(3)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    return path


def test_summary_and_json_account_for_every_entry(tmp_path, lpnet_checkpoint):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png")
    save(src / "done.png")
    save(out / "done.png")  # already derained: skipped with --skip-existing
    animated(src / "anim.gif", "GIF")  # not a format derain writes
    animated(src / "anim.webp", "WEBP")  # a still-picture format holding an animation
    (src / "notes.txt").write_text("not a picture")
    (src / "x.png").mkdir()  # a folder with a picture's name
    (src / "gone.png").symlink_to(src / "missing.png")
    save(src / ".hidden.png")
    result = runner.invoke(app, ["remove", str(src), "-o", str(out), "-w", str(lpnet_checkpoint), "--skip-existing", "--json"])
    assert result.exit_code == 1, result.output
    seen = {Path(r["input"]).name: (r["status"], r["reason"]) for r in json_lines(result.stdout)}
    assert seen == {
        "a.png": ("ok", None),
        "done.png": ("skipped", "exists"),
        "anim.gif": ("skipped", "unsupported format"),
        "anim.webp": ("failed", None),
        "notes.txt": ("skipped", "unsupported format"),
        "x.png": ("skipped", "folder (use -r)"),
        "gone.png": ("skipped", "broken link"),
        ".hidden.png": ("skipped", "hidden"),
    }
    assert "3 frames (animated or multi-page)" in result.output
    summary = [line for line in result.output.splitlines() if "derained," in line][0]
    assert summary.startswith("1 derained, 6 skipped (") and summary.endswith(", 1 failed")
    for reason in ("2 unsupported format", "1 exists", "1 broken link", "1 folder (use -r)", "1 hidden"):
        assert reason in summary


def test_recursive_walk_skips_hidden_folders_and_reports_them(tmp_path):
    save(tmp_path / "in/day/a.png")
    save(tmp_path / "in/.thumbnails/a.png")
    found = collect_inputs([str(tmp_path / "in")], recursive=True)
    assert [rel.as_posix() for _, rel in found.files] == ["day/a.png"]
    assert [(Path(r.input).name, r.reason) for r in found.skipped] == [(".thumbnails", "hidden")]


def test_shards_split_a_folder_without_overlap_whatever_the_listing_order(tmp_path):
    files = [(tmp_path / f"{k:03d}.png", Path(f"{k:03d}.png")) for k in range(60)]
    jobs, _ = plan_jobs(files, OutputOptions(output=tmp_path / "out"))
    shards = [Shard.parse(f"{k}/3") for k in range(3)]
    owned = [{j.source for j in jobs if shard.owns(j.source)} for shard in shards]
    assert set().union(*owned) == {j.source for j in jobs}
    assert sum(len(o) for o in owned) == len(jobs)  # disjoint
    assert all(8 <= len(o) <= 32 for o in owned)  # roughly balanced (60 files, 3 workers)
    reordered = [{j.source for j in reversed(jobs) if shard.owns(j.source)} for shard in shards]
    assert reordered == owned
    for text in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UsageError, match="--shard"):
            Shard.parse(text)


def test_shard_workers_of_the_cli_cover_the_folder_once(tmp_path, lpnet_checkpoint):
    for k in range(12):
        save(tmp_path / "in" / f"{k:02d}.png", seed=k)
    written = []
    for k in range(3):
        result = runner.invoke(app, ["remove", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-w",
                                     str(lpnet_checkpoint), "--shard", f"{k}/3", "--json"])
        assert result.exit_code == 0, result.output
        written += [Path(r["output"]).name for r in json_lines(result.stdout)]
        assert "left to other shards" in result.output
    assert sorted(written) == sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{k:02d}.png" for k in range(12)]
    bad = runner.invoke(app, ["remove", str(tmp_path / "in"), "-w", str(lpnet_checkpoint), "--shard", "3/3"])
    assert bad.exit_code == 2 and "--shard 3/3" in bad.output


def test_pipeline_gives_the_sequential_results_in_order(tmp_path):
    sources = [save(tmp_path / "in" / f"{k}.png", seed=k) for k in range(7)]
    (tmp_path / "in/3.png").write_bytes(b"truncated")
    options = OutputOptions(output=tmp_path / "out", ext="png")
    jobs, _ = plan_jobs([(s, Path(s.name)) for s in sources], options)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/5.png").mkdir()  # the write of 5 fails: a folder is in the way
    invert = lambda rgb: {"image": 255 - rgb}  # noqa: E731
    for workers in (0, 1, 3):
        for job in jobs:
            if job.target.is_file():
                job.target.unlink()
        results = list(run_jobs(jobs, invert, options, workers))
        assert [Path(r.input).name for r in results] == [f"{k}.png" for k in range(7)]
        assert [r.status for r in results] == ["ok", "ok", "ok", "failed", "ok", "failed", "ok"], workers
        assert "3.png" in results[3].error and "5.png" in results[5].error
        for k in (0, 6):
            assert np.array_equal(np.asarray(Image.open(tmp_path / f"out/{k}.png")), 255 - np.asarray(Image.open(sources[k])))


def test_pipeline_keeps_memory_bounded(tmp_path, monkeypatch):
    """No more than `workers` pictures are decoded ahead of the network."""
    sources = [save(tmp_path / f"{k}.png", seed=k) for k in range(12)]
    options = OutputOptions(output=tmp_path / "out")
    jobs, _ = plan_jobs([(s, Path(s.name)) for s in sources], options)
    lock, state = threading.Lock(), {"decoded": 0, "derained": 0, "most_ahead": 0}
    real_read = batch.read_image

    def counting_read(path, max_pixels):
        picture = real_read(path, max_pixels)
        with lock:
            state["decoded"] += 1
            state["most_ahead"] = max(state["most_ahead"], state["decoded"] - state["derained"])
        return picture

    def slow_derain(rgb):
        time.sleep(0.01)
        with lock:
            state["derained"] += 1
        return {"image": rgb}

    monkeypatch.setattr(batch, "read_image", counting_read)
    assert all(r.status == "ok" for r in run_jobs(jobs, slow_derain, options, workers=2))
    assert state["decoded"] == 12 and state["most_ahead"] <= 2


def test_stale_temporaries_of_a_killed_write_are_removed_and_no_others(tmp_path):
    target = tmp_path / "a.png"
    ours = [tempfile.mkstemp(prefix=".a.", suffix=".derain-tmp.png", dir=tmp_path)[1] for _ in range(2)]
    theirs = tempfile.mkstemp(prefix=".a.b.", suffix=".derain-tmp.png", dir=tmp_path)[1]  # target a.b.png
    remove_stale_temporaries(target)
    assert not any(Path(p).exists() for p in ours) and Path(theirs).exists()
    remove_stale_temporaries(tmp_path / "nowhere" / "a.png")  # no folder: nothing to do


def test_auto_precision_uses_bf16_only_where_native_and_declared_safe(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.pick_dtype("auto", cpu, half_safe=True, bf16_safe=True) == torch.bfloat16
    assert device.pick_dtype("auto", cpu, half_safe=True, bf16_safe=False) == torch.float32
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert device.pick_dtype("auto", cpu, half_safe=True, bf16_safe=True) == torch.float32
    assert get_method("lpnet").bf16_safe and not get_method("prenet").bf16_safe


def test_explicit_bf16_on_an_emulating_cpu_warns_with_the_measured_cost(monkeypatch):
    import derain_cli.inference.engine as inference

    notices = []
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    spec = get_method("lpnet")
    InferenceEngine(spec.build(), spec, "cpu", "bf16", log=notices.append)
    assert len(notices) == 1 and "no native bf16" in notices[0] and "fp32" in notices[0]
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    InferenceEngine(spec.build(), spec, "cpu", "bf16", log=notices.append)
    InferenceEngine(spec.build(), spec, "cpu", "fp32", log=notices.append)
    assert len(notices) == 1


# --- fault campaign: a few hundred files, 5 % bad, and a SIGKILL in the middle -------------

BAD_KINDS = ("empty", "truncated", "not_an_image", "bomb", "unreadable", "animated")


def make_campaign(folder: Path, good: int = 190) -> tuple[set[str], set[str]]:
    """`good` small pictures and 10 bad files of every kind (5 % of 200)."""
    folder.mkdir(parents=True)
    goods = {save(folder / f"good_{k:03d}.{'png' if k % 2 else 'jpg'}", seed=k, size=(12, 16)).name for k in range(good)}
    bads = set()
    for k in range(10):
        kind = BAD_KINDS[k % len(BAD_KINDS)]
        path = folder / f"bad_{k:02d}_{kind}.png"
        if kind == "empty":
            path.touch()
        elif kind == "truncated":
            save(path, size=(40, 40))
            path.write_bytes(path.read_bytes()[:60])
        elif kind == "not_an_image":
            path.write_text("this is text\n" * 5)
        elif kind == "bomb":
            save(path, size=(300, 300))  # over the --max-pixels the campaign sets
        elif kind == "unreadable":
            save(path)
            path.chmod(0)
            if os.access(path, os.R_OK):  # root reads anything: use a folder in the way instead
                path.chmod(0o644)
                path.unlink()
                path.mkdir()
                (path / "inside.txt").write_text("x")  # a folder named like a picture: skipped, with the reason
        else:
            animated(path, "PNG")
        bads.add(path.name)
    return goods, bads


def derain_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "derain_cli", "remove", *args]


@pytest.mark.slow
def test_fault_campaign_writes_every_good_file_names_every_bad_one_and_survives_sigkill(tmp_path, lpnet_checkpoint):
    src, out = tmp_path / "in", tmp_path / "out"
    goods, bads = make_campaign(src)
    common = ["-w", str(lpnet_checkpoint), "--device", "cpu", "--max-pixels", "50000", "--json", "-q"]

    # killed mid-batch: no partial picture under a target name
    child = subprocess.Popen(derain_command(str(src), "-o", str(out), *common), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if out.is_dir() and len([p for p in out.iterdir() if not p.name.startswith(".")]) >= 40:
            break
        time.sleep(0.02)
    assert child.poll() is None, "the batch finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert 40 <= len(finished) < len(goods)
    for path in finished:
        with Image.open(path) as im:
            im.load()  # raises on a truncated file

    # the rerun completes the batch, reports every bad file, and leaves no temporary
    done = subprocess.run(derain_command(str(src), "-o", str(out), "--skip-existing", *common), capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    records = json_lines(done.stdout)
    failed = {Path(r["input"]).name for r in records if r["status"] == "failed"}
    skipped_bad = {Path(r["input"]).name for r in records if r["status"] == "skipped" and r["reason"] != "exists"}
    assert failed | skipped_bad == bads and not failed & skipped_bad
    assert len(failed) >= 8
    for name in failed:
        assert sum(name in line for line in done.stderr.splitlines()) == 1  # one line per bad file
    assert {p.name for p in out.iterdir()} == {Path(g).stem + Path(g).suffix for g in goods}
    assert sum(r["reason"] == "exists" for r in records) == len(finished)


# --- fault campaign, part two: what a new user tried (issue 24), each in a real process -----


def derain_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "derain_cli", *map(str, args)], capture_output=True, text=True)


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fault_campaign_synth_into_a_pair_folder_and_a_rerun_beside_the_inputs(tmp_path, lpnet_checkpoint):
    pairs = tmp_path / "X"
    for k in range(3):
        save(pairs / "rain" / f"p{k}.png", seed=k)
        save(pairs / "norain" / f"p{k}.png", seed=10 + k)
    before = snapshot(pairs)
    synth = derain_cli("synth", pairs / "norain", "-o", pairs)  # would have replaced the real rainy pictures
    assert synth.returncode == 2 and "already holds pairs" in synth.stderr and snapshot(pairs) == before

    common = ("-r", "-w", lpnet_checkpoint, "--device", "cpu", "--json", "-q")
    first = derain_cli("remove", pairs, *common)
    assert first.returncode == 0, first.stderr
    written = snapshot(pairs)
    assert len(written) == 12
    again = derain_cli("remove", pairs, "--skip-existing", *common)  # the resume pattern scripts rely on
    assert again.returncode == 0, again.stderr
    reasons = sorted(r["reason"] for r in json_lines(again.stdout))
    assert reasons == ["derain output"] * 6 + ["exists"] * 6 and snapshot(pairs) == written


def test_fault_campaign_nan_weights_and_an_odd_sized_video(tmp_path, lpnet_checkpoint):
    from safetensors.torch import load_file, save_file

    picture = save(tmp_path / "in" / "a.png")
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in load_file(str(lpnet_checkpoint)).items()}
    nan = tmp_path / "nan.safetensors"
    save_file(state, str(nan))
    refused = derain_cli("remove", picture, "-w", nan, "--device", "cpu")
    assert refused.returncode == 3 and str(nan) in refused.stderr and "NaN or Inf" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "in/a_derained.png").exists()

    av = pytest.importorskip("av", reason="video needs PyAV")
    clip = tmp_path / "odd.mkv"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 45, 33, "yuv444p"
        for k in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rainy_picture(33, 45, seed=k), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    done = derain_cli("remove", clip, "-o", tmp_path / "clean.mp4", "-w", lpnet_checkpoint, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    with av.open(str(tmp_path / "clean.mp4")) as container:
        assert [f.to_ndarray(format="rgb24").shape for f in container.decode(video=0)] == [(34, 46, 3)] * 2
