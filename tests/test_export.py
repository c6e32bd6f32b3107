"""`derain export` and ONNX files in `derain remove`: exported files reproduce derain's networks.

Tolerances: exported networks within 1e-4 (max abs, float values in [0, 1]) of derain's, at
a size other than the one they were traced at; pictures through `remove` within 1/255.
ONNX checks run in onnxruntime and skip when the `onnx` extra is not installed.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from derain_cli.cli import app
from derain_cli.inference.tiling import aligned_size
from derain_cli.export.exporter import INPUT_NAME, TOLERANCE, ExportMetadata, export_model, read_torchscript_metadata
from derain_cli.methods import list_methods
from derain_cli.weights.loading import load_into, read_state_dict

from conftest import make_checkpoint, rainy_picture

METHODS = [spec.name for spec in list_methods()]
DYNAMIC = [spec.name for spec in list_methods() if not spec.sized_by_loops]  # exportable at any size
runner = CliRunner()


def derain(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def onnx_runtime():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return {name: make_checkpoint(name, folder / f"{name}.safetensors", seed=3) for name in METHODS}


@pytest.fixture(scope="module")
def onnx_exports(tmp_path_factory, checkpoints):
    """Every method exported once to ONNX (random weights), shared by the tests below."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("onnx")
    return {name: export_model(name, folder / f"{name}.onnx", weights=str(checkpoints[name])) for name in DYNAMIC}


def network_outputs(method: str, checkpoint, x: torch.Tensor) -> list[np.ndarray]:
    spec = next(s for s in list_methods() if s.name == method)
    model = load_into(spec.build(), read_state_dict(checkpoint), "test").eval()
    with torch.inference_mode():
        out = model(x)
    out = {"image": out} if isinstance(out, torch.Tensor) else out
    return [out[name].numpy() for name in spec.outputs]


def other_size(method: str, batch: int) -> torch.Tensor:
    """An input size neither export tracing (32x48) nor the export's own check (48x32) used."""
    spec = next(s for s in list_methods() if s.name == method)
    h, w = (aligned_size(n, spec.size_multiple, spec.size_offset) for n in (24, 72))
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("method", DYNAMIC)
def test_onnx_export_matches_the_network_at_other_sizes(method, onnx_exports, checkpoints, onnx_runtime):
    report = onnx_exports[method]
    assert report.max_abs_diff <= TOLERANCE
    assert {"height", "width"} <= set(report.metadata.dynamic_axes)
    batch = 2 if "batch" in report.metadata.dynamic_axes else 1
    x = other_size(method, batch)
    session = onnx_runtime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    got = session.run(list(report.metadata.outputs), {INPUT_NAME: x.numpy()})
    for g, e in zip(got, network_outputs(method, checkpoints[method], x), strict=True):
        assert g.shape == e.shape
        assert np.abs(g - e).max() <= TOLERANCE


@pytest.mark.parametrize("method", DYNAMIC)
def test_torchscript_export_matches_the_network_at_other_sizes(method, checkpoints, tmp_path):
    report = export_model(method, tmp_path / f"{method}.pt", weights=str(checkpoints[method]))
    assert report.format == "torchscript" and report.max_abs_diff <= TOLERANCE
    x = other_size(method, 2)
    with torch.inference_mode():
        got = torch.jit.load(str(report.path))(x)
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    for g, e in zip(got, network_outputs(method, checkpoints[method], x), strict=True):
        assert np.abs(g.numpy() - e).max() <= TOLERANCE
    assert read_torchscript_metadata(report.path) == report.metadata


def test_onnx_metadata_round_trips(onnx_exports, onnx_runtime):
    report = onnx_exports["lpnet"]
    props = onnx_runtime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    meta = ExportMetadata.from_strings(props, "test")
    assert meta == report.metadata
    assert (meta.method, meta.size_multiple, meta.size_offset, meta.overlap, meta.outputs) == ("lpnet", 16, 1, 96, ("image",))
    assert len(meta.weights_sha256) == 64 and meta.opset == 17
    assert onnx_exports["jorder"].metadata.outputs == ("image", "mask")


