"""Native REST API over real HTTP with real images: groups, persons, faces, search, compare, auth, limits."""

from __future__ import annotations

import http.client
import time
import uuid

import cv2
import numpy as np
import pytest
from test_api_support import (
    BIDEN,
    DISABLED_KEY,
    DOGS,
    JD_ONLY_KEY,
    KEY,
    NATIVE_ONLY_KEY,
    OBAMA,
    OBAMA2,
    OBAMA_AND_BIDEN,
    SECRET,
    HeldEngine,
    b64,
    call,
    facepp_auth,
    native,
    post_form,
    post_json,
    read,
    shared_engine,
    start,
)

from agent.api import ApiConfig, build_context, native_header
from agent.api.auth import is_loopback
from agent.api.config import load_secrets
from agent.errors import ConfigError, ModelError
from agent.gallery import Gallery, GalleryConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    r = start(tmp_path_factory.mktemp("native"))
    yield r
    r.close()


@pytest.fixture(scope="module")
def door(run, data_dir):
    """Group 'door' with obama and biden enrolled through the API."""
    assert (
        native(run, "POST", "/api/v1/groups", {"group_id": "door", "group_name": "Front door"}).status == 201
    )
    for who, rel in (("obama", OBAMA), ("biden", BIDEN)):
        r = native(
            run,
            "POST",
            f"/api/v1/groups/door/persons/{who}/faces",
            {"image_base64": b64(read(data_dir, rel))},
        )
        assert r.status == 201, r.body
        assert len(r.json()["face_id"]) == 32 and r.json()["box"]["width"] > 40
    return "door"


def test_group_person_face_lifecycle(run, door, data_dir):
    groups = native(run, "GET", "/api/v1/groups").json()["groups"]
    assert [g["group_id"] for g in groups] == ["door"] and groups[0]["group_name"] == "Front door"
    assert (
        native(run, "POST", "/api/v1/groups", {"group_id": "door"}).json()["error"]["code"] == "group_exists"
    )
    # Unicode outer ids travel percent-encoded in the path
    path = "/api/v1/groups/door/persons/%E5%BC%A0%E4%B8%89"
    assert native(run, "PUT", path, {"user_info": "visitor"}).json()["outer_id"] == "张三"
    face = native(run, "POST", path + "/faces", {"image_base64": b64(read(data_dir, OBAMA2))}).json()
    person = native(run, "GET", path).json()
    assert person["user_info"] == "visitor" and [f["face_id"] for f in person["faces"]] == [face["face_id"]]
    assert native(run, "GET", f"/api/v1/faces/{face['face_id']}").json()["outer_id"] == "张三"
    assert native(run, "DELETE", f"/api/v1/faces/{face['face_id']}").json() == {"deleted_faces": 1}
    assert native(run, "GET", f"/api/v1/faces/{face['face_id']}").status == 404
    assert native(run, "DELETE", path).status == 200
    assert native(run, "GET", path).json()["error"]["code"] == "person_not_found"
    names = {p["outer_id"] for p in native(run, "GET", "/api/v1/groups/door/persons").json()["persons"]}
    assert names == {"obama", "biden"}


def test_search_finds_the_right_person_with_calibrated_scores(run, door, data_dir):
    r = native(
        run, "POST", "/api/v1/groups/door/search", {"image_base64": b64(read(data_dir, OBAMA2)), "top_k": 2}
    )
    assert r.status == 200
    body = r.json()
    assert body["thresholds"] == {"1e-3": 70.0, "1e-4": 80.0, "1e-5": 90.0, "1e-6": 95.0}
    cands = body["faces"][0]["candidates"]
    assert [c["outer_id"] for c in cands] == ["obama", "biden"]
    assert cands[0]["score"] > 80 > cands[1]["score"]
    assert run.ctx.scores.score(cands[0]["cosine"]) == pytest.approx(cands[0]["score"], abs=1e-2)
    # the returned face_token can be searched again without the image
    token = body["faces"][0]["face_token"]
    again = native(run, "POST", "/api/v1/groups/door/search", {"face_token": token}).json()
    assert again["faces"][0]["candidates"][0]["outer_id"] == "obama"


def test_multi_face_search_assigns_each_person_once(run, door, data_dir):
    img = b64(read(data_dir, OBAMA_AND_BIDEN))
    r = native(
        run, "POST", "/api/v1/groups/door/search", {"image_base64": img, "max_faces": 5, "min_score": 70}
    )
    faces = r.json()["faces"]
    named = [f["candidates"][0]["outer_id"] for f in faces if f["candidates"]]
    assert sorted(named) == ["biden", "obama"]


