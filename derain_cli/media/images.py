"""Reading and writing pictures without losing what photographers care about.

Read: EXIF orientation is applied (and reset to 1 in the EXIF written back), the ICC
profile and EXIF are kept, alpha is split off to be passed through untouched, 16-bit PNG
and TIFF keep 16 bits, grayscale stays grayscale. Every failure is an ImageError whose
message names the file and the reason in one line. Writes are atomic: a temporary file in
the destination folder, renamed over the target only once it is complete.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import threading
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from derain_cli.errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
DEFAULT_MAX_PIXELS = 250_000_000
_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


@dataclass
class Picture:
    """A decoded picture.

    Attributes:
        pixels: (H, W, 3) RGB or (H, W, 1) grayscale, uint8 or uint16, orientation applied.
        alpha: (H, W, 1) alpha channel in the pixels' dtype, or None.
        exif: EXIF block with orientation reset to 1 (bytes as Pillow writes them), or None.
        icc: ICC profile bytes, or None.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    exif: bytes | None = None
    icc: bytes | None = None

    @property
    def rgb(self) -> np.ndarray:
        """(H, W, 3) view for the networks; grayscale is repeated over three channels."""
        if self.pixels.shape[2] == 3:
            return self.pixels
        return np.repeat(self.pixels, 3, axis=2)

    @property
    def rgb8(self) -> np.ndarray:
        """``rgb`` reduced to 8 bits per channel where it has 16."""
        rgb = self.rgb
        return (rgb // 257).astype(np.uint8) if rgb.dtype == np.uint16 else rgb

    def with_rgb(self, rgb: np.ndarray) -> "Picture":
        """The same picture (metadata, alpha, grayscale-ness) with new colour pixels."""
        if self.pixels.shape[2] == 1:
            rgb = np.rint(rgb.mean(axis=2, keepdims=True, dtype=np.float32)).astype(rgb.dtype)
        return replace(self, pixels=rgb)


def _fail(path: Path, reason: str) -> ImageError:
    return ImageError(f"{path}: {reason}")


def _bomb(path: Path, size: str, max_pixels: int) -> ImageError:
    return _fail(path, f"{size} exceeds the {max_pixels:,}-pixel limit (decompression-bomb guard; raise --max-pixels to allow it)")


def _is_sixteen_bit(im: Image.Image) -> bool:
    if im.mode in _SIXTEEN_BIT_MODES:
        return True
    if im.format == "PNG":
        return _png_bit_depth(im.filename) == 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) == 16
    return False


def _png_bit_depth(filename: str | None) -> int:
    if not filename:
        return 8
    with open(filename, "rb") as f:
        header = f.read(25)
    return header[24] if len(header) == 25 else 8


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, C) array, as PIL's ImageOps.exif_transpose."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(array)) if op else array


def _split_channels(array: np.ndarray, has_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if array.ndim == 2:
        array = array[..., None]
    if has_alpha:
        return np.ascontiguousarray(array[..., :-1]), np.ascontiguousarray(array[..., -1:])
    return array, None


_OPEN_LOCK = threading.Lock()


def _open_guarded(path: Path, max_pixels: int) -> Image.Image:
    """Image.open with Pillow's decompression-bomb limit at ``max_pixels``.

    Pillow checks the limit when it opens a file, and both the limit and the warning filter
    that turns its warning into an error are process-wide: set them for this open only,
    under a lock, so that pictures decoded in parallel threads never see each other's.
    """
    with _OPEN_LOCK:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode a picture file. Raises ImageError (naming the file) for anything unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise _fail(path, f"cannot read ({err.strerror or err})") from None
    if not path.is_file():
        raise _fail(path, "not a file")
    if size == 0:
        raise _fail(path, "empty file (0 bytes)")
    try:
        with _open_guarded(path, max_pixels) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise _bomb(path, f"{width}x{height}", max_pixels)
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise _fail(path, f"{frames} frames (animated or multi-page): derain takes still pictures")
            exif = im.getexif()
            orientation = int(exif.get(_ORIENTATION, 1) or 1)
            icc = im.info.get("icc_profile")
            if _is_sixteen_bit(im):
                pixels, alpha = _read_sixteen_bit(path)
            else:
                pixels, alpha, icc = _read_eight_bit(im, icc)
            pixels = _orient(pixels, orientation)
            alpha = None if alpha is None else _orient(alpha, orientation)
            if _ORIENTATION in exif:
                exif[_ORIENTATION] = 1  # the pixels are upright now
            exif_bytes = exif.tobytes() if len(exif) else None
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb(path, "its size", max_pixels) from None
    except UnidentifiedImageError:
        raise _fail(path, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise _fail(path, f"corrupt or truncated image ({err})") from None
    return Picture(pixels=pixels, alpha=alpha, exif=exif_bytes, icc=icc)


def _read_eight_bit(im: Image.Image, icc: bytes | None):
    im.load()  # decode now so truncation surfaces here
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "I", "F", "1"):
        if im.mode == "CMYK":
            icc = None  # a CMYK profile no longer describes the RGB pixels
        im = im.convert("L" if im.mode in ("I", "F", "1") else "RGB")
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "A" in im.mode else "RGB")
    pixels, alpha = _split_channels(np.asarray(im), im.mode in ("RGBA", "LA"))
    return pixels, alpha, icc


