"""The `derain` command as a shell script sees it: exit codes, files written, messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from derain_cli.cli import app

runner = CliRunner()


def derain(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_version_and_help_do_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from derain_cli.cli import app; "
        "r = CliRunner().invoke(app, ['--version']); assert r.exit_code == 0 and 'derain' in r.output; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
        "r = CliRunner().invoke(app, ['remove', '--help']); assert r.exit_code == 0; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_single_file_next_to_input(write_picture, lpnet_checkpoint):
    src = write_picture("photo.jpg", quality=95)
    before = src.read_bytes()
    result = derain("remove", src, "-w", lpnet_checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = src.with_name("photo_derained.jpg")
    assert Image.open(out).size == Image.open(src).size
    assert src.read_bytes() == before


def test_folder_with_a_bad_file_carries_on(tmp_path, write_picture, lpnet_checkpoint):
    write_picture("in/a.png")
    write_picture("in/b.jpg")
    (tmp_path / "in/broken.png").write_bytes(b"\x89PNG not really")
    result = derain("remove", tmp_path / "in", "-o", tmp_path / "out", "-w", lpnet_checkpoint, "--json")
    assert result.exit_code == 1
    lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")]
    assert {(Path_name(l["input"]), l["status"]) for l in lines} == {
        ("a.png", "ok"), ("b.jpg", "ok"), ("broken.png", "failed")
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg"]
    broken = [l for l in lines if l["status"] == "failed"][0]
    assert "broken.png" in broken["error"] and "\n" not in broken["error"]


def Path_name(path: str) -> str:
    from pathlib import Path

    return Path(path).name


def test_recursive_mirrors_subfolders_and_globs(tmp_path, write_picture, lpnet_checkpoint):
    write_picture("in/top.png")
    write_picture("in/day1/deep.png")
    assert derain("remove", tmp_path / "in", "-o", tmp_path / "flat", "-w", lpnet_checkpoint).exit_code == 0
    assert [p.name for p in (tmp_path / "flat").rglob("*.png")] == ["top.png"]
    result = derain("remove", tmp_path / "in", "-r", "-o", tmp_path / "out", "-w", lpnet_checkpoint, "--ext", "webp")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/day1/deep.webp").is_file() and (tmp_path / "out/top.webp").is_file()
    result = derain("remove", str(tmp_path / "in" / "*.png"), "-o", tmp_path / "globbed", "-w", lpnet_checkpoint)
    assert result.exit_code == 0 and (tmp_path / "globbed/top.png").is_file()


def test_never_overwrites_inputs_and_respects_existing_outputs(tmp_path, write_picture, lpnet_checkpoint):
    src = write_picture("in/a.png")
    before = src.read_bytes()
    result = derain("remove", tmp_path / "in", "-o", tmp_path / "in", "-w", lpnet_checkpoint)
    assert result.exit_code == 1 and "would overwrite an input" in result.output
    assert src.read_bytes() == before

    out = tmp_path / "a_out.png"
    out.write_bytes(b"keep me")
    result = derain("remove", src, "-o", out, "-w", lpnet_checkpoint)
    assert result.exit_code == 1 and "output exists" in result.output and out.read_bytes() == b"keep me"
    result = derain("remove", src, "-o", out, "-w", lpnet_checkpoint, "--skip-existing", "--json")
    assert result.exit_code == 0 and '"skipped"' in result.stdout and out.read_bytes() == b"keep me"
    assert derain("remove", src, "-o", out, "-w", lpnet_checkpoint, "--overwrite").exit_code == 0
    assert Image.open(out).size == (90, 70)
    assert derain("remove", src, "--overwrite", "--skip-existing", "-w", lpnet_checkpoint).exit_code == 2


def test_alpha_sixteen_bit_and_grayscale_survive_the_cli(tmp_path, lpnet_checkpoint):
    import cv2

    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (40, 60, 4), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8), "L").save(tmp_path / "gray.png")
    result = derain("remove", tmp_path / "deep.png", tmp_path / "gray.png", "-o", tmp_path / "out", "-w", lpnet_checkpoint)
    assert result.exit_code == 0, result.output
    out = cv2.imread(str(tmp_path / "out/deep.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (40, 60, 4)
    assert np.array_equal(out[..., 3], deep[..., 3])
    assert Image.open(tmp_path / "out/gray.png").mode == "L"


def test_exit_codes_for_usage_and_weights_errors(write_picture, tmp_path):
    src = write_picture()
    result = derain("remove", src, "-m", "lpnt")
    assert result.exit_code == 2 and "Did you mean 'lpnet'" in result.output
    assert "--save-mask" not in result.output  # the error names what the user got wrong
    result = derain("remove", src, "-w", tmp_path / "missing.safetensors")
    assert result.exit_code == 3 and "checkpoint file not found" in result.output
    bad = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"conv.weight": torch.zeros(1)}, str(bad))
    result = derain("remove", src, "-w", bad)
    assert result.exit_code == 3 and "does not fit" in result.output
    assert derain("remove", tmp_path / "empty-dir-does-not-exist", "-w", bad).exit_code in (1, 3)
    (tmp_path / "empty").mkdir()
    assert derain("remove", tmp_path / "empty").exit_code == 2


def test_interrupt_exits_130(write_picture, lpnet_checkpoint, monkeypatch):
    import derain_cli.media.batch as batch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "read_image", interrupted)
    result = derain("remove", write_picture(), "-w", lpnet_checkpoint)
    assert result.exit_code == 130


def test_models_list_and_verify():
    result = derain("models", "list")
    assert result.exit_code == 0 and "lpnet.rain100l" in result.output
    assert derain("models", "verify").exit_code == 0
    unknown = derain("models", "verify", "lpnet.nonexistent")
    assert unknown.exit_code == 2 and "no checkpoint 'lpnet.nonexistent'" in unknown.output


def test_an_unknown_checkpoint_name_is_a_usage_error(write_picture, tmp_path):
    result = derain("remove", str(write_picture()), "-m", "lpnet.nosuch", "-o", str(tmp_path / "out.png"))
    assert result.exit_code == 2
    assert "no checkpoint 'lpnet.nosuch' in weights.toml (available for lpnet: " in " ".join(result.output.split())


def test_vgg19_imagenet_says_it_is_not_declared_and_what_to_pass(tmp_path):
    result = derain("models", "download", "vgg19.imagenet")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "vgg19.imagenet is not declared in this release's weights.toml" in text
    assert "`derain train --vgg FILE`" in text and "no checkpoint" not in text


def test_weights_that_are_not_a_checkpoint_or_of_another_method(write_picture, tmp_path):
    import torch
    from conftest import make_checkpoint

    src = write_picture()
    junk = tmp_path / "junk.pth"
    torch.save({"model": Path("pickled object")}, junk)  # torch advises weights_only=False for this
    result = derain("remove", str(src), "--weights", str(junk), "-o", str(tmp_path / "a.png"))
    text = " ".join(result.output.split())
    assert result.exit_code == 3
    assert (f"{junk}: not a checkpoint derain can read (a state dict in .safetensors or .pth); "
            "UnpicklingError") in text
    assert "weights_only" not in text

    prenet = make_checkpoint("prenet", tmp_path / "prenet.safetensors")
    other = derain("remove", str(src), "-m", "lpnet", "--weights", str(prenet), "-o", str(tmp_path / "b.png"))
    assert other.exit_code == 3
    assert f"{prenet}: these weights fit prenet, not lpnet" in " ".join(other.output.split())


def test_rerun_with_outputs_beside_inputs_does_nothing_new(tmp_path, write_picture, lpnet_checkpoint):
    """The README's default layout: a second `remove DIR -r --skip-existing` exits 0, writes nothing."""
    write_picture("in/a.jpg")
    write_picture("in/sub/b.png")
    write_picture("in/lonely_derained.png")  # the user's own file: no source beside it, so an input
    first = derain("remove", tmp_path / "in", "-r", "-w", lpnet_checkpoint, "--json")
    assert first.exit_code == 0, first.output
    assert {Path_name(r["input"]) for r in map(json.loads, first.stdout.splitlines()) if r["status"] == "ok"} == {
        "a.jpg", "b.png", "lonely_derained.png"
    }
    written = sorted(p.relative_to(tmp_path) for p in (tmp_path / "in").rglob("*"))
    again = derain("remove", tmp_path / "in", "-r", "-w", lpnet_checkpoint, "--skip-existing", "--json")
    assert again.exit_code == 0, again.output
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert {(Path_name(r["input"]), r["status"], r["reason"]) for r in records} == {
        ("a.jpg", "skipped", "exists"), ("b.png", "skipped", "exists"), ("lonely_derained.png", "skipped", "exists"),
        ("a_derained.jpg", "skipped", "derain output"), ("b_derained.png", "skipped", "derain output"),
        ("lonely_derained_derained.png", "skipped", "derain output"),
    }
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "in").rglob("*")) == written
    # without --skip-existing: the existing outputs are the failures, never the outputs as inputs
    plain = derain("remove", tmp_path / "in", "-r", "-w", lpnet_checkpoint)
    assert plain.exit_code == 1 and "would overwrite an input" not in plain.output
    assert "3 failed" in plain.output and "output exists" in plain.output