def test_cli_export_then_remove_with_the_onnx_file_equals_pytorch(tmp_path, onnx_runtime):
    model = tmp_path / "models" / "lpnet.onnx"
    result = derain("export", "lpnet", "-o", model)  # the shipped default, lpnet.real
    assert result.exit_code == 0, result.output
    assert "lpnet.real" in result.output and model.is_file()
    assert [p.name for p in model.parent.iterdir()] == ["lpnet.onnx"]  # no temporary left behind
    picture = tmp_path / "rain.png"
    Image.fromarray(rainy_picture(240, 260, seed=2)).save(picture)
    for tile in ("209", "0"):  # tiled (the picture is larger than a tile) and whole
        by_torch, by_onnx = tmp_path / f"torch{tile}.png", tmp_path / f"onnx{tile}.png"
        assert derain("remove", picture, "-m", "lpnet", "-o", by_torch, "--tile", tile, "--device", "cpu", "--precision", "fp32").exit_code == 0
        result = derain("remove", picture, "-w", model, "-o", by_onnx, "--tile", tile)
        assert result.exit_code == 0, result.output
        difference = np.abs(np.asarray(Image.open(by_torch), np.int16) - np.asarray(Image.open(by_onnx), np.int16))
        assert difference.max() <= 1


def test_remove_with_an_onnx_mask_method(tmp_path, onnx_exports, checkpoints, write_picture):
    picture = write_picture("rain.png")
    model = onnx_exports["jorder"].path
    result = derain("remove", picture, "-w", model, "--save-mask", "-o", tmp_path / "onnx.png")
    assert result.exit_code == 0, result.output
    assert derain("remove", picture, "-m", "jorder", "-w", checkpoints["jorder"], "--save-mask", "-o", tmp_path / "torch.png").exit_code == 0
    for name in ("", "_mask"):
        a = np.asarray(Image.open(tmp_path / f"onnx{name}.png"), np.int16)
        b = np.asarray(Image.open(tmp_path / f"torch{name}.png"), np.int16)
        assert np.abs(a - b).max() <= 1
    mismatch = derain("remove", picture, "-w", model, "-m", "lpnet", "-o", tmp_path / "x.png")
    assert mismatch.exit_code == 2 and "jorder" in mismatch.output


def test_onnx_default_tile_is_the_methods_own(tmp_path, checkpoints, onnx_runtime):
    from derain_cli.api import load

    exported = export_model("lpnet", tmp_path / "lpnet.onnx", weights=str(checkpoints["lpnet"]))
    restorer = load(weights=str(exported.path), device="cpu")
    assert restorer.engine.tile == restorer.spec.tile == 2048  # was 512, where PyTorch lpnet runs 2048
    assert load(weights=str(exported.path), device="cpu", tile=0).engine.tile == 0


def test_onnx_batches_through_the_engine_like_single_pictures(onnx_exports, onnx_runtime):
    from derain_cli.api import load

    for method in ("jorder", "ddn"):  # a dynamic batch, and a batch-1 export fed one by one
        restorer = load(weights=str(onnx_exports[method].path), device="cpu")
        frames = [rainy_picture(40, 56, seed=s) for s in (0, 1)]
        for frame, out in zip(frames, restorer.engine.run_batch(frames), strict=True):
            single = restorer.run(frame)
            for name in restorer.spec.outputs:
                assert np.abs(out[name].astype(np.int16) - single[name].astype(np.int16)).max() <= 1
        network = restorer.engine.model
        batch = torch.rand(2, 3, 40, 56)
        assert network(batch)["image"].shape == (2, 3, 40, 56)


