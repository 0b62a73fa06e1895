"""JD Cloud SDK signatures (Authorization: JDCLOUD3 / JDCLOUD2-HMAC-SHA256) on the JD endpoints: requests
signed by the real `jdcloud_sdk` signer, sent over real HTTP to a real server on loopback."""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import urlencode

import pytest
from jdcloud_sdk.core import const
from jdcloud_sdk.core.credential import Credential
from jdcloud_sdk.core.logger import ERROR, Logger
from jdcloud_sdk.core.signer import Signer
from test_api_support import (
    BIDEN,
    DISABLED_KEY,
    KEY,
    NATIVE_ONLY_KEY,
    OBAMA,
    OBAMA2,
    SECRET,
    Reply,
    Running,
    b64,
    call,
    gallery_snapshot,
    read,
    start,
)

GROUP = "测 试"  # non-ASCII and a space: the query is percent-encoded, exercising canonical re-encoding


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jdcloud")
    # A device that has already served during this boot: its replay store vouches for the time before this
    # start, so the whole window back to 300 s ago is accepted (test_stale_date_and_replay). A first start
    # refuses what was signed before it (agent/api/replay.py).
    store = tmp / "api-replay.sqlite3"
    start(tmp, replay_store=store).close()
    r = start(tmp, replay_store=store)
    r.gallery.create_group("g-jdcloud", GROUP)
    r.gallery.create_group("g-other", "other")
    yield r
    r.close()


def sign(
    run: Running,
    method: str,
    target: str,
    body: str,
    content_type: str = "application/json",
    key: str = KEY,
    secret: str = SECRET,
    preset: dict[str, str] | None = None,
) -> dict[str, str]:
    """Headers as the SDK's signer leaves them (it mutates the dict it is given)."""
    headers = {"Content-Type": content_type, **(preset or {})}
    url = f"http://127.0.0.1:{run.server.port}{target}"
    Signer(Logger(ERROR)).sign(method, "face", "cn-north-1", url, headers, body, Credential(key, secret), "")
    return headers


def send(run: Running, target: str, body: str, headers: dict[str, str]) -> Reply:
    return call(run, "POST", target, body.encode(), headers)


def signed_post(run: Running, target: str, body: str, content_type: str = "application/json", **kw) -> Reply:
    return send(run, target, body, sign(run, "POST", target, body, content_type, **kw))


def create_body(outer_id: str, image: bytes) -> str:
    return json.dumps({"groupName": GROUP, "outerId": outer_id, "imageBase64": b64(image)})


def search_target() -> str:
    return "/jdai/faceSearch?" + urlencode({"groupName": GROUP})


def compare_body(a: bytes, b: bytes) -> str:
    return json.dumps({"imgBase64A": b64(a), "imgBase64B": b64(b)})


def refusal(reply: Reply) -> tuple[int, str, str]:
    body = reply.json()
    assert body["result"] is None, body
    return reply.status, body["code"], body["msg"]


def test_sdk_signed_create_search_compare(run, data_dir):
    headers = sign(run, "POST", "/jdai/faceCreate", create_body("obama", read(data_dir, OBAMA)))
    assert headers["Authorization"].startswith("JDCLOUD3-HMAC-SHA256 Credential=test-key/")
    assert "SignedHeaders=content-type;host," in headers["Authorization"]
    created = send(run, "/jdai/faceCreate", create_body("obama", read(data_dir, OBAMA)), headers).json()
    assert created["code"] == "10000" and created["result"]["status"] == 0, created
    face_id = json.loads(created["result"]["result"])["faceId"]

    form = urlencode({"imageBase64": b64(read(data_dir, OBAMA2))})
    found = signed_post(run, search_target(), form, "application/x-www-form-urlencoded").json()
    assert found["code"] == "10000", found
    hit = json.loads(found["result"]["result"])["faceSearchResults"][0]["faceID"]
    assert (hit["outerId"], hit["faceId"]) == ("obama", face_id) and hit["sim"] > 0.49

    same = signed_post(
        run, "/jdai/faceCompareV1", compare_body(read(data_dir, OBAMA), read(data_dir, OBAMA2))
    )
    diff = signed_post(run, "/jdai/faceCompareV1", compare_body(read(data_dir, OBAMA), read(data_dir, BIDEN)))
    assert same.json()["result"]["code"] == 0 and diff.json()["result"]["code"] == 0
    assert float(same.json()["result"]["score"]) > 0.49 > float(diff.json()["result"]["score"])


