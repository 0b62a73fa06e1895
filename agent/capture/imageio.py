"""Decode images from bytes or arrays into BGR uint8, with the checks that keep bad input from hurting us.

Accepts JPEG, PNG, BMP and WebP; grayscale, RGBA and 16-bit images; EXIF orientation applied. The size is read
from the header before decoding, so a small file that claims a huge image is refused without allocating it.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from agent.config import ImageLimits
from agent.errors import EmptyInputError, ImageDecodeError, ImageTooLargeError, ImageTooSmallError
from agent.types import Image

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
)


def sniff_format(data: bytes) -> str | None:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _plugin(fmt: str) -> type:
    """Pillow's reader class for a sniffed format, used directly: `Image.open` refuses anything above its
    own decompression-bomb bound (about 179 Mpixel) before our limits are consulted, so a valid 20000x20000
    PNG looked "unreadable" instead of "too large"."""
    from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

    return {
        "jpeg": JpegImagePlugin.JpegImageFile,
        "png": PngImagePlugin.PngImageFile,
        "bmp": BmpImagePlugin.BmpImageFile,
        "webp": WebPImagePlugin.WebPImageFile,
    }[fmt]


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone: no pixel is decoded and no size is refused here, so
    each caller's own limit decides what is too large (and says so).

    WebP is the exception: Pillow's WebP reader allocates the whole canvas when it opens the file, so it
    keeps its bomb check and a WebP above about 179 Mpixel is reported too large from that check."""
    from PIL import Image as PILImage

    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError("not a JPEG, PNG, BMP or WebP image (unrecognised leading bytes)")
    try:
        with _plugin(fmt)(io.BytesIO(data)) as im:
            return im.size
    except PILImage.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image header claims more pixels than allowed: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for broken headers
        raise ImageDecodeError(f"image header could not be read: {exc}") from exc


def decode_bytes(data: bytes, limits: ImageLimits) -> Image:
    if not data:
        raise EmptyInputError("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError("not a JPEG, PNG, BMP or WebP image (unrecognised leading bytes)")
    width, height = header_size(data)
    _check_size(width, height, limits)
    # ANYDEPTH|ANYCOLOR keeps 16-bit and grayscale as they are and still applies EXIF orientation.
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if arr is None:
        raise ImageDecodeError(f"{fmt} image is corrupt or truncated and could not be decoded")
    return Image(pixels=to_bgr8(arr), source_format=fmt)


def from_array(arr: np.ndarray, limits: ImageLimits, channel_order: str = "BGR") -> Image:
    if not isinstance(arr, np.ndarray) or arr.size == 0:
        raise EmptyInputError("image array is empty")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageDecodeError(f"image array has shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    _check_size(arr.shape[1], arr.shape[0], limits)
    bgr = to_bgr8(arr if channel_order == "BGR" else _swap_rb(arr))
    return Image(pixels=bgr, source_format="array")


def _swap_rb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] >= 3:
        out = arr.copy()
        out[..., [0, 2]] = arr[..., [2, 0]]
        return out
    return arr


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height}; the limit is {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise ImageTooSmallError(f"image is {width}x{height}; each side must be >= {limits.min_side} px")


def to_bgr8(arr: np.ndarray) -> np.ndarray:
    """Any depth and channel count -> contiguous BGR uint8."""
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype in (np.float32, np.float64):
        scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0
        arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported pixel type {arr.dtype}")
    if arr.ndim == 2 or arr.shape[2] == 1:
        return cv2.cvtColor(arr.reshape(arr.shape[0], arr.shape[1]), cv2.COLOR_GRAY2BGR)
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(arr)