def test_fixed_size_export_runs_as_tiles_of_its_size(tmp_path, checkpoints, write_picture, onnx_runtime):
    model = tmp_path / "fixed.onnx"
    result = derain("export", "lpnet", "-w", checkpoints["lpnet"], "-o", model, "--height", "209", "--width", "209")
    assert result.exit_code == 0, result.output
    session = onnx_runtime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[2:] == [209, 209]
    picture = write_picture("big.png", rainy_picture(321, 321))  # two 209 px tiles exactly
    assert derain("remove", picture, "-w", model, "-o", tmp_path / "onnx.png").exit_code == 0
    assert derain("remove", picture, "-w", checkpoints["lpnet"], "--tile", "209", "--precision", "fp32", "-o", tmp_path / "torch.png").exit_code == 0
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png"), np.int16) for n in ("onnx", "torch"))
    assert np.abs(a - b).max() <= 1
    bad = derain("export", "lpnet", "-w", checkpoints["lpnet"], "-o", tmp_path / "bad.onnx", "--height", "100", "--width", "129")
    assert bad.exit_code == 2 and "16k + 1" in bad.output


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_loop_sized_methods_export_at_a_fixed_size_only(fmt, tmp_path, checkpoints, onnx_runtime):
    refused = derain("export", "spanet", "-w", checkpoints["spanet"], "-f", fmt, "-o", tmp_path / "any")
    assert refused.exit_code == 2 and "fixed size only: its IRNN scans" in refused.output and "--height" in refused.output
    report = export_model("spanet", tmp_path / "fixed", fmt=fmt, weights=str(checkpoints["spanet"]), height=16, width=16)
    assert report.metadata.height == 16 and report.max_abs_diff <= TOLERANCE


def test_export_refusals(tmp_path, checkpoints):
    unknown = derain("export", "lpnett", "-o", tmp_path / "x.pt")
    assert unknown.exit_code == 2 and "lpnet" in unknown.output
    existing = tmp_path / "taken.pt"
    existing.write_bytes(b"keep me")
    refused = derain("export", "lpnet", "-w", checkpoints["lpnet"], "-o", existing)
    assert refused.exit_code == 2 and "taken.pt" in refused.output and "--overwrite" in refused.output
    assert existing.read_bytes() == b"keep me"
    assert derain("export", "lpnet", "-w", checkpoints["lpnet"], "-o", existing, "--overwrite", "-q").exit_code == 0
    assert read_torchscript_metadata(existing).method == "lpnet"
    assert derain("export", "lpnet", "-f", "tflite").exit_code == 2
    assert derain("export", "lpnet", "-w", tmp_path / "missing.safetensors", "-o", tmp_path / "m.pt").exit_code == 3


def test_unusable_onnx_files_are_one_line_naming_the_file(tmp_path, write_picture, onnx_runtime):
    import onnx
    from onnx import TensorProto, helper

    picture = write_picture("rain.png")
    plain = tmp_path / "plain.onnx"  # a valid model, but no derain metadata
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, None, None]) for n in ("input", "image")]
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["image"])], "identity", io[:1], io[1:])
    onnx.save(helper.make_model(graph), str(plain))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not protobuf")
    for path, reason in ((plain, "not a derain export"), (corrupt, "not a usable ONNX model")):
        result = derain("remove", picture, "-w", path, "-o", tmp_path / "out.png")
        assert result.exit_code == 3, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and path.name in errors[0] and reason in errors[0]
    assert not (tmp_path / "out.png").exists()


def test_missing_onnxruntime_is_one_line_with_the_install_command(tmp_path, write_picture, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    picture = write_picture("rain.png")
    (tmp_path / "m.onnx").write_bytes(b"whatever")
    for args in (("remove", picture, "-w", tmp_path / "m.onnx"), ("export", "lpnet", "-o", tmp_path / "new.onnx")):
        result = derain(*args)
        assert result.exit_code == 2, result.output
        assert 'pip install "derain[onnx]"' in result.output


def test_export_help_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from derain_cli.cli import app; "
        "r = CliRunner().invoke(app, ['export', '--help']); assert r.exit_code == 0 and '--format' in r.output; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_dynamo_exporter(tmp_path, checkpoints, onnx_runtime):
    pytest.importorskip("onnxscript")
    report = export_model("jorder", tmp_path / "j.onnx", weights=str(checkpoints["jorder"]), dynamo=True)
    assert report.max_abs_diff <= TOLERANCE and report.metadata.opset == 18
    assert report.metadata.dynamic_axes == ("batch", "height", "width")
