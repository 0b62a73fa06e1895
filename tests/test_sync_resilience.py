"""The edge against a hub that is down, hanging, slow, truncating, garbling, oversizing, compacting or
revoking it: real HTTP between an in-process hub (ApiServer + HubService) and the edge's HubClient, through a
loopback proxy that misbehaves on demand. The edge keeps its last good gallery, reports the failure and its
lag, and recovers by itself."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from test_api_support import api_config, shared_engine

from agent.api.server import ApiServer, build_context
from agent.gallery import Gallery, GalleryConfig, NewFace, feed
from agent.sync.client import HubClient, HubRefused, HubUnavailable
from agent.sync.config import HubConfig, SyncConfig
from agent.sync.devices import DeviceStore
from agent.sync.edge import EdgeSyncer
from agent.sync.hub import HubService

MODEL = "test-model/f32"


class Proxy:
    """Forwards to the hub, or misbehaves: pass | hang | slow | truncate | garble | oversize | badpage."""

    def __init__(self, upstream: int) -> None:
        self.mode = "pass"
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                mode = proxy.mode
                if mode == "hang":
                    proxy.release.wait(30)
                    return
                if mode == "slow":
                    proxy.release.wait(2.5)  # longer than the client's total deadline (3 x 0.5 s)
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=10)
                conn.request("GET", self.path, headers={"Authorization": self.headers["Authorization"]})
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                status = resp.status
                if mode == "garble":
                    body = b"<html>proxy error</html>"
                elif mode == "badpage":
                    body = (
                        b'{"ops": [{"op": "face_added", "face_id": 5}], "next": 1, "more": false, "head": 1}'
                    )
                self.send_response(status)
                length = len(body) * (3 if mode == "truncate" else 1)
                if mode == "oversize":
                    length = 1 << 30
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _vec(rng) -> np.ndarray:
    v = rng.standard_normal(32).astype(np.float32)
    return v / np.linalg.norm(v)


def _faces(g: Gallery, gid: str) -> dict[str, bytes]:
    return {f.face_id: g.get_embedding(f.face_id).tobytes() for f in g.store.list_faces(gid, limit=10_000)}


@pytest.fixture()
def rig(tmp_path):
    hub = Gallery(GalleryConfig(path=tmp_path / "hub", save_interval_s=0))
    hub.create_group("staff")
    devices = DeviceStore(hub.store)
    secret = devices.add("door-1", ["staff"])
    (tmp_path / "secret").write_text(secret + "\n")
    api = api_config(tmp_path / "api", replay_store=None)
    service = HubService(HubConfig(allow_plaintext=True), hub, api)
    server = ApiServer(api, build_context(api, shared_engine(), hub), [service.family]).start()
    service.start()
    proxy = Proxy(server.port)
    cfg = SyncConfig(
        hub_url=f"http://127.0.0.1:{proxy.port}",
        allow_plaintext=True,
        device_id="door-1",
        secret_file=tmp_path / "secret",
        timeout_s=0.5,
        page_ops=10,
        page_bytes=64 << 10,
        max_response_bytes=(1 << 20) + (64 << 10),
    )
    edge = Gallery(GalleryConfig(path=tmp_path / "edge", save_interval_s=0))
    syncer = EdgeSyncer(cfg, edge, MODEL, HubClient(cfg, secret))
    yield hub, edge, syncer, proxy, devices
    proxy.close()
    server.stop()
    service.stop()
    hub.close()
    edge.close()


def test_the_edge_keeps_its_gallery_through_every_failure_and_recovers(rig):
    hub, edge, syncer, proxy, _ = rig
    rng = np.random.default_rng(5)
    hub.add_faces("staff", [NewFace(f"p{i}", _vec(rng), MODEL) for i in range(25)])
    assert syncer.sync_once()
    good = _faces(edge, "staff")
    assert good == _faces(hub, "staff")
    for mode in ("hang", "slow", "truncate", "garble", "oversize", "badpage"):
        hub.add_faces("staff", [NewFace(f"new-{mode}", _vec(rng), MODEL)])
        proxy.mode = mode
        t0 = time.monotonic()
        with pytest.raises(HubUnavailable):
            syncer.sync_once()
        assert time.monotonic() - t0 < 10, f"{mode}: the client's bounds did not hold"
        assert _faces(edge, "staff") == good, f"{mode}: the last good gallery changed"
        proxy.release.set()
        proxy.release = threading.Event()
    status = syncer.status()
    assert status["state"] == "ok" and status["lag_s"] is not None  # sync_once itself does not count
    proxy.mode = "pass"
    assert syncer.sync_once()
    assert _faces(edge, "staff") == _faces(hub, "staff")


def test_a_hub_that_is_down_is_reported_with_its_lag_and_backoff(rig, tmp_path):
    hub, edge, syncer, proxy, _ = rig
    syncer.sync_once()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cfg = syncer._cfg.model_copy(update={"hub_url": f"http://127.0.0.1:{dead}", "interval_s": 1.0})  # noqa: SLF001
    down = EdgeSyncer(cfg, edge, MODEL, HubClient(cfg, "x" * 43))
    waits = []
    for _ in range(4):
        try:
            down.sync_once()
        except HubUnavailable as exc:
            waits.append(down._failed(exc))  # noqa: SLF001 - the loop's backoff, without waiting for it
    st = down.status()
    assert st["state"] == "error" and st["failures"] == 4 and "hub" in st["last_error"]
    assert 1.0 <= waits[0] <= 2.0 and waits[-1] > waits[0]  # jittered, growing
    assert all(w <= cfg.backoff_max_s for w in waits)


def test_compaction_under_the_edge_and_revocation(rig):
    hub, edge, syncer, proxy, devices = rig
    rng = np.random.default_rng(6)
    hub.add_faces("staff", [NewFace(f"p{i}", _vec(rng), MODEL) for i in range(15)])
    assert syncer.sync_once()
    for f in hub.store.list_faces("staff", limit=5):
        hub.delete_face(f.face_id)
    hub.add_faces("staff", [NewFace("late", _vec(rng), MODEL)])
    assert feed.compact(hub.store, keep_ops=1000, keep_s=-1) > 0
    assert syncer.sync_once()
    assert _faces(edge, "staff") == _faces(hub, "staff")
    assert devices.revoke("door-1")
    with pytest.raises(HubRefused) as info:
        syncer.sync_once()
    assert info.value.code == "device_revoked"
    assert "staff" not in {g.group_id for g in edge.list_groups()}
    assert syncer.status()["state"] == "revoked"


def test_a_hub_on_another_model_is_re_embedded_from_thumbnails(rig, data_dir):
    """The hub enrols with FaceNet and keeps aligned thumbnails; a dlib edge re-aligns and re-embeds them,
    then names the person in another photo. Without thumbnails the group is refused with a clear error."""
    import cv2
    from test_api_support import BIDEN, OBAMA, OBAMA2

    from agent.config import EngineConfig
    from agent.inference.engine import FaceEngine
    from agent.sync.edge import engine_reembedder

    hub, _edge, syncer, proxy, devices = rig
    facenet = FaceEngine(
        EngineConfig(embedder={"model": "facenet-casia", "precision": "fp32", "flip": False})
    )
    dlib = shared_engine()
    hub.create_group("visitors")
    devices.grant("door-1", "visitors")
    for name, rel in (("obama", OBAMA), ("biden", BIDEN)):
        emb = facenet.analyze((data_dir / rel).read_bytes(), max_faces=1, keep_chips=True)[0]
        jpeg = cv2.imencode(".jpg", emb.chip, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        hub.add_faces("visitors", [NewFace(name, emb.vector, facenet.model_id, thumbnail=jpeg)])
    edge = Gallery(GalleryConfig(path=syncer._gallery.config.path.parent / "edge-dlib", save_interval_s=0))  # noqa: SLF001
    try:
        cfg = syncer._cfg.model_copy(update={"groups": ["visitors"]})  # noqa: SLF001
        dlib_edge = EdgeSyncer(cfg, edge, dlib.model_id, syncer._client, engine_reembedder(dlib))  # noqa: SLF001
        assert dlib_edge.sync_once()
        assert {f.model_id for f in edge.store.list_faces("visitors")} == {dlib.model_id}
        probe = dlib.analyze((data_dir / OBAMA2).read_bytes(), max_faces=1)[0].vector
        face, cosine = edge.search("visitors", dlib.model_id, probe[None, :], 1)[0][0]
        assert face.outer_id == "obama" and cosine > dlib.thresholds["1e-5"]
        # a face without a thumbnail cannot be re-embedded: the group is refused, the gallery kept
        v = np.random.default_rng(1).standard_normal(512).astype(np.float32)
        hub.add_faces("visitors", [NewFace("kerry", v / np.linalg.norm(v), facenet.model_id)])
        assert not dlib_edge.sync_once()
        assert "no thumbnail" in dlib_edge.status()["groups"]["visitors"]["error"]
        assert {f.outer_id for f in edge.store.list_faces("visitors")} == {"obama", "biden"}
    finally:
        edge.close()


def test_group_ids_that_need_quoting_and_tokens_that_are_not_numbers(rig):
    hub, edge, syncer, proxy, devices = rig
    rng = np.random.default_rng(7)
    for gid in ("staff room", "门禁", "a/b"):
        hub.create_group(gid)
        devices.grant("door-1", gid)
        hub.add_faces(gid, [NewFace("p", _vec(rng), MODEL)])
    assert syncer.sync_once()
    for gid in ("staff room", "门禁", "a/b"):
        assert _faces(edge, gid) == _faces(hub, gid)
    for token in ("f%C2%B2", "f99999999999999999999", "x1"):  # "²".isdigit() is True; SQLite ints end
        with pytest.raises(HubRefused) as info:
            syncer._client.get(f"/v1/sync/groups/staff/snapshot?token={token}")  # noqa: SLF001
        assert info.value.status == 400 and info.value.code == "bad_argument"
