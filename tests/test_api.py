"""The Python API: the same engine behind PIL, numpy, torch and paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import derain_cli
from derain_cli.media.batch import OutputOptions

from conftest import rainy_picture


@pytest.fixture
def restorer(lpnet_checkpoint):
    return derain_cli.load("lpnet", weights=str(lpnet_checkpoint), device="cpu")


def test_numpy_pil_and_tensor_agree(restorer):
    rgb = rainy_picture(60, 80)
    out = restorer(rgb)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.array_equal(np.asarray(restorer(Image.fromarray(rgb))), out)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    t_out = restorer(tensor)
    assert t_out.shape == tensor.shape
    assert np.abs(t_out.permute(1, 2, 0).numpy() * 255 - out).max() <= 1.0
    assert restorer(tensor[None]).shape == (1, 3, 60, 80)


def test_alpha_and_gray_pass_through(restorer):
    rgba = np.dstack([rainy_picture(40, 40), np.full((40, 40, 1), 7, np.uint8)])
    assert np.all(restorer(rgba)[..., 3] == 7)
    gray = Image.fromarray(rainy_picture(40, 40)[..., 0], "L")
    assert restorer(gray).mode == "L"
    with pytest.raises(TypeError):
        restorer("not an image")


def test_derain_paths_reports_every_input(tmp_path, restorer, write_picture):
    write_picture("in/a.png")
    (tmp_path / "in/b.png").write_bytes(b"")
    seen = []
    results = derain_cli.derain_paths([tmp_path / "in"], output=tmp_path / "out", restorer=restorer, on_result=seen.append)
    assert {r.status for r in results} == {"ok", "failed"} and len(seen) == 2
    assert (tmp_path / "out/a.png").is_file()


def test_output_folder_inside_a_recursive_input_is_not_read_back(tmp_path, restorer, write_picture):
    write_picture("in/a.png")
    options = OutputOptions(recursive=True)
    derain_cli.derain_paths([tmp_path / "in"], output=tmp_path / "in/out", restorer=restorer, options=options)
    results = derain_cli.derain_paths(
        [tmp_path / "in"], output=tmp_path / "in/out", restorer=restorer,
        options=OutputOptions(recursive=True, skip_existing=True),
    )
    assert [r.status for r in results] == ["skipped"]


def test_list_methods_is_cheap():
    names = [m.name for m in derain_cli.list_methods()]
    assert names[0] == "lpnet" and len(set(names)) == len(names)
