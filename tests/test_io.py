"""Reading and writing pictures: metadata, alpha, depth, bad files, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from derain_cli.errors import ImageError
from derain_cli.media.images import Picture, read_image, write_image

from conftest import rainy_picture

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_like_pillow_and_reset(tmp_path, orientation):
    array = rainy_picture(20, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "derain-test-camera"
    path = tmp_path / "o.jpg"
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=100)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    picture = read_image(path)
    assert np.array_equal(picture.pixels, expected)
    out = tmp_path / "out.jpg"
    write_image(picture, out)
    written = Image.open(out).getexif()
    assert written[0x0112] == 1 and written[0x010F] == "derain-test-camera"


def test_icc_profile_and_alpha_pass_through(tmp_path):
    rgba = np.dstack([rainy_picture(), np.arange(70 * 90, dtype=np.uint32).reshape(70, 90, 1) % 256]).astype(np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path, icc_profile=SRGB)
    picture = read_image(path)
    assert picture.pixels.shape == (70, 90, 3) and picture.icc == SRGB
    assert np.array_equal(picture.alpha[..., 0], rgba[..., 3])
    write_image(picture.with_rgb(255 - picture.pixels), tmp_path / "b.png")
    back = Image.open(tmp_path / "b.png")
    assert back.mode == "RGBA" and back.info["icc_profile"] == SRGB
    assert np.array_equal(np.asarray(back)[..., 3], rgba[..., 3])


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_sixteen_bit_keeps_its_depth(tmp_path, ext):
    import cv2

    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    path = tmp_path / f"deep{ext}"
    cv2.imwrite(str(path), rgb16[..., ::-1])
    picture = read_image(path)
    assert picture.pixels.dtype == np.uint16 and np.array_equal(picture.pixels, rgb16)
    out = tmp_path / f"out{ext}"
    write_image(picture, out)
    assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1], rgb16)


def test_sixteen_bit_png_keeps_icc_and_exif(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "deep-camera"
    rgb16 = (rainy_picture(30, 40).astype(np.uint16) * 257)
    out = tmp_path / "deep.png"
    write_image(Picture(pixels=rgb16, icc=SRGB, exif=exif.tobytes()), out)
    back = read_image(out)
    assert back.pixels.dtype == np.uint16 and np.array_equal(back.pixels, rgb16)
    assert back.icc == SRGB
    assert Image.open(out).getexif()[0x010F] == "deep-camera"


def test_grayscale_stays_grayscale(tmp_path):
    gray = rainy_picture()[..., 1]
    path = tmp_path / "g.png"
    Image.fromarray(gray, "L").save(path)
    picture = read_image(path)
    assert picture.pixels.shape == (70, 90, 1) and picture.rgb.shape == (70, 90, 3)
    write_image(picture.with_rgb(picture.rgb), tmp_path / "g2.png")
    back = Image.open(tmp_path / "g2.png")
    assert back.mode == "L" and np.array_equal(np.asarray(back), gray)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image"),
        (None, "corrupt or truncated"),
    ],
)
def test_bad_files_get_one_clear_line(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is None:  # a real JPEG cut in half
        Image.fromarray(rainy_picture(200, 200)).save(path, quality=90)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_decompression_bomb_and_missing_file(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(rainy_picture(100, 100)).save(path)
    with pytest.raises(ImageError, match="pixel limit"):
        read_image(path, max_pixels=5_000)
    with pytest.raises(ImageError, match="cannot read"):
        read_image(tmp_path / "missing.png")


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous result")

    def explode(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half an image")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(ImageError, match="disk full"):
        write_image(Picture(pixels=rainy_picture()), target)
    assert target.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.png"]


def test_written_files_get_the_permissions_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        write_image(Picture(pixels=rainy_picture()), tmp_path / "a.png")
        os.umask(0o077)
        write_image(Picture(pixels=rainy_picture()), tmp_path / "b.jpg")
    finally:
        os.umask(old)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.jpg").stat().st_mode & 0o777 == 0o600