def test_masks_and_custom_suffix_outputs_beside_inputs_are_not_inputs(tmp_path, write_picture):
    from derain_cli.media.batch import OWN_OUTPUT, collect_inputs

    for name in ("a.jpg", "a_derained.webp", "a_derained_mask.png", "b.png", "b_clean.png", "c_clean.png"):
        write_picture(f"in/{name}")
    found = collect_inputs([str(tmp_path / "in")], suffix="_clean")
    assert sorted(rel.name for _, rel in found.files) == ["a.jpg", "b.png", "c_clean.png"]
    assert sorted(Path_name(r.input) for r in found.skipped if r.reason == OWN_OUTPUT) == [
        "a_derained.webp", "a_derained_mask.png", "b_clean.png"
    ]
    named = collect_inputs([str(tmp_path / "in/a_derained.webp")])  # named on the command line: always an input
    assert [rel.name for _, rel in named.files] == ["a_derained.webp"]


def test_non_finite_weights_are_refused_at_load_and_a_non_finite_output_fails_the_file(
    tmp_path, write_picture, lpnet_checkpoint, monkeypatch
):
    import torch
    from safetensors.torch import load_file, save_file

    import derain_cli.methods.lpnet as lpnet

    src = write_picture("in/a.png")
    state = load_file(str(lpnet_checkpoint))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = torch.full_like(state[name], float("nan"))
    nan = tmp_path / "nan.safetensors"
    save_file(state, str(nan))
    result = derain("remove", src, "-w", nan, "--device", "cpu")
    assert result.exit_code == 3, result.output
    assert f"{nan}: not usable weights: {name} hold NaN or Inf values" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not src.with_name("a_derained.png").exists()

    monkeypatch.setattr(lpnet.LPNet, "forward", lambda self, x: torch.full_like(x, float("inf")))
    result = derain("remove", src, "-w", lpnet_checkpoint, "--device", "cpu", "--json")
    assert result.exit_code == 1
    record = json.loads(result.stdout.splitlines()[0])
    assert record["status"] == "failed" and "a.png" in record["error"] and "NaN or Inf" in record["error"]
    assert not src.with_name("a_derained.png").exists()


