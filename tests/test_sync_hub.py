"""The hub side of gallery sync over real HTTPS on loopback (docs/sync.md): device signatures checked against
the gallery database, feed and snapshot paging, compaction, TLS with a CA made by the openssl CLI,
announcements on a real Mosquitto, the `face-agent hub` commands and `serve` with a hub: section.

Feed tests use small random embeddings (L2-normalised, dim 128) written through the gallery store; the real
engine only serves the API server (and the one test that enrols through the native API with a photo)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from test_api_support import KEY, OBAMA, SECRET, Reply, api_config, b64, read, shared_engine
from test_publish_mqtt import Subscriber, make_certificates

from agent.api import ApiServer, build_context, native_header
from agent.api.server import tls_context
from agent.errors import ConfigError, InputError
from agent.gallery import Gallery, GalleryConfig, NewFace, feed
from agent.ops.metrics import Registry
from agent.sync.config import HubConfig
from agent.sync.devices import DeviceStore
from agent.sync.hub import HubService

ROOT = Path(__file__).resolve().parent.parent
MODEL = "test-128"
DIM = 128


# -- helpers -------------------------------------------------------------------------------------------------


def vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def faces(rng: np.random.Generator, n: int, person: str = "p", **kw: Any) -> list[NewFace]:
    return [NewFace(f"{person}{i}", vector(rng), MODEL, quality=0.5, **kw) for i in range(n)]


@dataclass
class Hub:
    service: HubService
    server: ApiServer
    gallery: Gallery
    ca: Path
    state: Path
    database: str | None = None

    def cli(self) -> list[str]:
        """`face-agent hub ...` arguments that open this hub's store: its state dir, or (PostgreSQL) a config
        naming hub.database."""
        if self.database is None:
            return ["--state-dir", str(self.state)]
        path = self.state / "hub-cli.yaml"
        cfg = {"state_dir": str(self.state), "hub": {"database": self.database, "allow_plaintext": True}}
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return ["--config", str(path)]

    @property
    def store(self):
        return self.gallery.store

    @property
    def port(self) -> int:
        return self.server.port

    def close(self) -> None:
        self.server.stop()
        self.service.stop()
        self.gallery.close()


def start_hub(
    tmp: Path, pki: tuple[Path, Path, Path], hub: dict | None = None, database: str | None = None, **api: Any
) -> Hub:
    ca, cert, key = pki
    state = tmp / "state"
    gallery = Gallery(GalleryConfig(path=state / "gallery", save_interval_s=0, database=database))
    api_cfg = api_config(
        tmp / "cfg",
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        replay_store=str(state / "api-replay.sqlite3"),
        **api,
    )
    service = HubService(HubConfig.model_validate(hub or {}), gallery, api_cfg)
    server = ApiServer(api_cfg, build_context(api_cfg, shared_engine(), gallery), [service.family]).start()
    service.start()
    return Hub(service, server, gallery, ca, state, database)


@dataclass
class Endpoint:
    """Where a hub listens and the CA its certificate chains to (a Hub, or a `serve` process)."""

    port: int
    ca: Path


def https(hub: Hub | Endpoint, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Reply:
    import http.client

    ctx = ssl.create_default_context(cafile=str(hub.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", hub.port, timeout=30, context=ctx)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def sync_get(
    hub: Hub | Endpoint,
    path: str,
    device: str,
    secret: str,
    query: dict[str, Any] | None = None,
    *,
    ts_ms: int | None = None,
    nonce: str | None = None,
    header: str | None = None,
) -> Reply:
    target = path + ("?" + urlencode(query) if query else "")
    if header is None:
        header = native_header(device, secret, "GET", target, b"", nonce or uuid.uuid4().hex, ts_ms)
    auth = header
    return https(hub, "GET", target, {"Authorization": auth} if auth else {})


def code(reply: Reply) -> str:
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    return reply.json()["error"]["code"]


def agent_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[Path, Path, Path]:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request, tmp_path_factory, pki):
    """The hub on both stores: every test below that uses it runs against SQLite and PostgreSQL."""
    database = None
    if request.param == "postgresql":
        from pg_support import migrated_database

        database = migrated_database(request.getfixturevalue("pg_server"))
    h = start_hub(tmp_path_factory.mktemp("hub"), pki, {"max_page_ops": 500}, database, socket_timeout_s=3)
    for gid in ("staff", "visitors", "private"):
        h.store.create_group(gid, info=f"{gid} info")
    yield h
    h.close()


@pytest.fixture(scope="module")
def door(hub) -> tuple[str, str]:
    """door-1: granted staff, visitors and ghost (a group that does not exist)."""
    return "door-1", hub.service.devices.add("door-1", ["staff", "visitors", "ghost"], "front door")


# -- TLS and authentication ----------------------------------------------------------------------------------


def test_signed_request_over_https_verified_with_the_ca(hub, door):
    assert hub.server.url.startswith("https://127.0.0.1:")
    r = sync_get(hub, "/v1/sync/groups", *door)
    assert r.status == 200, r.body
    body = r.json()
    assert body["device_id"] == "door-1"
    listed = {g["group_id"]: g for g in body["groups"]}
    assert {"staff", "visitors"} <= set(listed)  # granted and existing
    assert "private" not in listed and "ghost" not in listed  # not granted; granted but missing
    with hub.store.reader() as conn:
        assert listed["staff"]["head"] == feed.group_head(conn, "staff") > 0
    assert listed["staff"]["info"] == "staff info" and listed["staff"]["floor"] == 0
    # Without the test CA the certificate is not trusted; plain HTTP on the TLS port gets no HTTP answer.
    with pytest.raises(ssl.SSLCertVerificationError):
        _untrusted(hub)
    with socket.create_connection(("127.0.0.1", hub.port), timeout=5) as s:
        s.sendall(b"GET /v1/sync/groups HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/")


def _untrusted(hub: Hub) -> None:
    import http.client

    conn = http.client.HTTPSConnection(
        "127.0.0.1", hub.port, timeout=10, context=ssl.create_default_context()
    )
    try:
        conn.request("GET", "/v1/sync/groups")
    finally:
        conn.close()


def test_refusals_have_their_codes(hub, door):
    device, secret = door
    groups = "/v1/sync/groups"
    assert (r := sync_get(hub, groups, device, secret, header="")).status == 401 and code(r) == "auth_missing"
    stale = int((time.time() - 600) * 1000)
    assert code(sync_get(hub, groups, device, secret, ts_ms=stale)) == "auth_stale"
    future = int((time.time() + 600) * 1000)
    assert code(sync_get(hub, groups, device, secret, ts_ms=future)) == "auth_stale"
    header = native_header(device, secret, "GET", groups, b"", "once")
    assert sync_get(hub, groups, device, secret, header=header).status == 200
    assert (r := sync_get(hub, groups, device, secret, header=header)).status == 401
    assert code(r) == "auth_replayed"
    assert code(sync_get(hub, groups, device, "not-the-secret-of-door-1")) == "auth_failed"
    assert code(sync_get(hub, groups, "door-404", secret)) == "auth_unknown_key"
    assert code(sync_get(hub, groups, device, secret, header="Basic abc")) == "auth_failed"
    assert code(sync_get(hub, groups, device, secret, header="FA-HMAC-SHA256 key=door-1")) == "auth_failed"
    # A signature over another target does not pass for this one.
    other = native_header(device, secret, "GET", "/v1/sync/groups/staff/feed", b"", uuid.uuid4().hex)
    assert code(sync_get(hub, groups, device, secret, header=other)) == "auth_failed"
    # The API's own credentials are not devices.
    assert code(sync_get(hub, groups, KEY, SECRET)) == "auth_unknown_key"
    # Groups: not granted (403, also when it does not exist), granted but missing (404).
    for gid, status, err in (("private", 403, "group_not_granted"), ("nope", 403, "group_not_granted")):
        r = sync_get(hub, f"/v1/sync/groups/{gid}/feed", device, secret)
        assert (r.status, code(r)) == (status, err)
    for what in ("feed", "snapshot"):
        r = sync_get(hub, f"/v1/sync/groups/ghost/{what}", device, secret)
        assert (r.status, code(r)) == (404, "group_not_found")
    r = sync_get(hub, "/v1/sync/nothing", device, secret)
    assert (r.status, code(r)) == (404, "not_found")


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 501},  # hub.max_page_ops is 500 here
        {"limit": "ten"},
        {"limit": "+5"},
        {"after": -1},
        {"after": "1e3"},
        {"max_bytes": 1000},  # below 64 KiB
        {"max_bytes": (32 << 20) + 1},
        {"thumbnails": "sometimes"},
        {"colour": "blue"},
        {"model": "m" * 200},
    ],
)
def test_bad_query_values_are_400_bad_argument(hub, door, query):
    r = sync_get(hub, "/v1/sync/groups/staff/feed", *door, query)
    assert (r.status, code(r)) == (400, "bad_argument"), r.body


def test_repeated_parameter_and_bad_snapshot_token(hub, door):
    r = sync_get(hub, "/v1/sync/groups/staff/feed?after=1&after=2", *door)
    assert (r.status, code(r)) == (400, "bad_argument")
    for token in ("x1", "f", "p-1", "f" + "9" * 30):
        r = sync_get(hub, "/v1/sync/groups/staff/snapshot", *door, {"token": token})
        assert (r.status, code(r)) == (400, "bad_argument"), token
    r = sync_get(hub, "/v1/sync/groups/staff/snapshot", *door, {"after": 3})
    assert (r.status, code(r)) == (400, "bad_argument")


def test_revoked_device_is_refused_at_its_next_request_also_when_revoked_by_the_cli(hub):
    secret = hub.service.devices.add("door-rev", ["staff"])
    assert sync_get(hub, "/v1/sync/groups", "door-rev", secret).status == 200
    out = agent_cli("hub", "devices", "revoke", "door-rev", *hub.cli())
    assert out.returncode == 0, out.stderr
    for path in ("/v1/sync/groups", "/v1/sync/groups/staff/feed", "/v1/sync/groups/staff/snapshot"):
        r = sync_get(hub, path, "door-rev", secret)
        assert (r.status, code(r)) == (403, "device_revoked")
    # Only a correctly signed request learns it: a wrong secret is still just auth_failed.
    assert code(sync_get(hub, "/v1/sync/groups", "door-rev", "wrong-secret-wrong-secret")) == "auth_failed"


def test_ungrant_and_grant_take_effect_at_once(hub):
    devices = hub.service.devices
    secret = devices.add("door-g", ["staff"])
    assert sync_get(hub, "/v1/sync/groups/staff/feed", "door-g", secret).status == 200
    assert devices.ungrant("door-g", "staff")
    assert code(sync_get(hub, "/v1/sync/groups/staff/feed", "door-g", secret)) == "group_not_granted"
    assert sync_get(hub, "/v1/sync/groups", "door-g", secret).json()["groups"] == []
    assert devices.grant("door-g", "visitors")
    assert [g["group_id"] for g in sync_get(hub, "/v1/sync/groups", "door-g", secret).json()["groups"]] == [
        "visitors"
    ]


def test_replays_are_refused_after_a_restart(tmp_path, pki):
    h = start_hub(tmp_path, pki)
    secret = h.service.devices.add("door-r", [])
    header = native_header("door-r", secret, "GET", "/v1/sync/groups", b"", "n1")
    assert sync_get(h, "/v1/sync/groups", "door-r", secret, header=header).status == 200
    h.close()
    assert (tmp_path / "state" / "hub-replay.sqlite3").exists()  # beside api-replay.sqlite3, its own file
    h = start_hub(tmp_path, pki)
    try:
        assert code(sync_get(h, "/v1/sync/groups", "door-r", secret, header=header)) == "auth_replayed"
        assert sync_get(h, "/v1/sync/groups", "door-r", secret).status == 200
    finally:
        h.close()


def test_a_silent_client_does_not_block_the_tls_server(hub, door):
    """The handshake runs in the connection's thread: a client that connects and says nothing holds one
    handler slot until socket_timeout_s (3 s here), not the accept loop."""
    silent = [socket.create_connection(("127.0.0.1", hub.port), timeout=10) for _ in range(3)]
    try:
        t0 = time.monotonic()
        assert sync_get(hub, "/v1/sync/groups", *door).status == 200
        assert time.monotonic() - t0 < 2.0
        silent[0].settimeout(10)
        t0 = time.monotonic()
        assert silent[0].recv(10) == b""  # closed by the server after the handshake timeout
        assert time.monotonic() - t0 < 6
    finally:
        for s in silent:
            s.close()


def test_connections_beyond_max_handlers_get_429_over_tls(tmp_path, pki):
    h = start_hub(tmp_path, pki, max_handlers=1, socket_timeout_s=5)
    try:
        secret = h.service.devices.add("door-b", [])
        with socket.create_connection(("127.0.0.1", h.port), timeout=10):  # holds the only slot, silent
            time.sleep(0.2)
            r = sync_get(h, "/v1/sync/groups", "door-b", secret)
            assert (r.status, code(r)) == (429, "busy") and r.headers["retry-after"] == "1"
        wait_until(lambda: sync_get(h, "/v1/sync/groups", "door-b", secret).status == 200, 10, "a free slot")
    finally:
        h.close()


def test_plain_http_hub_refuses_to_start_unless_allowed(tmp_path):
    gallery = Gallery(GalleryConfig(path=tmp_path / "g", save_interval_s=0))
    try:
        plain = api_config(tmp_path / "cfg")
        with pytest.raises(ConfigError, match="tls_cert_file"):
            HubService(HubConfig(), gallery, plain)
        svc = HubService(HubConfig(allow_plaintext=True), gallery, plain)
        svc.stop()
    finally:
        gallery.close()
    with pytest.raises(ValueError, match="go together"):
        api_config(tmp_path / "cfg", tls_cert_file=str(tmp_path / "c.pem"))
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(json.dumps({"state_dir": str(tmp_path / "st"), "hub": {}}))
    out = agent_cli("serve", "--config", str(cfg))
    assert out.returncode == 78 and "tls_cert_file" in out.stderr, out.stderr


def test_unreadable_certificate_is_a_config_error(tmp_path, pki):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    cfg = api_config(tmp_path / "cfg", tls_cert_file=str(bad), tls_key_file=str(pki[2]))
    with pytest.raises(ConfigError, match="tls_cert_file"):
        tls_context(cfg)


# -- the feed ------------------------------------------------------------------------------------------------


def _pages(hub: Hub, device: tuple[str, str], gid: str, after: int, **query: Any) -> list[dict]:
    pages = []
    while True:
        r = sync_get(hub, f"/v1/sync/groups/{gid}/feed", *device, {"after": after, **query})
        assert r.status == 200, r.body
        page = r.json()
        pages.append(page)
        assert page["next"] >= after
        after = page["next"]
        if not page["more"]:
            return pages


def test_feed_pages_by_count_with_next_more_and_head(hub, door):
    rng = np.random.default_rng(1)
    hub.store.create_group("count", info="")
    hub.service.devices.grant("door-1", "count")
    added = hub.store.add_faces("count", faces(rng, 120))
    vectors = {f.face_id: hub.store.get_embedding(f.face_id) for f in added}
    pages = _pages(hub, door, "count", 0, limit=50, thumbnails="never")
    with hub.store.reader() as conn:
        head = feed.group_head(conn, "count")
    ops = [op for p in pages for op in p["ops"]]
    assert [len(p["ops"]) for p in pages] == [50, 50, 50, 50, 41]  # group_created + 120 persons + 120 faces
    assert all(p["head"] == head for p in pages) and pages[-1]["next"] == head
    assert [p["more"] for p in pages] == [True] * 4 + [False]
    assert all(p["next"] == p["ops"][-1]["seq"] for p in pages)
    seqs = [op["seq"] for op in ops]
    assert seqs == sorted(set(seqs))
    created = {"op": "group_created", "group_id": "count", "group_name": None, "info": ""}
    assert ops[0] == {"seq": ops[0]["seq"], **created}
    got = {op["face_id"]: op for op in ops if op["op"] == "face_added"}
    assert set(got) == set(vectors)
    for fid, op in got.items():
        vec = np.frombuffer(base64.b64decode(op["embedding"]), dtype="<f4")
        assert np.array_equal(vec, vectors[fid]) and op["dim"] == DIM and op["model_id"] == MODEL
        assert op["has_thumbnail"] is False and "thumbnail" not in op
    # Caught up: an empty page at the head, more false.
    last = sync_get(hub, "/v1/sync/groups/count/feed", *door, {"after": head}).json()
    assert last == {"group_id": "count", "ops": [], "next": head, "more": False, "head": head}


def test_feed_pages_by_bytes_and_thumbnails(hub, door):
    rng = np.random.default_rng(2)
    hub.store.create_group("bytes")
    hub.service.devices.grant("door-1", "bytes")
    hub.store.add_faces("bytes", faces(rng, 200))
    pages = _pages(hub, door, "bytes", 0, limit=500, max_bytes=65536, thumbnails="never")
    sizes = [[len(json.dumps(op, separators=(",", ":"))) for op in p["ops"]] for p in pages]
    assert len(pages) >= 3
    for s in sizes[:-1]:  # each full page stops at the first op that reaches max_bytes
        assert sum(s) >= 65536 > sum(s[:-1])
    assert sum(len(p["ops"]) for p in pages) == 1 + 200 + 200
    # One operation larger than max_bytes still makes a page of one.
    big = bytes(rng.integers(0, 256, 60_000, dtype=np.uint8))
    hub.store.add_faces("bytes", faces(rng, 2, person="big", thumbnail=big, thumbnail_format="jpeg"))
    after = pages[-1]["next"]
    query = {"after": after, "max_bytes": 65536, "thumbnails": "always"}
    page = sync_get(hub, "/v1/sync/groups/bytes/feed", *door, query).json()
    assert [op["op"] for op in page["ops"]] == ["person_updated", "face_added"] and page["more"]
    assert base64.b64decode(page["ops"][1]["thumbnail"]) == big
    # thumbnails=auto: only for faces of another model than the reader's.
    query = {"after": after, "thumbnails": "auto"}
    same = sync_get(hub, "/v1/sync/groups/bytes/feed", *door, query | {"model": MODEL}).json()
    other = sync_get(hub, "/v1/sync/groups/bytes/feed", *door, query | {"model": "another"}).json()
    assert not any("thumbnail" in op for op in same["ops"])
    assert [op["has_thumbnail"] for op in same["ops"] if op["op"] == "face_added"] == [True, True]
    assert sum("thumbnail" in op for op in other["ops"]) == 2


def test_every_write_lands_in_the_feed_with_its_data(hub, door, data_dir):
    """Native API (real photo, real engine) and store writes; a failed write leaves no operation."""
    gid = "writes"
    hub.service.devices.grant("door-1", gid)
    r = _native_https(hub, "POST", "/api/v1/groups", {"group_id": gid, "group_name": "Writes"})
    assert r.status == 201, r.body
    r = _native_https(
        hub, "POST", f"/api/v1/groups/{gid}/persons/obama/faces", {"image_base64": b64(read(data_dir, OBAMA))}
    )
    assert r.status == 201, r.body
    face_id = r.json()["face_id"]
    ops = _pages(hub, door, gid, 0)[0]["ops"]
    assert [o["op"] for o in ops] == ["group_created", "person_updated", "face_added"]
    assert ops[0]["group_name"] == "Writes" and ops[1]["outer_id"] == "obama"
    assert ops[2]["face_id"] == face_id and ops[2]["model_id"] == shared_engine().model_id
    assert ops[2]["has_thumbnail"] is True
    cursor = ops[-1]["seq"]
    # Store writes: person info change, group rename, face delete.
    hub.store.upsert_person(gid, "obama", "president")
    hub.store.update_group(gid, info="changed")
    hub.store.delete_face(face_id)
    later = _pages(hub, door, gid, cursor)[0]["ops"]
    assert [(o["op"], o.get("user_info"), o.get("info")) for o in later] == [
        ("person_updated", "president", None),
        ("group_updated", None, "changed"),
        ("face_deleted", None, None),
    ]
    # A batch that fails half-way (a face id taken) commits neither its faces nor their operations.
    rng = np.random.default_rng(3)
    with hub.store.reader() as conn:
        head = feed.group_head(conn, gid)
    taken = hub.store.add_faces(gid, faces(rng, 1, person="a"))[0].face_id
    head += 2
    batch = [NewFace("b0", vector(rng), MODEL), NewFace("b1", vector(rng), MODEL, face_id=taken)]
    with pytest.raises(InputError):
        hub.store.add_faces(gid, batch)
    with hub.store.reader() as conn:
        assert feed.group_head(conn, gid) == head
    assert [p.outer_id for p in hub.store.list_persons(gid)] == ["obama", "a0"]


def _native_https(hub: Hub, method: str, path: str, payload: Any) -> Reply:
    body = json.dumps(payload).encode()
    auth = native_header(KEY, SECRET, method, path, body, uuid.uuid4().hex)
    return https(hub, method, path, {"Authorization": auth, "Content-Type": "application/json"}, body)


def test_a_deleted_face_is_gone_from_every_later_read(hub, door):
    rng = np.random.default_rng(4)
    hub.store.create_group("forget")
    hub.service.devices.grant("door-1", "forget")
    face = hub.store.add_faces("forget", faces(rng, 1))[0]
    emb = base64.b64encode(hub.store.get_embedding(face.face_id).astype("<f4").tobytes())
    first = sync_get(hub, "/v1/sync/groups/forget/feed", *door, {"after": 0})
    assert emb in first.body
    hub.store.delete_face(face.face_id)
    for path in ("feed", "snapshot"):
        r = sync_get(hub, f"/v1/sync/groups/forget/{path}", *door, {"after": 0} if path == "feed" else None)
        assert r.status == 200 and emb not in r.body
    ops = sync_get(hub, "/v1/sync/groups/forget/feed", *door, {"after": 0}).json()["ops"]
    assert [o["op"] for o in ops] == ["group_created", "person_updated", "face_deleted"]


# -- compaction ----------------------------------------------------------------------------------------------


def test_compaction_sends_old_cursors_to_a_snapshot_and_quiet_groups_keep_theirs(tmp_path, pki):
    h = start_hub(tmp_path, pki, {"feed_keep_days": 1e-6})  # everything older than 0.09 s goes
    try:
        rng = np.random.default_rng(5)
        secret = h.service.devices.add("door-c", ["busy", "quiet"])
        dev = ("door-c", secret)
        for gid in ("busy", "quiet"):
            h.store.create_group(gid)
            h.store.add_faces(gid, faces(rng, 3))
        quiet_head = sync_get(h, "/v1/sync/groups/quiet/feed", *dev).json()["head"]
        h.store.add_faces("busy", faces(rng, 2, person="late"))
        time.sleep(0.2)
        assert h.service.compact() > 0
        st = h.service.stats()
        assert st.ops == 0 and st.floor == st.head > 0
        r = sync_get(h, "/v1/sync/groups/busy/feed", *dev, {"after": 0})
        assert (r.status, code(r)) == (410, "resync_required")
        busy_head = r.json()["error"]["floor"]
        assert busy_head == st.head
        # A cursor at its group's head missed nothing: no resync (before, every edge of a quiet group would
        # have been sent to a snapshot after each compaction, and back again).
        r = sync_get(h, "/v1/sync/groups/quiet/feed", *dev, {"after": quiet_head})
        empty = {"group_id": "quiet", "ops": [], "next": quiet_head, "more": False, "head": quiet_head}
        assert r.status == 200 and r.json() == empty
        listed = {g["group_id"]: g for g in sync_get(h, "/v1/sync/groups", *dev).json()["groups"]}
        assert listed["busy"]["head"] == listed["busy"]["floor"] == busy_head
        # The snapshot's cursor is the head, and the feed goes on from there.
        snap = sync_get(h, "/v1/sync/groups/busy/snapshot", *dev).json()
        assert snap["cursor"] == busy_head
        r = sync_get(h, "/v1/sync/groups/busy/feed", *dev, {"after": snap["cursor"]})
        assert r.status == 200 and r.json()["ops"] == []
        h.store.add_faces("busy", faces(rng, 1, person="new"))
        ops = sync_get(h, "/v1/sync/groups/busy/feed", *dev, {"after": snap["cursor"]}).json()["ops"]
        assert [o["op"] for o in ops] == ["person_updated", "face_added"]
        # The CLI reads the same numbers, also while the hub runs.
        out = agent_cli("hub", "feed", "--json", "--state-dir", str(h.state))
        assert out.returncode == 0, out.stderr
        st = h.service.stats()
        assert json.loads(out.stdout) == {
            "ops": st.ops,
            "oldest": st.oldest,
            "head": st.head,
            "floor": st.floor,
        }
    finally:
        h.close()


def test_cli_compact_uses_the_config(tmp_path):
    state = tmp_path / "state"
    from agent.gallery.store import GalleryStore

    store = GalleryStore(GalleryConfig(path=state / "gallery"))
    store.create_group("g")
    store.add_faces("g", faces(np.random.default_rng(6), 2))
    store.close()
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(
        json.dumps({"state_dir": str(state), "hub": {"allow_plaintext": True, "feed_keep_days": 1e-6}})
    )
    time.sleep(0.2)
    out = agent_cli("hub", "compact", "--config", str(cfg))
    assert out.returncode == 0 and "compacted 5 operation(s)" in out.stdout, out.stdout + out.stderr


# -- snapshots -----------------------------------------------------------------------------------------------


def test_snapshot_pages_hold_every_face_once_and_the_first_carries_the_cursor(hub, door):
    rng = np.random.default_rng(7)
    gid = "snap"
    hub.store.create_group(gid, group_name="Snapshot")
    hub.service.devices.grant("door-1", gid)
    for i in range(3):  # 30 persons, 75 faces
        hub.store.add_faces(gid, faces(rng, 25, person=f"b{i}-") + faces(rng, 0))
    for i in range(25):
        hub.store.add_faces(gid, [NewFace(f"b0-{i}", vector(rng), MODEL)])
    hub.store.upsert_person(gid, "lonely", "no faces")  # a person without faces is in the snapshot too
    with hub.store.reader() as conn:
        head = feed.group_head(conn, gid)
    token, pages = None, []
    while True:
        r = sync_get(
            hub, f"/v1/sync/groups/{gid}/snapshot", *door, {"limit": 10} | ({"token": token} if token else {})
        )
        assert r.status == 200, r.body
        page = r.json()
        pages.append(page)
        if len(pages) == 2:  # a face added mid-snapshot shows up once (pages read the present)
            extra = hub.store.add_faces(gid, [NewFace("mid", vector(rng), MODEL)])[0].face_id
        if not page["more"]:
            assert page["next"] is None
            break
        token = page["next"]
        assert isinstance(token, str)
    assert pages[0]["cursor"] == head and all(p["cursor"] is None for p in pages[1:])
    ops = [o for p in pages for o in p["ops"]]
    assert all(o["seq"] == 0 for o in ops)
    assert ops[0] == {"seq": 0, "op": "group_updated", "group_id": gid, "group_name": "Snapshot", "info": ""}
    persons = [o["outer_id"] for o in ops if o["op"] == "person_updated"]
    face_ids = [o["face_id"] for o in ops if o["op"] == "face_added"]
    assert len(persons) == len(set(persons)) == 77  # 75 + lonely + mid
    assert len(face_ids) == len(set(face_ids)) == 101
    assert set(face_ids) == {f.face_id for f in hub.store.list_faces(gid, limit=1000)} and extra in face_ids
    assert all(len(p["ops"]) <= 11 for p in pages)  # limit, plus the group on the first page


# -- announcements -------------------------------------------------------------------------------------------


def test_announcements_reach_a_real_mosquitto(tmp_path, pki, mqtt_broker):
    prefix = "hubtest" + uuid.uuid4().hex[:6]
    topic = lambda g: f"{prefix}/hub/groups/{g}/version"  # noqa: E731
    # A retained version of a group this hub does not have (deleted while it was down) gets cleared.
    stale = Subscriber(mqtt_broker.port, f"{prefix}/#")
    stale.client.publish(
        topic("ghost"), b'{"group_id":"ghost","head":3}', qos=1, retain=True
    ).wait_for_publish(5)
    stale.close()
    sub = Subscriber(mqtt_broker.port, f"{prefix}/hub/groups/+/version")
    h = start_hub(
        tmp_path,
        pki,
        {
            "announce": {"host": "127.0.0.1", "port": mqtt_broker.port},
            "announce_prefix": prefix,
            "announce_poll_s": 0.05,
        },
    )
    try:
        rng = np.random.default_rng(8)
        h.store.create_group("lobby")
        heads = lambda g: [m["head"] for m in sub.json_on(topic(g))]  # noqa: E731
        with h.store.reader() as conn:
            head = feed.group_head(conn, "lobby")
        assert sub.wait_for(lambda _: head in heads("lobby")), sub.messages
        msg = sub.json_on(topic("lobby"))[-1]
        assert msg["group_id"] == "lobby" and abs(msg["at"] - time.time()) < 10
        # A write through another connection to the same file (as `enroll` in another process) is announced.
        from agent.gallery.store import GalleryStore

        other = GalleryStore(GalleryConfig(path=h.state / "gallery"))
        other.add_faces("lobby", faces(rng, 2))
        other.close()
        with h.store.reader() as conn:
            head = feed.group_head(conn, "lobby")
        assert sub.wait_for(lambda _: heads("lobby")[-1:] == [head]), sub.messages
        assert sub.wait_for(lambda _: b"" in sub.on(topic("ghost")))
        # Retained: a subscriber arriving now gets the latest head at once.
        late = Subscriber(mqtt_broker.port, topic("lobby"))
        assert late.wait_for(lambda m: any(r for _, _, r in m))
        assert [json.loads(p)["head"] for t, p, r in late.messages if r] == [head]
        late.close()
        # A deleted group's topic is cleared (empty retained message).
        h.store.delete_group("lobby")
        assert sub.wait_for(lambda _: sub.on(topic("lobby"))[-1:] == [b""]), sub.messages
        after = Subscriber(mqtt_broker.port, f"{prefix}/hub/groups/+/version")
        time.sleep(0.5)
        assert after.messages == []  # nothing retained any more: neither lobby nor ghost
        after.close()
    finally:
        h.close()
        sub.close()


def test_a_dead_broker_never_blocks_the_hub(tmp_path, pki):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    t0 = time.monotonic()
    h = start_hub(tmp_path, pki, {"announce": {"host": "127.0.0.1", "port": port, "reconnect_max_s": 1}})
    try:
        assert time.monotonic() - t0 < 10
        secret = h.service.devices.add("door-d", ["g"])
        h.store.create_group("g")
        assert sync_get(h, "/v1/sync/groups/g/feed", "door-d", secret).status == 200
        assert not h.service.announcer.connected
    finally:
        t0 = time.monotonic()
        h.close()
        assert time.monotonic() - t0 < 8


# -- devices, metrics, doctor --------------------------------------------------------------------------------


def test_device_store(tmp_path):
    from agent.gallery.store import GalleryStore

    store = GalleryStore(GalleryConfig(path=tmp_path / "g"))
    devices = DeviceStore(store)
    secret = devices.add("door-9", ["b", "a", "a"], "hall")
    assert len(secret) >= 40
    with pytest.raises(InputError) as exc:
        devices.add("door-9")
    assert exc.value.code == "device_exists"
    for bad in ("", "a,b", "a=b", "x" * 129, "door 9"):
        with pytest.raises(InputError) as exc:
            devices.add(bad)
        assert exc.value.code == "invalid_device_id"
    for call in (devices.grant, devices.ungrant):
        with pytest.raises(InputError) as exc:
            call("nobody", "a")
        assert exc.value.code == "device_not_found"
    with pytest.raises(InputError) as exc:
        devices.revoke("nobody")
    assert exc.value.code == "device_not_found"
    rec = devices.lookup("door-9")
    assert rec is not None and rec.secret == secret and rec.groups == ("a", "b") and not rec.revoked
    assert (
        not devices.grant("door-9", "a") and devices.grant("door-9", "c") and devices.ungrant("door-9", "b")
    )
    assert devices.revoke("door-9") and not devices.revoke("door-9")
    [listed] = devices.list()
    assert listed.secret == "" and listed.revoked and listed.groups == ("a", "c") and listed.info == "hall"
    assert secret not in repr(listed) + repr(devices.lookup("door-9"))
    assert devices.lookup("nobody") is None and devices.lookup("a,b") is None
    store.close()


def test_cli_add_writes_a_private_secret_file_that_signs(hub, tmp_path):
    path = tmp_path / "door-cli.secret"
    args = ["--group", "staff", "--secret-file", str(path), *hub.cli()]
    out = agent_cli("hub", "devices", "add", "door-cli", *args)
    assert out.returncode == 0, out.stderr
    assert (path.stat().st_mode & 0o777) == 0o600
    secret = path.read_text().strip()
    assert secret not in out.stdout
    assert sync_get(hub, "/v1/sync/groups", "door-cli", secret).status == 200
    listing = agent_cli("hub", "devices", "list", "--json", *hub.cli())
    assert listing.returncode == 0 and secret not in listing.stdout
    row = next(d for d in json.loads(listing.stdout)["devices"] if d["device_id"] == "door-cli")
    assert row["groups"] == ["staff"] and row["revoked"] is False
    again = agent_cli("hub", "devices", "add", "door-cli", *hub.cli())
    assert again.returncode == 2 and "device_exists" in again.stderr


def test_metrics_gauges(hub):
    registry = Registry()
    hub.service.register_metrics(registry)
    text = registry.render()
    st = hub.service.stats()
    assert f"face_agent_hub_feed_ops {float(st.ops)!r}" in text
    assert f"face_agent_hub_feed_head {float(st.head)!r}" in text
    assert "face_agent_hub_feed_floor 0.0" in text
    assert 'face_agent_hub_devices{state="active"}' in text
    hub.service.register_metrics(registry)  # again (a reload's new HubService): replaced, not an error
    assert registry.render().count("# TYPE face_agent_hub_feed_ops gauge") == 1


def test_doctor_reports_the_feed(tmp_path, hub, door):
    from agent.cli.doctor import DoctorConfig, check_feed, resolve_targets

    check = check_feed(hub.gallery.config)
    st = hub.service.stats()
    assert check.status == "OK" and f"{st.ops} operation(s)" in check.message
    assert f"head {st.head}, floor {st.floor}" in check.message
    missing = check_feed(GalleryConfig(path=tmp_path / "none"))
    assert missing.status == "WARN" and not (tmp_path / "none").exists()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(json.dumps({"state_dir": str(tmp_path), "api": {}, "hub": {"allow_plaintext": True}}))
    targets, config_check = resolve_targets(cfg, {}, DoctorConfig())
    assert config_check.status == "OK" and targets.hub_feed
    targets, _ = resolve_targets(None, {}, DoctorConfig())
    assert not targets.hub_feed


# -- serve ---------------------------------------------------------------------------------------------------


def test_serve_with_a_hub_section_over_https(tmp_path, pki):
    ca, cert, key = pki
    state = tmp_path / "state"
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(
        json.dumps(
            {
                "state_dir": str(state),
                "api": {"host": "127.0.0.1", "port": 0, "tls_cert_file": str(cert), "tls_key_file": str(key)},
                "hub": {},
            }
        )
    )
    args = ["--group", "g", "--secret-file", str(tmp_path / "s"), "--config", str(cfg)]
    out = agent_cli("hub", "devices", "add", "door-s", *args)
    assert out.returncode == 0, out.stderr
    secret = (tmp_path / "s").read_text().strip()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        seen = []
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "listening on" in line:
                break
        assert "listening on https://127.0.0.1:" in seen[-1], "".join(seen)
        fake = Endpoint(int(seen[-1].rsplit(":", 1)[1]), ca)
        r = sync_get(fake, "/v1/sync/groups", "door-s", secret)
        assert r.status == 200 and r.json() == {"device_id": "door-s", "groups": []}
        assert agent_cli("hub", "devices", "revoke", "door-s", "--config", str(cfg)).returncode == 0
        assert code(sync_get(fake, "/v1/sync/groups", "door-s", secret)) == "device_revoked"
        assert (state / "hub-replay.sqlite3").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