def test_jdcloud2_from_the_sdk_signer(run, data_dir, monkeypatch):
    # The SDK's own signing path with its JDCLOUD2 constants (what SDKs before 1.6.x's JDCLOUD3 switch used).
    monkeypatch.setattr(const, "JDCLOUD3_ALGORITHM", const.JDCLOUD_ALGORITHM)
    monkeypatch.setattr(const, "JDCLOUD3", const.JDCLOUD2)
    monkeypatch.setattr(const, "JDCLOUD3_REQUEST", const.JDCLOUD_REQUEST)
    body = compare_body(read(data_dir, OBAMA), read(data_dir, OBAMA2))
    headers = sign(run, "POST", "/jdai/faceCompareV1", body)
    assert headers["Authorization"].startswith("JDCLOUD2-HMAC-SHA256 ")
    assert "/jdcloud2_request, " in headers["Authorization"]
    reply = send(run, "/jdai/faceCompareV1", body, headers).json()
    assert reply["code"] == "10000" and float(reply["result"]["score"]) > 0.49

    form = urlencode({"imageBase64": b64(read(data_dir, OBAMA2))})
    assert (
        signed_post(run, search_target(), form, "application/x-www-form-urlencoded").json()["code"] == "10000"
    )


def test_relabelled_algorithm_is_refused(run, data_dir):
    body = compare_body(read(data_dir, OBAMA), read(data_dir, OBAMA2))
    headers = sign(run, "POST", "/jdai/faceCompareV1", body)
    # Same canonical request, other label: the key chain differs ("JDCLOUD2" + secret), so it cannot verify.
    headers["Authorization"] = (
        headers["Authorization"]
        .replace("JDCLOUD3-", "JDCLOUD2-")
        .replace("jdcloud3_request", "jdcloud2_request")
    )
    status, code, msg = refusal(send(run, "/jdai/faceCompareV1", body, headers))
    assert (status, code) == (401, "10001") and "signature does not match" in msg


def test_tampered_body_query_secret_and_unknown_key(run, data_dir):
    snap = gallery_snapshot(run.gallery)
    signed_body = create_body("mallory", read(data_dir, OBAMA))
    headers = sign(run, "POST", "/jdai/faceCreate", signed_body)
    tampered = send(run, "/jdai/faceCreate", create_body("mallory", read(data_dir, BIDEN)), headers)
    assert refusal(tampered)[:2] == (401, "10001") and "signature does not match" in refusal(tampered)[2]

    form = urlencode({"imageBase64": b64(read(data_dir, OBAMA2))})
    headers = sign(run, "POST", search_target(), form, "application/x-www-form-urlencoded")
    moved = send(run, "/jdai/faceSearch?groupName=other", form, headers)
    assert refusal(moved)[:2] == (401, "10001") and "signature does not match" in refusal(moved)[2]
    # A parameter without '=' is left out of the SDK's canonical query, so it would ride along unsigned.
    extra = send(run, search_target() + "&groupId", form, headers)
    assert refusal(extra)[:2] == (401, "10001") and "no '='" in refusal(extra)[2]

    wrong = signed_post(run, "/jdai/faceCreate", signed_body, secret="not-the-secret-123")
    assert refusal(wrong)[:2] == (401, "10001") and "signature does not match" in refusal(wrong)[2]
    nobody = signed_post(run, "/jdai/faceCreate", signed_body, key="nobody-key")
    assert refusal(nobody)[:2] == (401, "10001") and "unknown key" in refusal(nobody)[2]
    assert gallery_snapshot(run.gallery) == snap  # nothing refused was stored


def test_signed_content_digest_must_match_body(run, data_dir):
    body = compare_body(read(data_dir, OBAMA), read(data_dir, OBAMA2))
    digest = hashlib.sha256(body.encode()).hexdigest()
    # Preset before signing, the SDK signs x-jdcloud-content-sha256 too.
    headers = sign(run, "POST", "/jdai/faceCompareV1", body, preset={"x-jdcloud-content-sha256": digest})
    assert "x-jdcloud-content-sha256" in headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    other = compare_body(read(data_dir, OBAMA), read(data_dir, BIDEN))
    status, code, msg = refusal(send(run, "/jdai/faceCompareV1", other, headers))
    assert (status, code) == (401, "10001") and "does not match x-jdcloud-content-sha256" in msg
    assert send(run, "/jdai/faceCompareV1", body, headers).json()["code"] == "10000"