def test_tile_below_the_methods_minimum_or_negative_is_refused_before_any_work(write_picture, lpnet_checkpoint):
    from derain_cli.inference.tiling import smallest_tile
    from derain_cli.methods import get_method

    src = write_picture()
    assert smallest_tile(get_method("lpnet")) == 209 and smallest_tile(get_method("msdn")) == 256
    for tile in ("7", "-1", "208"):
        result = derain("remove", src, "-w", lpnet_checkpoint, "--tile", tile)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            f"error: --tile {tile}: lpnet needs tiles of at least 209 px (twice its 96 px overlap), "
            "or 0 for whole pictures; its default is 2048"
        )
    assert not src.with_name("rain_derained.png").exists()
    result = derain("remove", src, "-m", "msdn", "--tile", "7")
    assert result.exit_code == 2 and "msdn needs tiles of at least 256 px" in result.output
    for tile in ("0", "209"):
        assert derain("remove", src, "-w", lpnet_checkpoint, "--tile", tile, "--overwrite").exit_code == 0


def test_tile_help_names_each_methods_default_as_the_docs_do():
    from pathlib import Path

    from derain_cli.cli.remove import _default_tiles

    assert _default_tiles() == "lpnet 2048, lpnet-wide 2048, prenet 1024, others 512"
    usage = (Path(__file__).parents[1] / "docs/usage.md").read_text()
    assert "2048 for `lpnet` and `lpnet-wide`, 1024 for `prenet`,\n  512 for the others" in usage


def test_read_only_output_folder_is_found_before_any_picture_runs(tmp_path, write_picture, lpnet_checkpoint, monkeypatch):
    import os

    import derain_cli.media.batch as batch
    import derain_cli.media.images as io

    write_picture("in/a.png")
    write_picture("in/b.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = os.access
    # root writes anywhere whatever the mode: make the folder read-only for root too
    monkeypatch.setattr(batch.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    ran = []
    monkeypatch.setattr(batch, "read_image", lambda *a: ran.append(a) or io.read_image(*a))
    result = derain("remove", tmp_path / "in", "-o", locked / "sub", "-w", lpnet_checkpoint, "--json")
    locked.chmod(0o755)
    assert result.exit_code == 1, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == ["failed", "failed"] and not ran  # the network never ran
    assert records[0]["error"] == f"output {locked / 'sub/a.png'}: cannot write in {locked} (not a writable folder)"
    assert "derain-tmp" not in result.output


def test_a_write_that_cannot_make_its_temporary_names_the_folder(tmp_path, monkeypatch):
    import tempfile

    import pytest

    from derain_cli.errors import ImageError
    from derain_cli.media.images import Picture, write_image

    def refused(**kwargs):
        raise PermissionError(13, "Permission denied", str(Path(kwargs["dir"]) / ".a.x1y2z3w4.derain-tmp.png"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(ImageError) as caught:
        write_image(Picture(np.zeros((4, 4, 3), np.uint8)), tmp_path / "a.png")
    assert str(caught.value) == f"{tmp_path / 'a.png'}: cannot write in {tmp_path} (Permission denied)"



def test_help_shows_readable_metavars_not_type_placeholders():
    for command in (["remove"], ["synth"], ["benchmark"], ["train"], ["finetune-real"], ["export"], ["models", "remove"]):
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        for placeholder in ("<bool>", "<list[", "<str>", "<path>", "{"):
            assert placeholder not in result.output, (command, placeholder)
    usage = derain("remove", "--help").output
    assert "[OPTIONS] INPUTS..." in usage and "PATH" in usage and "PIXELS" in usage
    missing = derain("synth", "-o", "x")
    assert missing.exit_code == 2 and "Missing argument 'CLEAN...'" in missing.output
