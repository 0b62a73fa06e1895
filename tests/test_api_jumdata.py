"""jumdata M:N multi-search over real HTTP: parameters, defaults, ranges, response shape and codes."""

from __future__ import annotations

import threading
import time

import pytest
from test_api_support import (
    BIDEN,
    DISABLED_KEY,
    DOGS,
    NATIVE_ONLY_KEY,
    OBAMA,
    OBAMA2,
    OBAMA_AND_BIDEN,
    HeldEngine,
    b64,
    call,
    jumdata_auth,
    native,
    post_form,
    post_multipart,
    read,
    start,
)

URL = "/face/multi-search"


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    r = start(tmp_path_factory.mktemp("jumdata"))
    r.gallery.create_group("staff")
    r.gallery.create_group("visitors")
    r.ctx.enrol("staff", "obama", r.ctx.load(read(data_dir, OBAMA)), user_info="president")
    r.ctx.enrol("visitors", "biden", r.ctx.load(read(data_dir, BIDEN)))
    yield r
    r.close()


def _code(reply) -> tuple[int, str]:
    assert reply.status == 200, reply.body[:200]
    return reply.json()["code"], reply.json()["msg"]


def test_multi_face_search_over_all_groups(run, data_dir):
    r = post_multipart(
        run, URL, {**jumdata_auth(), "maxFaceNum": "10"}, {"file": read(data_dir, OBAMA_AND_BIDEN)}
    )
    body = r.json()
    assert (body["code"], body["success"], body["msg"]) == (200, True, "成功") and len(body["taskNo"]) == 24
    data = body["data"]
    assert data["face_num"] == len(data["face_list"]) == 2
    users = {f["user_list"][0]["user_id"]: f["user_list"][0] for f in data["face_list"]}
    assert set(users) == {"obama", "biden"}
    assert users["obama"]["group_id"] == "staff" and users["obama"]["user_info"] == "president"
    assert all(u["score"] >= 80 for u in users.values())
    loc = data["face_list"][0]["location"]
    assert set(loc) == {"top", "left", "rotation", "width", "height"} and -180 <= loc["rotation"] <= 180


def test_defaults_and_parameters(run, data_dir):
    img = b64(read(data_dir, OBAMA_AND_BIDEN))
    one = post_form(run, URL, {**jumdata_auth(), "base64": img}).json()["data"]  # maxFaceNum default 1
    assert one["face_num"] == 1
    only_staff = post_form(
        run, URL, {**jumdata_auth(), "base64": img, "maxFaceNum": "2", "group_id": "staff"}
    )
    lists = [f["user_list"] for f in only_staff.json()["data"]["face_list"]]
    assert sorted(len(u) for u in lists) == [0, 1] and [u for u in lists if u][0][0]["user_id"] == "obama"
    # matchThreshold 100 keeps nobody; 0 with maxUserNum 2 gives both persons, each under one face only
    strict = post_form(
        run, URL, {**jumdata_auth(), "base64": b64(read(data_dir, OBAMA2)), "matchThreshold": "100"}
    )
    assert strict.json()["data"]["face_list"][0]["user_list"] == []
    loose = post_form(
        run,
        URL,
        {**jumdata_auth(), "base64": b64(read(data_dir, OBAMA2)), "matchThreshold": "0", "maxUserNum": "2"},
    ).json()["data"]["face_list"][0]["user_list"]
    assert [u["user_id"] for u in loose] == ["obama", "biden"]
    quality = post_form(
        run, URL, {**jumdata_auth(), "base64": b64(read(data_dir, OBAMA2)), "qualityControl": "LOW"}
    )
    assert quality.json()["data"]["face_list"][0]["user_list"][0]["user_id"] == "obama"
    dogs = post_form(run, URL, {**jumdata_auth(), "base64": b64(read(data_dir, DOGS))}).json()
    assert dogs["code"] == 200 and dogs["data"] == {"face_num": 0, "face_list": []}