def test_compare_same_and_different_people(run, data_dir):
    a, b, c = (b64(read(data_dir, p)) for p in (OBAMA, OBAMA2, BIDEN))
    same = native(run, "POST", "/api/v1/compare", {"image_a_base64": a, "image_b_base64": b}).json()
    diff = native(run, "POST", "/api/v1/compare", {"image_a_base64": a, "image_b_base64": c}).json()
    assert same["score"] > 80 > diff["score"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({}, 400, "missing_argument"),
        ({"image_base64": "not base64!"}, 400, "base64_invalid"),
        ({"image_base64": b64(b"GIF89a" + b"\0" * 100)}, 400, "image_unsupported_format"),
        ({"image_base64": 12}, 400, "bad_argument"),
    ],
)
def test_bad_enrolment_bodies_get_typed_errors(run, door, payload, status, code):
    r = native(run, "POST", "/api/v1/groups/door/persons/x/faces", payload)
    assert (r.status, r.json()["error"]["code"]) == (status, code)


def test_no_face_and_unknown_group(run, door, data_dir):
    dogs = {"image_base64": b64(read(data_dir, DOGS))}
    r = native(run, "POST", "/api/v1/groups/door/persons/dog/faces", dogs)
    assert (r.status, r.json()["error"]["code"]) == (422, "no_face")
    r = native(run, "POST", "/api/v1/groups/nope/search", dogs)
    assert (r.status, r.json()["error"]["code"]) == (404, "group_not_found")
    r = native(run, "POST", "/api/v1/groups/door/search", {"face_token": "0" * 32})
    assert (r.status, r.json()["error"]["code"]) == (404, "face_token_not_found")


def test_routing_and_body_limits(run):
    assert call(run, "GET", "/api/v1/nothing").json()["error"]["code"] == "not_found"
    assert call(run, "PATCH", "/api/v1/groups").status == 405
    r = native(run, "DELETE", "/api/v1/groups")
    assert (r.status, r.json()["error"]["code"]) == (405, "method_not_allowed")
    # the size is refused from Content-Length, before the body is read (none is sent here)
    huge = str(run.server.config.max_body_bytes + 1)
    r = call(run, "POST", "/api/v1/compare", headers={"Content-Length": huge})
    assert (r.status, r.json()["error"]["code"]) == (413, "body_too_large")
    r = call(run, "POST", "/api/v1/compare", b"5\r\nhello\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"})
    assert r.status == 411
    doc = call(run, "GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and {"/jdai/faceSearch", "/face/multi-search"} <= set(doc["paths"])
    for route in run.server.router.routes:  # every served route is documented
        template = route.pattern.pattern.strip("^$").replace("(?P<", "{").replace(">[^/]+)", "}")
        assert template in doc["paths"], template


def test_authentication(run, door):
    path = "/api/v1/groups"
    assert call(run, "GET", path).json()["error"]["code"] == "auth_missing"  # loopback, but not configured
    assert native(run, "GET", path, secret="wrong-secret-99").json()["error"]["code"] == "auth_failed"
    good = native_header(KEY, SECRET, "GET", path, b"", uuid.uuid4().hex, None)
    for text in ("张三", "😀" * 8):  # non-ASCII in the header (sent as UTF-8 bytes): refused, not a 500
        header = good.rsplit("sig=", 1)[0] + "sig=" + text
        r = call(run, "GET", path, headers={"Authorization": header.encode()})
        assert (r.status, r.json()["error"]["code"]) == (401, "auth_failed"), r.body[:200]
    assert native(run, "GET", path, key="nobody-key").json()["error"]["code"] == "auth_unknown_key"
    stale = int(time.time() * 1000) - 301_000
    r = native(run, "GET", path, ts_ms=stale)
    assert (r.status, r.json()["error"]["code"]) == (401, "auth_stale")
    assert native(run, "GET", path, nonce="n1").status == 200
    ts = int(time.time() * 1000)
    assert native(run, "GET", path, nonce="n2", ts_ms=ts).status == 200
    r = native(run, "GET", path, nonce="n2", ts_ms=ts)  # the same signed request again
    assert (r.status, r.json()["error"]["code"]) == (401, "auth_replayed")
    r = native(run, "GET", path, key=DISABLED_KEY)
    assert (r.status, r.json()["error"]["code"]) == (403, "auth_disabled")
    assert native(run, "GET", path, key=NATIVE_ONLY_KEY).status == 200
    assert call(run, "GET", "/api/v1/health").status == 200  # health and the document need no key


def test_unauthenticated_loopback_only_when_configured(tmp_path):
    r = start(tmp_path, allow_unauthenticated_loopback=True)
    try:
        assert call(r, "GET", "/api/v1/groups").status == 200
        assert (
            native(r, "GET", "/api/v1/groups", secret="bad-secret-000").status == 401
        )  # bad keys still fail
    finally:
        r.close()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.2")
    assert not is_loopback("192.168.1.10") and not is_loopback("10.0.0.1") and not is_loopback("junk")


def test_secrets_from_files_and_systemd_credentials(tmp_path):
    (tmp_path / "api-secret").write_text("s3cret-value\n")
    cfg = ApiConfig(credentials=[{"key": "door-1", "secret_credential": "api-secret"}])
    assert load_secrets(cfg, credentials_dir=str(tmp_path)) == {"door-1": "s3cret-value"}
    with pytest.raises(ConfigError):
        load_secrets(cfg, credentials_dir="")
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ConfigError):
        load_secrets(ApiConfig(credentials=[{"key": "k-123", "secret_file": str(tmp_path / "short")}]))
    with pytest.raises(ValueError):
        ApiConfig(credentials=[{"key": "k-123"}])  # no secret source