def _read_sixteen_bit(path: Path):
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise _fail(path, "corrupt or unsupported 16-bit image")
    if array.dtype != np.uint16:
        array = array.astype(np.uint16) * 257 if array.dtype == np.uint8 else array.astype(np.uint16)
    if array.ndim == 3:  # OpenCV decodes to BGR(A)
        order = [2, 1, 0, 3] if array.shape[2] == 4 else [2, 1, 0]
        array = array[..., order]
    channels = 1 if array.ndim == 2 else array.shape[2]
    return _split_channels(array, channels in (2, 4))


def _merged(picture: Picture) -> np.ndarray:
    if picture.alpha is None:
        return picture.pixels
    return np.concatenate([picture.pixels, picture.alpha], axis=2)


def current_umask() -> int:
    """The process umask (reading it means setting it: done under a lock, restored at once)."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _temporary_name(path: Path) -> re.Pattern:
    """The names write_image's temporaries of ``path`` get (mkstemp adds 8 random characters)."""
    return re.compile(rf"\.{re.escape(path.stem)}\.[a-z0-9_]{{8}}\.derain-tmp{re.escape(path.suffix.lower())}")


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete temporaries of ``path`` left by a write that was killed (SIGKILL, power loss).

    Only this target's own temporaries match, so other files' writes are never touched.
    """
    path = Path(path)
    pattern = _temporary_name(path)
    try:
        names = [name for name in os.listdir(path.parent) if pattern.fullmatch(name)]
    except OSError:
        return  # no folder yet: nothing left over
    for name in names:
        Path(path.parent, name).unlink(missing_ok=True)


def temporary_beside(path: Path, suffix: str) -> Path:
    """A new hidden temporary file in ``path``'s folder (made if needed), for an atomic write;
    ImageError naming the folder, not the temporary, when it cannot be made there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".derain-tmp{suffix}", dir=path.parent)
    except OSError as err:
        raise _fail(path, f"cannot write in {path.parent} ({err.strerror or type(err).__name__})") from None
    os.close(fd)
    return Path(name)


def write_image(picture: Picture, path: str | os.PathLike, quality: int = 95) -> None:
    """Write atomically; the format follows the extension. Raises ImageError."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise _fail(path, f"unsupported output extension '{ext}' (use one of {', '.join(IMAGE_EXTENSIONS)})")
    if picture.pixels.dtype == np.uint16 and ext not in (".png", ".tif", ".tiff"):
        # JPEG, WebP and BMP hold 8 bits per channel only
        picture = replace(
            picture,
            pixels=(picture.pixels // 257).astype(np.uint8),
            alpha=None if picture.alpha is None else (picture.alpha // 257).astype(np.uint8),
        )
    tmp = temporary_beside(path, ext)
    try:
        if picture.pixels.dtype == np.uint16:
            _write_sixteen_bit(picture, tmp, ext)
        else:
            _write_eight_bit(picture, tmp, ext, quality)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain write would honour the umask
        os.replace(tmp, path)
    except ImageError:
        raise
    except (OSError, ValueError) as err:
        raise _fail(path, f"cannot write ({err})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_eight_bit(picture: Picture, tmp: Path, ext: str, quality: int) -> None:
    array = _merged(picture)
    if ext in (".jpg", ".jpeg") and picture.alpha is not None:
        array = picture.pixels  # JPEG has no alpha channel
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    im = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array, mode=mode)
    options: dict = {}
    if picture.exif and ext != ".bmp":
        options["exif"] = picture.exif
    if picture.icc and ext != ".bmp":
        options["icc_profile"] = picture.icc
    if ext in (".jpg", ".jpeg"):
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2)
        fmt = "JPEG"
    elif ext == ".webp":
        options.update(quality=quality) if quality < 100 else options.update(lossless=True)
        fmt = "WEBP"
    else:
        fmt = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}[ext]
    im.save(tmp, format=fmt, **options)


def _write_sixteen_bit(picture: Picture, tmp: Path, ext: str) -> None:
    array = _merged(picture)
    if ext == ".png":
        _write_png16(tmp, array, picture.icc, picture.exif)
        return
    import cv2  # 16-bit TIFF: OpenCV keeps the depth; EXIF and ICC are not written

    if array.shape[2] >= 3:
        order = [2, 1, 0, 3] if array.shape[2] == 4 else [2, 1, 0]
        array = array[..., order]
    if not cv2.imwrite(str(tmp), np.ascontiguousarray(array)):
        raise ValueError("OpenCV could not encode the 16-bit TIFF")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_png16(path: Path, array: np.ndarray, icc: bytes | None, exif: bytes | None) -> None:
    """A 16-bit PNG with its ICC profile (iCCP) and EXIF (eXIf), which Pillow cannot write."""
    height, width, channels = array.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)))
        if icc:
            f.write(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
        if exif:
            f.write(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
        compressor = zlib.compressobj(6)
        rows_per_block = max(1, (1 << 22) // (width * channels * 2))
        for y in range(0, height, rows_per_block):  # one IDAT per block keeps memory flat
            block = array[y : y + rows_per_block].astype(">u2").reshape(-1, width * channels)
            raw = np.concatenate([np.zeros((block.shape[0], 1), np.uint8), block.view(np.uint8)], axis=1)
            data = compressor.compress(raw.tobytes())
            if data:
                f.write(_png_chunk(b"IDAT", data))
        f.write(_png_chunk(b"IDAT", compressor.flush()))
        f.write(_png_chunk(b"IEND", b""))