def test_codes(run, data_dir):
    img = b64(read(data_dir, OBAMA2))
    cases = [
        ({**jumdata_auth(), "base64": img, "maxFaceNum": "11"}, 400),
        ({**jumdata_auth(), "base64": img, "matchThreshold": "-1"}, 400),
        ({**jumdata_auth(), "base64": img, "maxUserNum": "21"}, 400),
        ({**jumdata_auth(), "base64": img, "qualityControl": "MAX"}, 400),
        ({**jumdata_auth(), "base64": img, "group_id": "nope"}, 400),
        ({**jumdata_auth()}, 400),
        ({**jumdata_auth(), "url": "http://example.com/x.jpg"}, 400),
        ({**jumdata_auth(), "base64": "%%%"}, 400),
        ({**jumdata_auth(), "sign": "0" * 64, "base64": img}, 400),
        ({**jumdata_auth(), "sign": "张三😀", "base64": img}, 400),  # non-ASCII: refused, not a 500
        ({**jumdata_auth(ts_ms=1_000), "base64": img}, 400),
        ({"appId": "test-key", "base64": img}, 400),
        ({**jumdata_auth(key="nobody-key"), "base64": img}, 201),
        ({**jumdata_auth(key=NATIVE_ONLY_KEY), "base64": img}, 601),
        ({**jumdata_auth(key=DISABLED_KEY), "base64": img}, 602),
        ({**jumdata_auth(), "base64": img, "livenessControl": "MAX"}, 400),
    ]
    for fields, code in cases:
        reply = post_form(run, URL, fields)
        assert _code(reply)[0] == code, (fields.keys(), reply.body[:200])
        assert set(reply.json()) == {"msg", "code"}
    assert _code(post_form(run, URL, {**jumdata_auth(), "url": "http://x/y.jpg"}))[1].startswith(
        "参数错误: url"
    )
    auth = jumdata_auth()
    assert _code(post_form(run, URL, {**auth, "base64": img}))[0] == 200
    assert _code(post_form(run, URL, {**auth, "base64": img}))[0] == 400  # replayed signature
    nf = call(run, "POST", "/face/single-search", b"")
    assert (nf.status, nf.json()["code"]) == (200, 404)


SPOOF = [  # (file, MANIFEST kind) of shared/data/spoof
    ("hyperfas/images/fake_screen.png", "spoof_replay"),
    ("silent_face/images/image_F1.jpg", "spoof_print"),
    ("silent_face/images/image_F2.jpg", "spoof_replay"),
    ("silent_face/images/image_T1.jpg", "real_live"),
    ("vietmoney_fas/images/fake_001.jpg", "spoof_unknown"),
    ("vietmoney_fas/images/fake_002.jpg", "spoof_print"),
    ("vietmoney_fas/images/fake_003.jpg", "spoof_unknown"),
    ("vietmoney_fas/images/true_001.jpg", "real_live"),
    ("vietmoney_fas/images/true_002.jpg", "real_live"),
    ("vietmoney_fas/images/true_003.png", "real_live"),
]


