"""A valid PNG whose pixel size is far over every limit but whose file is small (20000 x 20000 of one grey,
about 440 KB): each family must answer with its "image too large" error, read from the header, and never
take it for a broken image."""

from __future__ import annotations

import io
import struct
import zlib
from urllib.parse import urlencode

import pytest
from PIL import PngImagePlugin
from test_api_support import (
    OBAMA,
    b64,
    facepp_auth,
    jd_auth,
    jumdata_auth,
    native,
    post_form,
    post_json,
    read,
    start,
)

from agent.capture.imageio import header_size

SIDE = 20_000


def _uniform_png(width: int, height: int, grey: int = 128) -> bytes:
    """A real 8-bit greyscale PNG, compressed row block by row block so that its 400 MB of pixels never
    exist in memory at once."""
    rows = (b"\x00" + bytes([grey]) * width) * 500  # filter byte 0 ("none") + the row, 500 rows a block
    deflate = zlib.compressobj(6)
    blocks = [deflate.compress(rows) for _ in range(height // 500)]
    idat = b"".join(blocks) + deflate.compress((b"\x00" + bytes([grey]) * width) * (height % 500))
    idat += deflate.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("huge") / "20000x20000.png"
    path.write_bytes(_uniform_png(SIDE, SIDE))
    data = path.read_bytes()
    assert len(data) < 1_000_000 and header_size(data) == (SIDE, SIDE)
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    r = start(tmp_path_factory.mktemp("huge-api"))
    group = r.gallery.create_group("g1", "test")
    r.ctx.enrol(group.group_id, "obama", r.ctx.load(read(data_dir, OBAMA)))  # Face++ refuses empty sets first
    yield r
    r.close()


def test_the_png_is_valid(huge):
    # Pillow's PNG reader without Image.open's size bound: verify() checks every chunk's CRC without
    # decoding the pixels.
    with PngImagePlugin.PngImageFile(io.BytesIO(huge)) as im:
        assert (im.size, im.mode) == ((SIDE, SIDE), "L")
        im.verify()


def _jd_business(reply) -> tuple[int, str]:
    assert reply.status == 200 and reply.json()["code"] == "10000", reply.body[:200]
    res = reply.json()["result"]
    return (res["status"], res["message"]) if "status" in res else (res["code"], res["msg"])


def test_jd_says_image_is_too_large(run, huge):
    q = "?" + urlencode(jd_auth())
    create = post_json(
        run, "/jdai/faceCreate" + q, {"groupName": "test", "outerId": "x", "imageBase64": b64(huge)}
    )
    assert _jd_business(create) == (3, "ImageIsTooLarge")
    search = post_json(
        run, "/jdai/faceSearch?" + urlencode({**jd_auth(), "groupName": "test"}), {"imageBase64": b64(huge)}
    )
    assert _jd_business(search) == (3, "ImageIsTooLarge")
    body = {"imgBase64A": b64(huge), "imgBase64B": b64(huge)}
    compare = post_json(run, "/jdai/faceCompareV1?" + urlencode(jd_auth()), body)
    assert _jd_business(compare) == (3, "ImageIsTooLarge")


def test_faceplusplus_says_invalid_image_size(run, huge):
    reply = post_form(
        run, "/facepp/v3/search", {**facepp_auth(), "outer_id": "test", "image_base64": b64(huge)}
    )
    assert (reply.status, reply.json()["error_message"]) == (400, "INVALID_IMAGE_SIZE: image_base64")


def test_jumdata_names_the_size(run, huge):
    reply = post_form(run, "/face/multi-search", {**jumdata_auth(), "base64": b64(huge)})
    body = reply.json()
    assert (reply.status, body["code"]) == (200, 400)
    assert f"{SIDE}x{SIDE}" in body["msg"] and "max side 4096" in body["msg"], body["msg"]


def test_native_says_image_too_large(run, huge):
    reply = native(run, "POST", "/api/v1/groups/g1/search", {"image_base64": b64(huge)})
    error = reply.json()["error"]
    assert (reply.status, error["code"], error["param"]) == (400, "image_too_large", "image_base64")
    assert f"{SIDE}x{SIDE}" in error["message"] and "pixels" in error["message"], error["message"]