def test_full_engine_queue_answers_at_once_and_timeouts_are_bounded(tmp_path, data_dir):
    body = {"image_a_base64": b64(read(data_dir, OBAMA)), "image_b_base64": b64(read(data_dir, OBAMA2))}
    r = start(tmp_path / "q1", engine_concurrency=1, engine_queue=1, engine_wait_s=0.5)
    held = HeldEngine(r, 1)  # the only slot is busy; the request waits in the queue, then gives up
    try:
        t0 = time.monotonic()
        reply = native(r, "POST", "/api/v1/compare", body)
        assert (reply.status, reply.json()["error"]["code"]) == (504, "engine_timeout")
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        held.release()
        r.close()
    r = start(tmp_path / "q0", engine_concurrency=1, engine_queue=0)
    held = HeldEngine(r, 1)  # slot busy, no queue: refused without waiting
    try:
        t0 = time.monotonic()
        reply = native(r, "POST", "/api/v1/compare", body)
        assert (reply.status, reply.json()["error"]["code"], reply.headers.get("retry-after")) == (
            429,
            "busy",
            "1",
        )
        assert time.monotonic() - t0 < 2 and r.ctx.gate.rejected == 1
        held.release()
        assert native(r, "POST", "/api/v1/compare", body).status == 200
    finally:
        held.release()
        r.close()


def test_connections_beyond_the_handler_limit_get_429_busy(tmp_path):
    # The idle timeout is far beyond every wait below, so only closing `first` can free its handler.
    r = start(tmp_path, max_handlers=1, socket_timeout_s=120)
    first = http.client.HTTPConnection("127.0.0.1", r.server.port, timeout=30)
    try:
        # A keep-alive connection that got its answer holds the only handler, which now waits for its next
        # request. The answer proves the server took the connection (a bare connect() only says the kernel
        # queued it), so no sleep is needed to let the server catch up.
        first.request("GET", "/api/v1/health")
        answer = first.getresponse()
        assert answer.status == 200 and answer.read() and answer.getheader("Connection") != "close"
        reply = call(r, "GET", "/api/v1/health")
        assert reply.status == 429 and reply.json()["error"]["code"] == "busy"  # the family's rate limit
        first.close()
        # The handler frees the slot when it reads the end of `first`; poll for that, however late it runs.
        deadline = time.monotonic() + 60
        while (reply := call(r, "GET", "/api/v1/health")).status == 429 and time.monotonic() < deadline:
            time.sleep(0.02)  # polling interval, not synchronisation
        assert reply.status == 200
    finally:
        first.close()
        r.close()


