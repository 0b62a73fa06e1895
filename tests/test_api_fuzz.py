"""Property test: malformed bodies sent to every endpoint over real HTTP never produce a 5xx, never kill the
server and never change the gallery."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_api_support import OBAMA, b64, call, gallery_snapshot, jd_auth, read, start

FIELDS = [
    "group_id",
    "group_name",
    "info",
    "user_info",
    "image_base64",
    "face_token",
    "top_k",
    "max_faces",
    "min_score",
    "quality_control",
    "image_a_base64",
    "image_b_base64",
    "groupId",
    "groupName",
    "outerId",
    "imageBase64",
    "imgBase64A",
    "imgBase64B",
    "api_key",
    "api_secret",
    "faceset_token",
    "outer_id",
    "image_url",
    "return_result_count",
    "face_rectangle",
    "appId",
    "timestamp",
    "sign",
    "file",
    "base64",
    "url",
    "maxFaceNum",
    "matchThreshold",
    "qualityControl",
    "livenessControl",
    "maxUserNum",
    "appkey",
]
WRONG = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
JUNK_TEXT = st.text(max_size=300)
TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "text/plain",
    "",
    "image/jpeg",
    "application/json; charset=utf-16",
]


def _body(values) -> st.SearchStrategy[bytes]:
    obj = st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=6)
    return st.one_of(
        st.binary(max_size=600),
        obj.map(lambda d: json.dumps(d).encode()),
        st.one_of(st.lists(st.integers()), st.integers(), st.text()).map(lambda v: json.dumps(v).encode()),
        obj.map(lambda d: "&".join(f"{quote(k)}={quote(str(v))}" for k, v in d.items()).encode()),
        st.binary(max_size=300).map(
            lambda b: (
                b'--xyz\r\nContent-Disposition: form-data; name="file"; '
                b'filename="a"\r\n\r\n' + b + b"\r\n--xyz--\r\n"
            )
        ),
        st.just(b'{"a":' * 5000),  # deep nesting
    )


# Bodies for endpoints whose fields are all optional (a well-formed body would create something): only
# wrong-typed values, so every generated body is malformed.
STRICT = _body(WRONG)
ANY = _body(st.one_of(WRONG, JUNK_TEXT))

ROUTES = [
    ("POST", "/api/v1/groups", STRICT),
    ("PUT", "/api/v1/groups/fz/persons/{x}", STRICT),
    ("POST", "/api/v1/groups/fz/persons/{x}/faces", ANY),
    ("POST", "/api/v1/groups/fz/search", ANY),
    ("POST", "/api/v1/compare", ANY),
    ("DELETE", "/api/v1/groups/{x}", ANY),
    ("DELETE", "/api/v1/groups/fz/persons/{x}", ANY),
    ("DELETE", "/api/v1/faces/{x}", ANY),
    ("GET", "/api/v1/groups/{x}/persons", ANY),
    ("POST", "/jdai/faceCreate", ANY),
    ("POST", "/jdai/faceSearch?groupId=fz", ANY),
    ("POST", "/jdai/faceCompareV1", ANY),
    ("POST", "/facepp/v3/search", ANY),
    ("POST", "/face/multi-search", ANY),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    r = start(tmp_path_factory.mktemp("fuzz"), allow_unauthenticated_loopback=True)
    r.gallery.create_group("fz", "fuzzed")
    r.ctx.enrol("fz", "obama", r.ctx.load(read(data_dir, OBAMA)))
    yield r
    r.close()


@pytest.mark.parametrize(("method", "path", "bodies"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_malformed_bodies_never_5xx_and_never_change_the_gallery(run, method, path, bodies):
    before = gallery_snapshot(run.gallery)
    existing = {"fz", "fuzzed", "obama"} | {f.face_id for f in run.gallery.list_faces("fz")}

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies, ctype=st.sampled_from(TYPES), segment=st.text(min_size=1, max_size=20))
    def probe(body: bytes, ctype: str, segment: str) -> None:
        assume(segment not in existing)
        target = path.replace("{x}", quote(segment, safe=""))
        headers = {"Content-Type": ctype} if ctype else {}
        reply = call(run, method, target, body, headers)
        assert reply.status < 500, (target, reply.status, reply.body[:300])
        if reply.headers.get("content-type", "").startswith("application/json"):
            json.loads(reply.body)

    probe()
    assert gallery_snapshot(run.gallery) == before
    assert call(run, "GET", "/api/v1/health").status == 200


def test_signed_requests_with_junk_bodies_and_junk_bytes_on_the_socket(run, data_dir):
    before = gallery_snapshot(run.gallery)
    # authenticated JD calls with a valid image but broken fields
    img = b64(read(data_dir, OBAMA))
    for body in (
        b'{"outerId": 5, "groupId": "fz", "imageBase64": "' + img.encode() + b'"}',
        b"\xff\xfe",
        b"{}",
    ):
        reply = call(
            run,
            "POST",
            "/jdai/faceCreate?" + "&".join(f"{k}={v}" for k, v in jd_auth().items()),
            body,
            {"Content-Type": "application/json"},
        )
        assert reply.status == 200 and reply.json()["result"]["status"] != 0
    # raw garbage instead of HTTP: answered or dropped, never fatal
    for junk in (
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /api/v1/compare HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", run.server.port), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            data = s.recv(1000)
            # http.server answers a versionless line HTTP/0.9-style (no status line); otherwise 400, 431
            # (header too long) or 505 (unknown HTTP version): protocol errors, never a crash
            status = data.split(b" ")[1] if data.startswith(b"HTTP/") else b""
            assert status in (b"", b"400", b"431", b"505"), data[:100]
    assert gallery_snapshot(run.gallery) == before
    assert call(run, "GET", "/api/v1/health").status == 200


def test_a_client_that_stalls_mid_body_is_dropped_after_the_socket_timeout(tmp_path):
    r = start(tmp_path, max_handlers=1, socket_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", r.server.port), timeout=5) as s:
            s.sendall(b'POST /api/v1/compare HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"a":')
            t0 = time.monotonic()
            assert s.recv(100) == b""  # closed without an answer once the read timed out
            assert 0.3 < time.monotonic() - t0 < 4
        assert call(r, "GET", "/api/v1/health").status == 200  # the only handler slot is free again
    finally:
        r.close()
