"""Native search with `liveness_control` over real HTTP: the single-image liveness verdict is returned per
face; a face failing it is never searched and gets no face_token (fail closed)."""

from __future__ import annotations

import pytest
from test_api_support import OBAMA, OBAMA2, b64, native, read, start

from agent.gates.liveness import REASONS

SEARCH = "/api/v1/groups/staff/search"


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    r = start(tmp_path_factory.mktemp("native-liveness"))
    r.gallery.create_group("staff")
    r.ctx.enrol("staff", "obama", r.ctx.load(read(data_dir, OBAMA)))
    yield r
    r.close()


def test_live_photo_passes_and_is_searched(run, data_dir):
    img = b64(read(data_dir, OBAMA2))
    for level in ("LOW", "NORMAL", "HIGH"):
        reply = native(run, "POST", SEARCH, {"image_base64": img, "liveness_control": level})
        assert reply.status == 200, reply.body[:300]
        [face] = reply.json()["faces"]
        live = face["liveness"]
        assert live["level"] == level and live["passed"] is True and live["reasons"] == []
        assert 0.5 <= live["score"] <= 1.0 and "glare" in live["measures"]
        assert face["face_token"] and face["candidates"][0]["outer_id"] == "obama"
    plain = native(run, "POST", SEARCH, {"image_base64": img}).json()["faces"][0]
    assert "liveness" not in plain  # NONE: no check, no verdict


def test_screen_replay_is_answered_with_reasons_not_searched(run, data_dir):
    img = b64(read(data_dir, "spoof/hyperfas/images/fake_screen.png"))
    reply = native(run, "POST", SEARCH, {"image_base64": img, "liveness_control": "LOW", "min_score": 0})
    assert reply.status == 200, reply.body[:300]
    [face] = reply.json()["faces"]
    live = face["liveness"]
    assert (
        live["passed"] is False and "screen_moire" in live["reasons"] and set(live["reasons"]) <= set(REASONS)
    )
    assert live["score"] < 0.5 and live["measures"]["moire"] > 3.2
    assert face["candidates"] == [] and face["face_token"] is None
    # without the check the same face is searched (min_score 0 returns the nearest person)
    unchecked = native(run, "POST", SEARCH, {"image_base64": img, "min_score": 0}).json()["faces"][0]
    assert unchecked["candidates"] and unchecked["face_token"]


def test_liveness_control_errors(run, data_dir):
    img = b64(read(data_dir, OBAMA2))
    bad = native(run, "POST", SEARCH, {"image_base64": img, "liveness_control": "MAX"})
    assert (bad.status, bad.json()["error"]["code"]) == (400, "bad_argument")
    token = native(run, "POST", SEARCH, {"image_base64": img}).json()["faces"][0]["face_token"]
    both = native(run, "POST", SEARCH, {"face_token": token, "liveness_control": "LOW"})
    assert (both.status, both.json()["error"]["code"], both.json()["error"]["param"]) == (
        400,
        "coexistence",
        "liveness_control",
    )