def test_internal_errors_answer_500_in_every_family_shape(tmp_path, data_dir, monkeypatch, caplog):
    """A broken model (ModelError from the embedder) is a 500 in each family's documented shape, logged."""
    r = start(tmp_path, allow_unauthenticated_loopback=True)
    try:
        r.gallery.create_group("g", "facesetid")
        r.ctx.enrol("g", "obama", r.ctx.load(read(data_dir, OBAMA)))

        def broken(chips):
            raise ModelError("embedding model produced NaN")

        monkeypatch.setattr(r.ctx.engine.embedder, "embed_chips", broken)
        img = b64(read(data_dir, OBAMA2))
        reply = native(r, "POST", "/api/v1/groups/g/search", {"image_base64": img})
        assert (reply.status, reply.json()["error"]["code"]) == (500, "internal")
        reply = post_form(
            r, "/facepp/v3/search", {**facepp_auth(), "outer_id": "facesetid", "image_base64": img}
        )
        assert (reply.status, reply.json()["error_message"]) == (500, "INTERNAL_ERROR")
        reply = post_form(r, "/face/multi-search", {"base64": img})
        assert (reply.status, reply.json()["code"]) == (500, 500)
        reply = post_json(r, "/jdai/faceCompareV1", {"imgBase64A": img, "imgBase64B": img})
        assert (reply.status, reply.json()["code"]) == (500, "10500")
        assert sum("internal error" in rec.getMessage() for rec in caplog.records) == 4
    finally:
        r.close()


def test_remaining_native_error_codes(run, door, data_dir):
    search = "/api/v1/groups/door/search"
    img = b64(read(data_dir, OBAMA2))
    tiny = b64(cv2.imencode(".png", np.full((10, 10, 3), 128, np.uint8))[1].tobytes())
    cases = [
        (native(run, "POST", search, {"image_base64": img, "face_token": "0" * 32}), 400, "coexistence"),
        (native(run, "POST", search, {"image_base64": img, "topk": 3}), 400, "bad_argument"),
        (native(run, "POST", search, {"image_base64": img, "top_k": 101}), 400, "bad_argument"),
        (native(run, "POST", search, {"image_base64": tiny}), 400, "image_too_small"),
        (native(run, "POST", "/api/v1/groups", {"info": "no id or name"}), 400, "missing_argument"),
        (native(run, "PUT", "/api/v1/groups/door/persons/x", {}), 400, "missing_argument"),
        (native(run, "GET", "/api/v1/groups", key=JD_ONLY_KEY), 403, "auth_not_allowed"),
        (native(run, "GET", "/api/v1/groups/%FF"), 400, "bad_argument"),
    ]
    for reply, status, code in cases:
        assert (reply.status, reply.json()["error"]["code"]) == (status, code), reply.body[:200]
    body = b'{"image_base64": '
    r = call(
        run,
        "POST",
        search,
        body,
        {"Authorization": _sign("POST", search, body), "Content-Type": "application/json"},
    )
    assert (r.status, r.json()["error"]["code"]) == (400, "body_not_json")
    body = b"image_base64=abc"
    r = call(
        run,
        "POST",
        search,
        body,
        {"Authorization": _sign("POST", search, body), "Content-Type": "text/plain"},
    )
    assert (r.status, r.json()["error"]["code"]) == (400, "bad_body")
    r = call(
        run,
        "GET",
        "/api/v1/groups",
        headers={"Authorization": "FA-HMAC-SHA256 key=test-key,ts=abc,nonce=1,sig=00"},
    )
    assert (r.status, r.json()["error"]["code"]) == (400, "auth_bad_timestamp")
    # a blurred face is refused at enrolment when quality control asks for it, and accepted without it
    obama = cv2.imdecode(np.frombuffer(read(data_dir, OBAMA), np.uint8), cv2.IMREAD_COLOR)
    blurred = b64(cv2.imencode(".jpg", cv2.GaussianBlur(obama, (0, 0), 12))[1].tobytes())
    path = "/api/v1/groups/door/persons/blurry/faces"
    r = native(run, "POST", path, {"image_base64": blurred, "quality_control": "NORMAL"})
    assert (r.status, r.json()["error"]["code"]) == (422, "quality_failed")
    assert "too_blurry" in r.json()["error"]["message"]
    assert native(run, "GET", "/api/v1/groups/door/persons/blurry").status == 404  # nothing was stored


def _sign(method: str, target: str, body: bytes) -> str:
    return native_header("test-key", "test-secret-123456", method, target, body, uuid.uuid4().hex)


def test_start_up_fails_loudly_without_usable_thresholds(tmp_path):
    gallery = Gallery(GalleryConfig(path=tmp_path / "g", save_interval_s=0))
    try:
        bad = ApiConfig(score_thresholds={"1e-3": 0.5, "1e-4": 0.4, "1e-5": 0.6})  # not rising
        with pytest.raises(ConfigError):
            build_context(bad, shared_engine(), gallery, secrets={})
        with pytest.raises(ConfigError):
            build_context(ApiConfig(score_thresholds={"1e-3": 0.5}), shared_engine(), gallery, secrets={})
    finally:
        gallery.close()
