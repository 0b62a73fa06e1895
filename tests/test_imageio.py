"""Image input: every accepted format decodes to the same face; every kind of bad input gets a typed error."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from agent.capture.imageio import decode_bytes, from_array
from agent.config import ImageLimits
from agent.errors import EmptyInputError, ImageDecodeError, ImageTooLargeError, ImageTooSmallError

LIMITS = ImageLimits()


@pytest.fixture(scope="module")
def photo(data_dir) -> np.ndarray:
    return cv2.imread(str(data_dir / "faces/face_recognition/examples/obama-480p.jpg"))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".jpg"])
def test_formats_decode_to_same_pixels(photo, ext):
    ok, buf = cv2.imencode(ext, photo, [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else [])
    assert ok
    img = decode_bytes(buf.tobytes(), LIMITS)
    assert img.source_format == {".jpg": "jpeg"}.get(ext, ext[1:])
    assert img.pixels.shape == photo.shape and img.pixels.dtype == np.uint8
    tol = 12 if ext == ".jpg" else 0.5
    assert np.abs(img.pixels.astype(int) - photo).mean() < tol


def test_real_webp_with_jpg_name(data_dir):
    img = decode_bytes((data_dir / "faces/deepface/images/img47.jpg").read_bytes(), LIMITS)
    assert img.source_format == "webp" and img.pixels.ndim == 3


def test_grayscale_rgba_and_16bit(photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    img = decode_bytes(cv2.imencode(".png", gray)[1].tobytes(), LIMITS)
    assert img.pixels.shape == photo.shape and np.array_equal(img.pixels[..., 0], gray)
    rgba = cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 128
    assert np.array_equal(decode_bytes(cv2.imencode(".png", rgba)[1].tobytes(), LIMITS).pixels, photo)
    deep = photo.astype(np.uint16) * 257
    img16 = decode_bytes(cv2.imencode(".png", deep)[1].tobytes(), LIMITS)
    assert np.array_equal(img16.pixels, photo)


def test_exif_rotation_applied(data_dir):
    """silent_face images store pixels rotated 90 degrees with an EXIF orientation tag."""
    path = data_dir / "spoof/silent_face/images/image_T1.jpg"
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    img = decode_bytes(path.read_bytes(), LIMITS)
    assert img.pixels.shape[:2] == raw.shape[1::-1]


def test_arrays_in_any_layout(photo):
    assert np.array_equal(from_array(photo, LIMITS).pixels, photo)
    rgb = photo[..., ::-1]
    assert np.array_equal(from_array(rgb, LIMITS, channel_order="RGB").pixels, photo)
    assert from_array(photo[..., 0], LIMITS).pixels.shape == photo.shape
    with pytest.raises(ImageDecodeError):
        from_array(np.zeros((10, 10, 2), np.uint8), LIMITS)
    with pytest.raises(EmptyInputError):
        from_array(np.zeros((0, 0, 3), np.uint8), LIMITS)


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4)
        + idat
        + struct.pack(">I", zlib.crc32(idat))
    )


def test_bad_inputs_raise_typed_errors(photo):
    jpg = cv2.imencode(".jpg", photo)[1].tobytes()
    with pytest.raises(EmptyInputError):
        decode_bytes(b"", LIMITS)
    with pytest.raises(ImageDecodeError, match="unrecognised"):
        decode_bytes(b"GIF89a" + b"\x00" * 100, LIMITS)
    with pytest.raises(ImageDecodeError):
        decode_bytes(jpg[:20], LIMITS)  # header cut off
    with pytest.raises(ImageDecodeError):
        decode_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4, LIMITS)  # JPEG magic, garbage after
    # a file of a few bytes claiming 60000 x 60000 (or 8000 x 8000) pixels is refused from its header
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_bytes(_png_header_only(60000, 60000), LIMITS)
    with pytest.raises(ImageTooLargeError, match="8000x8000"):
        decode_bytes(_png_header_only(8000, 8000), LIMITS)
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_bytes(jpg, ImageLimits(max_bytes=1000))
    tiny = cv2.imencode(".png", photo[:8, :8])[1].tobytes()
    with pytest.raises(ImageTooSmallError):
        decode_bytes(tiny, LIMITS)


def test_truncated_jpeg_body_is_refused_or_decoded_never_crashes(photo):
    jpg = cv2.imencode(".jpg", photo)[1].tobytes()
    for cut in (len(jpg) // 4, len(jpg) // 2, len(jpg) - 10):
        try:
            img = decode_bytes(jpg[:cut], LIMITS)
        except ImageDecodeError:
            continue
        assert img.pixels.shape == photo.shape  # libjpeg pads a truncated scan with grey


def test_header_size_reads_any_size_without_decoding():
    """Pillow's Image.open refuses more than about 179 Mpixel outright; the header must still give the size,
    so the limit that refuses is ours and its message names the size."""
    from agent.capture.imageio import header_size

    assert header_size(_png_header_only(20000, 20000)) == (20000, 20000)
    with pytest.raises(ImageTooLargeError, match="20000x20000"):
        decode_bytes(_png_header_only(20000, 20000), ImageLimits(max_pixels=400_000_000 - 1))
    with pytest.raises(ImageDecodeError):
        header_size(b"GIF89a" + bytes(100))
    with pytest.raises(ImageDecodeError):
        header_size(b"\x89PNG\r\n\x1a\n" + bytes(30))  # PNG magic, no IHDR