def test_liveness_control_on_live_and_spoof_photos(run, data_dir):
    """livenessControl runs the single-image (passive) liveness check; faces failing it are left out of
    face_list, as the document says. What one image can prove is little (docs/liveness.md): the close-up
    screen replay is refused at every level, live photos pass, most other real attacks pass too."""
    img = b64(read(data_dir, OBAMA2))
    for level in ("LOW", "NORMAL", "HIGH"):
        body = post_form(run, URL, {**jumdata_auth(), "base64": img, "livenessControl": level}).json()
        assert body["code"] == 200 and body["data"]["face_num"] == 1, (level, body)
        assert body["data"]["face_list"][0]["user_list"][0]["user_id"] == "obama"
    kept: dict[str, list[bool]] = {}
    for rel, kind in SPOOF:
        raw = read(data_dir, f"spoof/{rel}")
        for level in ("NONE", "LOW", "HIGH"):
            reply = post_multipart(run, URL, {**jumdata_auth(), "livenessControl": level}, {"file": raw})
            body = reply.json()
            assert body["code"] == 200, (rel, body)
            n = body["data"]["face_num"]
            assert n == len(body["data"]["face_list"])
            if level == "NONE":
                assert n == 1, rel  # the face is found: a refusal below is the liveness check's
            else:
                kept.setdefault(kind, []).append(n == 1)
        if rel.startswith("hyperfas"):
            assert kept[kind][-2:] == [False, False]  # screen moire: refused at LOW and HIGH
    assert all(kept["real_live"]), "the four live photos pass every level"
    attacks = [ok for kind, oks in kept.items() if kind != "real_live" for ok in oks]
    # 1 of the 6 attacks refused at every level: the APCER of 83 % measured in docs/liveness.md
    assert attacks.count(False) == 2 and len(attacks) == 12


def test_rate_limit_and_timeout_codes(tmp_path, data_dir):
    img = b64(read(data_dir, OBAMA2))
    r = start(tmp_path / "a", engine_concurrency=1, engine_queue=0)
    held = HeldEngine(r, 1)
    try:
        assert _code(post_form(r, URL, {**jumdata_auth(), "base64": img}))[0] == 609
    finally:
        held.release()
        r.close()
    r = start(tmp_path / "b", engine_concurrency=1, engine_queue=1, engine_wait_s=0.3)
    held = HeldEngine(r, 1)
    try:
        assert _code(post_form(r, URL, {**jumdata_auth(), "base64": img}))[0] == 610
    finally:
        held.release()
        r.close()


def test_gallery_busy_is_606(tmp_path, data_dir):
    """A search that cannot get the index within lock_timeout_s (a writer holds it) is a transient
    failure: jumdata 606, native 503 with Retry-After."""
    r = start(tmp_path, gallery_kw={"lock_timeout_s": 0.3})
    r.gallery.create_group("staff")
    r.ctx.enrol("staff", "obama", r.ctx.load(read(data_dir, OBAMA)))
    index = r.gallery.index("staff", r.ctx.model_id)
    release, holding = threading.Event(), threading.Event()

    def writer() -> None:
        with index._rw.write(5):  # the lock an enrolment or compaction holds
            holding.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert holding.wait(5)
        reply = post_form(r, URL, {**jumdata_auth(), "base64": b64(read(data_dir, OBAMA2))})
        assert _code(reply)[0] == 606
        native_reply = native(
            r, "POST", "/api/v1/groups/staff/search", {"image_base64": b64(read(data_dir, OBAMA2))}
        )
        assert (native_reply.status, native_reply.json()["error"]["code"]) == (503, "unavailable")
        assert native_reply.headers["retry-after"] == "1"
    finally:
        release.set()
        t.join(10)
        r.close()


def test_a_burst_gets_answers_or_rate_limits_never_a_hang(tmp_path, data_dir):
    """12 simultaneous real requests against 1 engine slot + 2 queue places: each gets a success or the
    documented 609 promptly; none waits beyond the engine wait bound."""
    r = start(tmp_path, engine_concurrency=1, engine_queue=2, engine_wait_s=20)
    r.gallery.create_group("staff")
    r.ctx.enrol("staff", "obama", r.ctx.load(read(data_dir, OBAMA)))
    img = b64(read(data_dir, OBAMA2))
    codes: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(12)

    def one() -> None:
        go.wait(10)
        code = _code(post_form(r, URL, {**jumdata_auth(), "base64": img}))[0]
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=one) for _ in range(12)]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(codes) == 12 and set(codes) <= {200, 609}, codes
        assert codes.count(200) >= 1 and codes.count(609) >= 1
        assert time.monotonic() - t0 < 20
        assert r.ctx.gate.rejected == codes.count(609)
    finally:
        r.close()
