"""Face++ v3 search over real HTTP: image_file / image_base64 / face_token / face_rectangle, FaceSet by
faceset_token or outer_id, and every error_message the device can produce, with its HTTP status."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_api_support import (
    BIDEN,
    DISABLED_KEY,
    DOGS,
    NATIVE_ONLY_KEY,
    OBAMA,
    OBAMA2,
    OBAMA_AND_BIDEN,
    WEBP,
    HeldEngine,
    b64,
    call,
    facepp_auth,
    post_form,
    post_multipart,
    read,
    start,
)

URL = "/facepp/v3/search"


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    r = start(tmp_path_factory.mktemp("facepp"))
    g = r.gallery.create_group("fs1", "facesetid")
    r.gallery.create_group("fs-empty", "empty")
    for who, rel in (("obama", OBAMA), ("biden", BIDEN)):
        r.ctx.enrol(g.group_id, who, r.ctx.load(read(data_dir, rel)))
    yield r
    r.close()


def _err(reply) -> tuple[int, str]:
    return reply.status, reply.json()["error_message"]


def test_search_by_file_base64_and_token(run, data_dir):
    r = post_multipart(
        run,
        URL,
        {**facepp_auth(), "outer_id": "facesetid", "return_result_count": "2"},
        {"image_file": read(data_dir, OBAMA2)},
    )
    body = r.json()
    assert r.status == 200 and set(body) == {
        "request_id",
        "time_used",
        "thresholds",
        "results",
        "image_id",
        "faces",
    }
    # the Face++ cloud's three levels, plus 1e-6: the default model's manifest calibrates it too
    assert body["thresholds"] == {"1e-3": 70.0, "1e-4": 80.0, "1e-5": 90.0}  # exactly Face++'s three keys
    assert [x["user_id"] for x in body["results"]] == ["obama", "biden"]
    obama, biden = (x["confidence"] for x in body["results"])
    assert obama > body["thresholds"]["1e-4"] and biden < body["thresholds"]["1e-3"]  # seen: 95.5 and 63.0
    rect = body["faces"][0]["face_rectangle"]
    assert set(rect) == {"top", "left", "width", "height"} and all(isinstance(v, int) for v in rect.values())
    # the query face's token searches again without an image (no image_id / faces then)
    again = post_form(
        run, URL, {**facepp_auth(), "faceset_token": "fs1", "face_token": body["faces"][0]["face_token"]}
    )
    assert "faces" not in again.json() and again.json()["results"][0]["user_id"] == "obama"
    # an enrolled face's token works too and finds itself
    enrolled = body["results"][1]["face_token"]
    mine = post_form(run, URL, {**facepp_auth(), "outer_id": "facesetid", "face_token": enrolled}).json()
    assert mine["results"][0]["face_token"] == enrolled and mine["results"][0]["confidence"] > 99
    b = post_form(
        run, URL, {**facepp_auth(), "outer_id": "facesetid", "image_base64": b64(read(data_dir, BIDEN))}
    )
    assert b.json()["results"][0]["user_id"] == "biden"


def test_face_rectangle_selects_the_face_and_is_echoed(run, data_dir):
    img = read(data_dir, OBAMA_AND_BIDEN)
    full = post_form(run, URL, {**facepp_auth(), "outer_id": "facesetid", "image_base64": b64(img)}).json()
    assert len(full["faces"]) == 2
    for face in full["faces"]:  # point at each face: the answer names the person in that box
        rect = face["face_rectangle"]
        spec = f"{rect['top']},{rect['left']},{rect['width']},{rect['height']}"
        one = post_form(
            run,
            URL,
            {**facepp_auth(), "outer_id": "facesetid", "image_base64": b64(img), "face_rectangle": spec},
        ).json()
        assert one["faces"][0]["face_rectangle"] == rect
        direct = post_form(
            run, URL, {**facepp_auth(), "outer_id": "facesetid", "face_token": face["face_token"]}
        )
        assert one["results"][0]["user_id"] == direct.json()["results"][0]["user_id"]
    names = set()
    for face in full["faces"]:
        r = post_form(run, URL, {**facepp_auth(), "outer_id": "facesetid", "face_token": face["face_token"]})
        names.add(r.json()["results"][0]["user_id"])
    assert names == {"obama", "biden"}


def test_no_face_gives_empty_faces_and_no_results(run, data_dir):
    body = post_form(
        run, URL, {**facepp_auth(), "outer_id": "facesetid", "image_base64": b64(read(data_dir, DOGS))}
    )
    assert body.status == 200 and body.json()["faces"] == [] and "results" not in body.json()
    assert "thresholds" not in body.json()


def _png(w: int, h: int) -> bytes:
    return cv2.imencode(".png", np.full((h, w, 3), 128, np.uint8))[1].tobytes()


def test_error_messages_and_statuses(run, data_dir):
    ok = {**facepp_auth(), "outer_id": "facesetid"}
    img = b64(read(data_dir, OBAMA))
    noise = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), np.uint8))[
        1
    ].tobytes()
    assert len(noise) > 2 * 1024 * 1024
    cases = [
        ({**ok, "face_token": "f" * 32}, (400, "INVALID_FACE_TOKEN: " + "f" * 32)),
        ({**facepp_auth(), "outer_id": "nope", "image_base64": img}, (400, "INVALID_OUTER_ID")),
        ({**facepp_auth(), "faceset_token": "nope", "image_base64": img}, (400, "INVALID_FACESET_TOKEN")),
        ({**facepp_auth(), "outer_id": "empty", "image_base64": img}, (400, "EMPTY_FACESET")),
        (
            {**ok, "image_base64": b64(read(data_dir, WEBP))},
            (400, "IMAGE_ERROR_UNSUPPORTED_FORMAT: image_base64"),
        ),
        ({**ok, "image_base64": b64(_png(40, 40))}, (400, "INVALID_IMAGE_SIZE: image_base64")),
        ({**ok, "image_base64": b64(_png(5000, 60))}, (400, "INVALID_IMAGE_SIZE: image_base64")),
        ({**ok, "image_url": "http://example.com/a.jpg"}, (400, "INVALID_IMAGE_URL: image_url")),
        ({**ok, "api_secret": "wrong-secret"}, (401, "AUTHENTICATION_ERROR")),
        ({**ok, **facepp_auth(key=DISABLED_KEY)}, (403, "AUTHORIZATION_ERROR:Denied by Admin")),
        ({**ok, **facepp_auth(key=NATIVE_ONLY_KEY)}, (403, "AUTHORIZATION_ERROR:Denied by Admin")),
        (
            {"api_key": "test-key", "outer_id": "facesetid", "image_base64": img},
            (400, "MISSING_ARGUMENTS: api_secret"),
        ),
        ({"outer_id": "facesetid", "image_base64": img}, (400, "MISSING_ARGUMENTS: api_key")),
        ({**facepp_auth(), "image_base64": img}, (400, "MISSING_ARGUMENTS: faceset_token")),
        (ok, (400, "MISSING_ARGUMENTS: image_file")),
        (
            {**ok, "image_base64": img, "return_result_count": "6"},
            (400, "BAD_ARGUMENTS: return_result_count"),
        ),
        ({**ok, "image_base64": img, "face_rectangle": "1,2,3"}, (400, "BAD_ARGUMENTS: face_rectangle")),
        ({**ok, "faceset_token": "fs1", "image_base64": img}, (400, "COEXISTENCE_ARGUMENTS")),
    ]
    for fields, expected in cases:
        reply = post_form(run, URL, fields)
        assert _err(reply) == expected, (fields.keys(), reply.body[:200])
        assert set(reply.json()) == {"time_used", "error_message", "request_id"}
    # A >2 MB image makes a >2 MB request, which Face++ answers 413 in plain text before reading it.
    reply = post_form(run, URL, {**ok, "image_base64": b64(noise)})
    assert (reply.status, reply.body) == (413, b"Request Entity Too Large")
    r = post_multipart(run, URL, ok, {"image_file": b"%PDF-1.4 not an image"})
    assert _err(r) == (400, "IMAGE_ERROR_UNSUPPORTED_FORMAT: image_file")
    assert _err(call(run, "POST", "/facepp/v3/detectx", b"")) == (404, "API_NOT_FOUND")
    big = call(run, "POST", URL, headers={"Content-Length": str(run.server.config.max_body_bytes + 1)})
    assert (big.status, big.body, big.headers["content-type"].split(";")[0]) == (
        413,
        b"Request Entity Too Large",
        "text/plain",
    )


def test_concurrency_limit(tmp_path, data_dir):
    r = start(tmp_path, engine_concurrency=1, engine_queue=0)
    r.gallery.create_group("g", "facesetid")
    r.ctx.enrol("g", "obama", r.ctx.load(read(data_dir, OBAMA)))
    held = HeldEngine(r, 1)
    try:
        reply = post_form(
            r, URL, {**facepp_auth(), "outer_id": "facesetid", "image_base64": b64(read(data_dir, OBAMA2))}
        )
        assert _err(reply) == (403, "CONCURRENCY_LIMIT_EXCEEDED")
    finally:
        held.release()
        r.close()