def test_stale_date_and_replay(run, data_dir):
    body = compare_body(read(data_dir, OBAMA), read(data_dir, OBAMA2))
    for offset in (-400, 400):  # outside the 300 s window, either way
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + offset))
        stale = signed_post(run, "/jdai/faceCompareV1", body, preset={"x-jdcloud-date": date})
        status, code, msg = refusal(stale)
        assert (status, code) == (401, "10003") and "validity window" in msg
    inside = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 200))
    assert signed_post(run, "/jdai/faceCompareV1", body, preset={"x-jdcloud-date": inside}).json()[
        "code"
    ] == ("10000")

    # Swapped images: no other test sends this request, so only its own copy can be the earlier use.
    body = compare_body(read(data_dir, OBAMA2), read(data_dir, OBAMA))
    headers = sign(run, "POST", "/jdai/faceCompareV1", body)
    assert send(run, "/jdai/faceCompareV1", body, headers).json()["code"] == "10000"
    status, code, msg = refusal(send(run, "/jdai/faceCompareV1", body, headers))
    assert (status, code) == (401, "10004") and "already used" in msg
    # A new nonce does not make a replay fresh: the SDK leaves the nonce unsigned.
    headers["x-jdcloud-nonce"] = "another-nonce"
    assert refusal(send(run, "/jdai/faceCompareV1", body, headers))[1] == "10004"
    # Preset before signing, the nonce is signed: identical requests within one second are then distinct.
    for nonce in ("nonce-1", "nonce-2"):
        signed = sign(run, "POST", "/jdai/faceCompareV1", body, preset={"x-jdcloud-nonce": nonce})
        assert send(run, "/jdai/faceCompareV1", body, signed).json()["code"] == "10000"


def test_malformed_headers_and_unsigned_host(run, data_dir):
    body = compare_body(read(data_dir, OBAMA), read(data_dir, OBAMA2))
    good = sign(run, "POST", "/jdai/faceCompareV1", body)

    no_host = {
        **good,
        "Authorization": good["Authorization"].replace(
            "SignedHeaders=content-type;host,", "SignedHeaders=content-type,"
        ),
    }
    status, code, msg = refusal(send(run, "/jdai/faceCompareV1", body, no_host))
    assert (status, code) == (401, "10001") and "host header must be signed" in msg

    for bad in (
        "JDCLOUD3-HMAC-SHA256 garbage",
        good["Authorization"].replace("Signature=", "Signature=zz"),
        good["Authorization"].replace("/jdcloud3_request", "/jdcloud2_request"),
        good["Authorization"].replace("Credential=test-key/", "Credential=test-key/x/"),
    ):
        status, code, msg = refusal(send(run, "/jdai/faceCompareV1", body, {**good, "Authorization": bad}))
        assert (status, code) == (401, "10001") and "malformed JDCLOUD Authorization" in msg, (bad, msg)
    for text in ("张三", "😀"):  # non-ASCII, sent as UTF-8 bytes: the family's auth error, not a 500
        bad = good["Authorization"].replace("Signature=", "Signature=" + text).encode()
        status, code, msg = refusal(send(run, "/jdai/faceCompareV1", body, {**good, "Authorization": bad}))
        assert (status, code) == (401, "10001"), msg
    other_scheme = send(run, "/jdai/faceCompareV1", body, {**good, "Authorization": "Bearer abc"})
    assert refusal(other_scheme)[:2] == (401, "10001")

    no_date = {k: v for k, v in good.items() if k != "x-jdcloud-date"}
    assert refusal(send(run, "/jdai/faceCompareV1", body, no_date))[:2] == (401, "10002")
    bad_date = {**good, "x-jdcloud-date": good["x-jdcloud-date"].replace("T", "t")}
    assert refusal(send(run, "/jdai/faceCompareV1", body, bad_date))[:2] == (401, "10003")


def test_key_permissions(run, data_dir):
    body = compare_body(read(data_dir, OBAMA), read(data_dir, OBAMA2))
    assert refusal(signed_post(run, "/jdai/faceCompareV1", body, key=DISABLED_KEY))[:2] == (403, "10005")
    assert refusal(signed_post(run, "/jdai/faceCompareV1", body, key=NATIVE_ONLY_KEY))[:2] == (403, "10006")


def test_header_is_checked_even_when_loopback_may_be_anonymous(tmp_path, data_dir):
    r = start(tmp_path, allow_unauthenticated_loopback=True)
    try:
        body = compare_body(read(data_dir, OBAMA), read(data_dir, OBAMA2))
        anonymous = call(
            r, "POST", "/jdai/faceCompareV1", body.encode(), {"Content-Type": "application/json"}
        )
        assert anonymous.json()["code"] == "10000"
        wrong = signed_post(r, "/jdai/faceCompareV1", body, secret="not-the-secret-123")
        assert refusal(wrong)[:2] == (401, "10001")
    finally:
        r.close()


def test_openapi_offers_the_sdk_signature_on_jd_paths(run):
    doc = call(run, "GET", "/openapi.json").json()
    assert doc["components"]["securitySchemes"]["jdcloudSigner"]["name"] == "Authorization"
    for path in ("/jdai/faceCreate", "/jdai/faceSearch", "/jdai/faceCompareV1"):
        assert doc["paths"][path]["post"]["security"] == [{"jdSign": []}, {"jdcloudSigner": []}]
